//! The host-served filesystem: start `sandboxfs` on the FUSE mount point,
//! wait until it is mounted, then bind-mount each configured path from it.
//!
//! A guest may be configured again (a memory snapshot resumed in a new QEMU
//! whose fs server knows none of the old inodes), so [`teardown`] first
//! removes whatever an earlier plan left, found from the kernel's own
//! tables (`/proc/self/mountinfo`, `/proc/<pid>/exe`), not from our memory:
//! a sandboxd restarted by init knows nothing of the earlier plan.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gondolin_wire::FsPlan;

use crate::sys;
use crate::vfork::{wait_blocking, ChildFd, Launcher, Plan};

/// How long sandboxfs may take to mount. It is a FUSE handshake over a
/// local port, but two TCG guests booting on a loaded 2-core host took more
/// than 10 s twice in 200 soak cycles; the host's configure bound (60 s)
/// still covers it.
const MOUNT_WAIT: Duration = Duration::from_secs(30);
/// How long a killed sandboxfs may take to be gone.
const KILL_WAIT_MS: i32 = 5_000;
/// The filesystem type sandboxfs mounts (see sandboxfs' `mount.rs`).
const FSTYPE: &str = "fuse.sandboxfs";
/// Where the FUSE control filesystem lives (`abort` files per connection).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// The sandboxfs this sandboxd started, and the flag set once we stop it
/// on purpose, so its watcher does not report the exit as a failure.
static RUNNING: Mutex<Option<(libc::pid_t, Arc<AtomicBool>)>> = Mutex::new(None);

/// sandboxfs sits beside sandboxd (init copies both to /run/gondolin/bin).
fn sandboxfs_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sandboxfs")))
        .unwrap_or_else(|| PathBuf::from("/run/gondolin/bin/sandboxfs"))
}

/// Start sandboxfs and set up the mounts (after a [`teardown`]).
pub fn setup(plan: &FsPlan) -> Result<(), String> {
    fs::create_dir_all(&plan.fuse_mount)
        .map_err(|e| format!("creating the mount point {}: {e}", plan.fuse_mount))?;
    let (rd, wr) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    // Started like an exec (vfork, see `vfork.rs`), not with
    // std::process::Command: its pre_exec hook forces a fork of this
    // multithreaded process, ~45 ms of emulated page-table copying under
    // TCG on every configure. The readiness pipe is the child's fd 0
    // (sandboxfs reads no stdin); its output goes where ours does.
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("a NUL byte in {s:?}"));
    let program = cstr(&sandboxfs_path().to_string_lossy())?;
    let words = [
        program.clone(),
        cstr("--mount")?,
        cstr(&plan.fuse_mount)?,
        cstr("--port")?,
        cstr("gondolin.fs")?,
        cstr("--ready-fd")?,
        cstr("0")?,
    ];
    let env: Vec<CString> = if debug() {
        vec![cstr("SANDBOXFS_DEBUG=1")?]
    } else {
        Vec::new()
    };
    let argv: Vec<*const libc::c_char> = words
        .iter()
        .map(|w| w.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|w| w.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let launch = Plan {
        program: &program,
        argv: &argv,
        envp: &envp,
        stdio: [
            ChildFd::Dup(wr.as_raw_fd()),
            ChildFd::Dup(libc::STDOUT_FILENO),
            ChildFd::Dup(libc::STDERR_FILENO),
        ],
        cwd: None,
    };
    let pid = Launcher::new()
        .and_then(|mut l| l.launch(&launch).map_err(|(_, e)| e))
        .map_err(|e| format!("starting sandboxfs: {e}"))?;
    drop(wr);
    // Reap it (we are its parent) and say so if it dies on its own: its
    // mount is gone with it (ENOTCONN) and the host sees every file
    // operation there fail.
    let stopping = Arc::new(AtomicBool::new(false));
    *RUNNING.lock().unwrap() = Some((pid, stopping.clone()));
    std::thread::spawn(move || {
        let status = wait_blocking(pid);
        if !stopping.load(Ordering::Relaxed) {
            match status {
                Ok(s) => eprintln!("sandboxd: sandboxfs exited (wait status {s})"),
                Err(e) => eprintln!("sandboxd: waiting for sandboxfs: {e}"),
            }
        }
    });
    wait_ready(rd)?;
    widen_readahead(&plan.fuse_mount);
    for b in &plan.binds {
        let src = format!("{}{}", plan.fuse_mount.trim_end_matches('/'), b);
        fs::create_dir_all(b).map_err(|e| format!("creating the mount point {b}: {e}"))?;
        sys::mount(&src, b, None, libc::MS_BIND, None)
            .map_err(|e| format!("bind-mounting {src} on {b}: {e}"))?;
    }
    Ok(())
}

fn debug() -> bool {
    fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "gondolin.debug"))
        .unwrap_or(false)
}

