//! sandboxd: the guest daemon that runs processes for the host.
//!
//! Started by our init (PID 1, which reaps orphans) with HOME, PATH, TMPDIR,
//! LANG and TERM set. It speaks the `gondolin-wire` protocol over the
//! `gondolin.control` virtio-serial port, or over a unix socket given with
//! `--connect PATH` (how the tests drive it on the host).
//!
//! Module map: `port` (the byte stream to the host), `server` (the poll
//! loop and request dispatch), `configure` (the per-VM configuration: VFS,
//! eth0, MITM CA, clock, RNG seed), `exec` (per-exec credit, stdin, drain),
//! `spawn` + `vfork` + `pty` (starting children), `outbuf` (outgoing frames), `sys`
//! (libc wrappers).

mod configure;
mod exec;
mod guestfs;
mod outbuf;
mod port;
mod pty;
mod server;
mod spawn;
mod sys;
mod vfork;

use std::path::PathBuf;
use std::process::ExitCode;

use port::Target;

const USAGE: &str = "usage: sandboxd [--connect UNIX_SOCKET_PATH]";

fn main() -> ExitCode {
    let target = match parse_args(std::env::args().skip(1)) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("sandboxd: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    sys::ensure_std_fds();
    match run(target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(target: Target) -> std::io::Result<()> {
    let sigfd = sys::setup_signals()?;
    // After setup_signals: the launcher records which signals are ignored.
    let spawner = spawn::Spawner::new(spawn::BaseEnv::capture())?;
    server::Server::new(target, sigfd, spawner)?.run()
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Target, String> {
    let target = match args.next().as_deref() {
        None => Target::Virtio,
        Some("--connect") => match args.next() {
            Some(path) => Target::Unix(PathBuf::from(path)),
            None => return Err("--connect needs a socket path".into()),
        },
        Some(other) => return Err(format!("unexpected argument {other:?}")),
    };
    match args.next() {
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
        None => Ok(target),
    }
}
