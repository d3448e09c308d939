//! Run sandboxd and reap every child (orphans are reparented to PID 1).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::mounts::SANDBOXD;
use crate::say;

const ENV: &[(&str, &str)] = &[
    ("HOME", "/root"),
    ("TMPDIR", "/tmp"),
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C.UTF-8"),
    ("TERM", "xterm-256color"),
    ("XDG_CACHE_HOME", "/tmp/.cache"),
    ("XDG_CONFIG_HOME", "/tmp/.config"),
    ("XDG_DATA_HOME", "/tmp/.local/share"),
];

fn spawn() -> Option<u32> {
    let mut cmd = Command::new(SANDBOXD);
    cmd.env_clear().envs(ENV.iter().copied()).current_dir("/");
    // sandboxd must not inherit init's signal dispositions or mask.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Some(child.id()),
        Err(e) => {
            say!("starting sandboxd failed: {e}");
            None
        }
    }
}

/// Supervise sandboxd (restarting it), reap everything else (sandboxfs
/// too, once its parent sandboxd is gone; sandboxd reports its exits).
pub fn run(debug: bool) -> ! {
    let mut sandboxd = spawn();
    let mut last_start = Instant::now();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::empty())) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))
                if Some(pid.as_raw() as u32) == sandboxd =>
            {
                say!("sandboxd exited; restarting it");
                // At most a few restarts per second if it keeps crashing.
                let since = last_start.elapsed();
                if since < Duration::from_millis(300) {
                    std::thread::sleep(Duration::from_millis(300) - since);
                }
                last_start = Instant::now();
                sandboxd = spawn();
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => {
                // Nothing to reap (sandboxd failed to start): retry later.
                std::thread::sleep(Duration::from_millis(500));
                if sandboxd.is_none() {
                    sandboxd = spawn();
                }
            }
            Err(e) => {
                if debug {
                    say!("waitpid: {e}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
