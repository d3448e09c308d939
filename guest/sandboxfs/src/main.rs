//! sandboxfs: the guest side of Gondolin's host-programmed filesystem.
//!
//! `sandboxfs --mount DIR (--port NAME | --connect SOCKET) [--ready-fd N]`
//! mounts a FUSE filesystem on DIR and forwards every operation to the host
//! over the fs RPC (see `gondolin_wire::fs`). It writes one byte to the
//! ready fd once the kernel has completed the FUSE handshake, so init can
//! bind-mount paths from it right away.

mod conn;
mod fs;
mod inval;
mod mount;
mod transport;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use fuser::{Config, Session, SessionACL};

/// Log to stderr (the guest console), at most a few lines per second.
macro_rules! log {
    ($($arg:tt)*) => {
        if $crate::log_allowed() {
            eprintln!("sandboxfs: {}", format!($($arg)*));
        }
    };
}
pub(crate) use log;

/// A token bucket of 20 lines, refilled at 5 per second.
pub(crate) fn log_allowed() -> bool {
    use std::sync::Mutex;
    use std::time::Instant;
    static BUCKET: Mutex<Option<(f64, Instant)>> = Mutex::new(None);
    let mut b = BUCKET.lock().unwrap();
    let now = Instant::now();
    let (tokens, last) = b.get_or_insert((20.0, now));
    *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * 5.0).min(20.0);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

struct Args {
    mount: String,
    target: transport::Target,
    ready_fd: Option<i32>,
}

fn usage(msg: &str) -> ! {
    eprintln!("sandboxfs: {msg}");
    eprintln!("usage: sandboxfs --mount DIR (--port NAME | --connect SOCKET) [--ready-fd N]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut mount = None;
    let mut target = None;
    let mut ready_fd = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--mount" => mount = Some(value()),
            "--port" => target = Some(transport::Target::Port(value())),
            "--connect" => target = Some(transport::Target::Unix(value())),
            "--ready-fd" => {
                ready_fd = Some(
                    value()
                        .parse()
                        .unwrap_or_else(|_| usage("--ready-fd needs a number")),
                )
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    Args {
        mount: mount.unwrap_or_else(|| usage("--mount is required")),
        target: target.unwrap_or_else(|| usage("--port or --connect is required")),
        ready_fd,
    }
}

fn main() {
    let args = parse_args();
    let (conn, reader, reconnects) = match conn::Conn::open(&args.target) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandboxfs: connecting to the host: {e}");
            std::process::exit(1);
        }
    };
    let conn = Arc::new(conn);
    let fd = match mount::mount_fuse(&args.mount) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("sandboxfs: {e}");
            std::process::exit(1);
        }
    };
    // Answer the host while the kernel handshake runs below.
    let reader_conn = conn.clone();
    let reader_thread = std::thread::Builder::new()
        .name("sandboxfs-reader".into())
        .spawn(move || reader_conn.read_loop(reader, reconnects))
        .expect("spawning the reader thread");
    let mut config = Config::default();
    config.acl = SessionACL::All;
    let session = match Session::from_fd(
        fs::SandboxFs {
            conn: conn.clone(),
            writeback: false,
        },
        fd,
        SessionACL::All,
        config,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandboxfs: FUSE handshake failed: {e}");
            std::process::exit(1);
        }
    };
    let (invals, notifier) = (conn.invals.clone(), session.notifier());
    std::thread::Builder::new()
        .name("sandboxfs-inval".into())
        .spawn(move || invals.run(notifier))
        .expect("spawning the invalidation thread");
    if let Some(n) = args.ready_fd {
        // SAFETY: the fd was handed to us by our parent for this purpose.
        let mut f = unsafe { std::fs::File::from_raw_fd(n) };
        let _ = f.write_all(b"1");
    }
    if !reconnects {
        // Test mode: when the host goes away, so do we.
        std::thread::spawn(move || {
            let _ = reader_thread.join();
            let _ = nix::mount::umount2(args.mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
            std::process::exit(0);
        });
    }
    if let Err(e) = session.run() {
        eprintln!("sandboxfs: session ended: {e}");
        std::process::exit(1);
    }
}