/// Remove what an earlier plan set up, so that nothing waits on requests
/// an old host will never answer: abort the FUSE connection (pending and
/// later requests fail with ENOTCONN/EIO), kill sandboxfs and wait until it
/// is gone (the virtio port can be open only once), then lazily unmount
/// the FUSE mount and its binds. Processes holding old files get errors.
pub fn teardown() -> Result<(), String> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let mounts = our_mounts(&info);
    // Ours, or (after a sandboxd restart, when mounts are left) init's:
    // on a cold boot there is nothing to look for.
    let pids = match RUNNING.lock().unwrap().take() {
        Some((pid, stopping)) => {
            // Before the abort, which ends sandboxfs on its own too.
            stopping.store(true, Ordering::Relaxed);
            vec![pid]
        }
        None if mounts.is_empty() => Vec::new(),
        None => sandboxfs_pids(),
    };
    let mut devs: Vec<(u32, u32)> = mounts.iter().map(|m| m.dev).collect();
    devs.dedup();
    for (major, minor) in devs {
        abort_connection(major, minor);
    }
    for pid in pids {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        match sys::wait_gone(pid, KILL_WAIT_MS) {
            Ok(true) => {}
            Ok(false) => return Err(format!("the old sandboxfs (pid {pid}) did not exit")),
            Err(e) => return Err(format!("waiting for the old sandboxfs: {e}")),
        }
    }
    // A detached mount takes the mounts below it along; those then fail
    // to unmount (EINVAL/ENOENT), which is fine.
    for m in &mounts {
        let _ = sys::umount_detach(&m.point);
    }
    Ok(())
}

/// Write `1` to the connection's `abort` file (mounting the FUSE control
/// filesystem first if need be). Best effort: killing sandboxfs ends the
/// connection too, only later.
fn abort_connection(major: u32, minor: u32) {
    // The kernel names the directory after its own dev_t encoding.
    let abort = format!("{FUSECTL}/{}/abort", (major << 20) | minor);
    if fs::write(&abort, "1").is_ok() {
        return;
    }
    let _ = sys::mount("fusectl", FUSECTL, Some("fusectl"), 0, None);
    if let Err(e) = fs::write(&abort, "1") {
        eprintln!("sandboxd: aborting the old FUSE connection ({abort}): {e}");
    }
}

/// Running sandboxfs processes (ours or, after a sandboxd restart, init's).
fn sandboxfs_pids() -> Vec<libc::pid_t> {
    let me = sandboxfs_path();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == me))
        .collect()
}

/// One mount of ours in `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    dev: (u32, u32),
    point: String,
}

/// The sandboxfs mount and the binds from it, in mount order.
fn our_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional...] - fstype source super
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next()? != FSTYPE {
                return None;
            }
            let f: Vec<&str> = left.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            Some(Mount {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                point: unescape(f.get(4)?),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).and_then(|o| {
            let o = std::str::from_utf8(o).ok()?;
            u8::from_str_radix(o, 8).ok()
        });
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel gives a FUSE mount 128 KiB of readahead; with 4 MiB, several
/// 1 MiB reads are in flight to the host at once, and sequential reads get
/// ~70% faster (122 → 210 MB/s under TCG). Best effort.
fn widen_readahead(mount: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::metadata(mount) else {
        return;
    };
    let dev = m.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = fs::write(&knob, READAHEAD_KB.to_string()) {
        eprintln!("sandboxd: vfs: setting {knob}: {e}");
    }
}

/// Readahead for the host-served filesystem.
const READAHEAD_KB: u32 = 4096;

fn wait_ready(rd: OwnedFd) -> Result<(), String> {
    let mut fds = [libc::pollfd {
        fd: rd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let deadline = std::time::Instant::now() + MOUNT_WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "sandboxfs did not mount within {}s",
                MOUNT_WAIT.as_secs()
            ));
        }
        match sys::poll(&mut fds, left.as_millis() as i32) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(e) => return Err(format!("waiting for sandboxfs: {e}")),
        }
    }
    let mut f = fs::File::from(rd);
    let mut b = [0u8; 1];
    match f.read(&mut b) {
        Ok(1) => Ok(()),
        _ => Err("sandboxfs exited before mounting (see its messages above)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_mounts_and_unescapes_their_points() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 25 0:44 / /data rw,nosuid,nodev,relatime - fuse.sandboxfs sandboxfs rw,user_id=0,group_id=0,allow_other
41 25 0:44 /workspace /workspace rw,relatime - fuse.sandboxfs sandboxfs rw,user_id=0
42 25 0:44 /a\\040b,c /a\\040b,c rw,relatime shared:5 - fuse.sandboxfs sandboxfs rw
43 25 0:45 / /mnt rw - fuse.other other rw
";
        let m = our_mounts(info);
        assert_eq!(
            m,
            vec![
                Mount {
                    dev: (0, 44),
                    point: "/data".into()
                },
                Mount {
                    dev: (0, 44),
                    point: "/workspace".into()
                },
                Mount {
                    dev: (0, 44),
                    point: "/a b,c".into()
                },
            ]
        );
        assert_eq!(unescape("a\\012b\\134"), "a\nb\\");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }
}
