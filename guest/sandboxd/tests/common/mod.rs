//! Test harness: run the real sandboxd binary against a unix socket we
//! listen on, and speak the wire protocol to it like the host would.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gondolin_wire::{encode, Exec, FrameDecoder, GuestMsg, HostMsg, Stream, PROTOCOL_VERSION};

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Guest {
    child: Child,
    pub sock: UnixStream,
    dec: FrameDecoder,
    dir: PathBuf,
}

/// What one exec produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub signal: Option<i32>,
}

impl Outcome {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

pub fn exec(argv: &[&str]) -> Exec {
    Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        stdin: false,
        pty: None,
        stdout_window: 0,
        stderr_window: 0,
        stdin_to_file: None,
        stdout_from_file: None,
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sandboxd-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How sandboxd is started. `SANDBOXD_BIN` runs another build (e.g. the
/// static guest binary); `SANDBOXD_LAUNCH` is a shell command in which
/// `{sock}` is replaced by the socket path, e.g. a QEMU command line whose
/// `gondolin.control` port connects there (see scripts/tcg-vm.sh).
fn launcher(sock: &std::path::Path) -> Command {
    if let Some(tpl) = std::env::var("SANDBOXD_LAUNCH")
        .ok()
        .filter(|t| !t.is_empty())
    {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(tpl.replace("{sock}", sock.to_str().unwrap()));
        return cmd;
    }
    let bin = std::env::var_os("SANDBOXD_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_sandboxd").into());
    let mut cmd = Command::new(bin);
    cmd.arg("--connect").arg(sock);
    cmd
}

/// Whether sandboxd runs in a VM (host /proc and paths mean nothing there).
pub fn in_vm() -> bool {
    std::env::var("SANDBOXD_LAUNCH").is_ok_and(|t| !t.is_empty())
}

impl Guest {
    pub fn start() -> Guest {
        Self::start_with(|_| {})
    }

    /// Start sandboxd (letting `setup` adjust its command) and wait for Ready.
    pub fn start_with(setup: impl FnOnce(&mut Command)) -> Guest {
        let dir = temp_dir();
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut cmd = launcher(&path);
        setup(&mut cmd);
        let child = cmd.spawn().unwrap();
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if start.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("sandboxd did not connect: {e}"),
            }
        };
        sock.set_nonblocking(false).unwrap();
        let mut g = Guest {
            child,
            sock,
            dec: FrameDecoder::new(),
            dir,
        };
        assert_eq!(
            g.recv(),
            GuestMsg::Ready {
                version: PROTOCOL_VERSION
            }
        );
        g
    }

    pub fn send(&mut self, msg: &HostMsg) {
        self.sock.write_all(&encode(msg)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).unwrap();
    }

    /// Next message, or None after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<GuestMsg> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256 * 1024];
        loop {
            if let Some(m) = self
                .dec
                .next_message::<GuestMsg>()
                .expect("sandboxd sent a bad frame")
            {
                m.validate().expect("sandboxd sent an invalid message");
                return Some(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("sandboxd closed the connection"),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn recv(&mut self) -> GuestMsg {
        self.recv_timeout(TIMEOUT)
            .expect("timed out waiting for sandboxd")
    }

    /// Run one exec to completion, granting back every output byte.
    pub fn run(&mut self, id: u32, exec: Exec) -> Outcome {
        self.send(&HostMsg::Exec { id, exec });
        self.collect(&[id]).remove(&id).unwrap()
    }

    /// Collect output until every id in `ids` exited. Output credit is
    /// re-granted as it arrives; StdinWindow messages are ignored; an Error
    /// fails the test.
    pub fn collect(&mut self, ids: &[u32]) -> HashMap<u32, Outcome> {
        let mut out: HashMap<u32, Outcome> =
            ids.iter().map(|&id| (id, Outcome::default())).collect();
        let mut left = ids.len();
        while left > 0 {
            match self.recv() {
                GuestMsg::Output { id, stream, data } => {
                    let o = out.get_mut(&id).expect("output for an unexpected id");
                    let n = data.len() as u32;
                    match stream {
                        Stream::Stdout => o.stdout.extend_from_slice(&data),
                        Stream::Stderr => o.stderr.extend_from_slice(&data),
                    }
                    let (stdout, stderr) = match stream {
                        Stream::Stdout => (n, 0),
                        Stream::Stderr => (0, n),
                    };
                    self.send(&HostMsg::Window { id, stdout, stderr });
                }
                GuestMsg::Exit {
                    id,
                    exit_code,
                    signal,
                } => {
                    let o = out.get_mut(&id).expect("exit for an unexpected id");
                    o.exit_code = exit_code;
                    o.signal = signal;
                    left -= 1;
                }
                GuestMsg::StdinWindow { .. } => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
        out
    }

    /// Close the connection and wait for sandboxd to exit.
    pub fn hang_up(mut self) -> std::process::ExitStatus {
        self.sock.shutdown(std::net::Shutdown::Both).unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "sandboxd did not exit after hang-up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it no longer runs).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}
