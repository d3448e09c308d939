//! The per-VM configuration the host sends once the guest is up
//! ([`Configure`]): on a cold boot right after `Ready`, and again after a
//! memory snapshot resumes in a new QEMU. Init only does what is the same
//! for every VM; this is everything else.
//!
//! The clock and the entropy seed are applied at once, on the event loop
//! (each one system call). The rest (VFS mount, eth0, MITM CA) can block
//! for seconds, so it runs on a worker thread and the loop keeps serving
//! execs; the worker's end is signalled through a pipe the loop polls.
//! One configure runs at a time; another arriving meanwhile is refused.

mod net;
mod vfs;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::thread::JoinHandle;

use gondolin_wire::Configure;

use crate::sys;

/// The environment execs get on top of sandboxd's own (the MITM CA
/// variables), kept on the tmpfs so a sandboxd restarted by init still has
/// it. One `KEY=VALUE` per line.
const EXEC_ENV: &str = "/run/gondolin/exec-env";

/// What the worker thread hands back.
pub struct Outcome {
    /// What could not be set up (the VFS), for the host.
    pub error: Option<String>,
    /// The exec environment from now on (see [`EXEC_ENV`]).
    pub env: Vec<(String, String)>,
}

/// The one configure in flight, if any.
pub struct Worker {
    /// Readable once the worker finished (its write end went with it).
    wake: Option<OwnedFd>,
    done: Option<mpsc::Receiver<Outcome>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn new() -> Worker {
        Worker {
            wake: None,
            done: None,
            thread: None,
        }
    }

    pub fn busy(&self) -> bool {
        self.thread.is_some()
    }

    /// The descriptor to poll while a configure runs.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(|f| f.as_fd())
    }

    /// Apply the clock and the seed now, the rest on a thread. An error
    /// here (no thread, no pipe) is the answer at once.
    pub fn start(&mut self, cfg: Configure) -> Result<(), String> {
        // The host sampled its clock right before sending (0: it has none
        // worth copying).
        if cfg.time_unix_ns != 0 {
            if let Err(e) = sys::set_realtime(cfg.time_unix_ns) {
                eprintln!("sandboxd: setting the clock: {e}");
            }
        }
        if let Err(e) = sys::add_entropy_and_reseed(&cfg.seed) {
            eprintln!("sandboxd: seeding the kernel RNG: {e}");
        }
        let fail = |what: &str, e: io::Error| format!("{what}: {e}");
        let (rd, wr) = sys::pipe().map_err(|e| fail("configure pipe", e))?;
        sys::set_nonblocking(rd.as_fd()).map_err(|e| fail("configure pipe", e))?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("configure".into())
            .spawn(move || {
                let _ = tx.send(apply(&cfg));
                // Dropping the write end wakes the loop (POLLHUP).
                drop(wr);
            })
            .map_err(|e| fail("starting the configure thread", e))?;
        self.wake = Some(rd);
        self.done = Some(rx);
        self.thread = Some(thread);
        Ok(())
    }

    /// The outcome once the worker has finished; `None` while it runs.
    pub fn finish(&mut self) -> Option<Outcome> {
        let outcome = match self.done.as_ref()?.try_recv() {
            Ok(o) => o,
            Err(mpsc::TryRecvError::Empty) => return None,
            // Its wake pipe stays readable: answer rather than spin.
            Err(mpsc::TryRecvError::Disconnected) => Outcome {
                error: Some("the configure thread ended without an answer".into()),
                env: load_env(),
            },
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.wake = None;
        self.done = None;
        Some(outcome)
    }
}

/// Everything but the clock and the seed, in the order init used to do it.
fn apply(cfg: &Configure) -> Outcome {
    // An earlier plan's mounts go first, whether or not a new one follows.
    let mut error = vfs::teardown().err();
    if let (None, Some(plan)) = (&error, &cfg.fs) {
        error = vfs::setup(plan).err();
    }
    if let Some(e) = &error {
        eprintln!("sandboxd: vfs: {e}");
    }
    if cfg.quiesce {
        // Only the VFS goes; the network and the exec environment stay for
        // the configure that follows the resume.
        return Outcome {
            error,
            env: load_env(),
        };
    }
    let env = match cfg.net {
        true => {
            if let Err(e) = net::eth0_up() {
                eprintln!("sandboxd: network: {e}");
            }
            // The CA comes from the host-served /etc/gondolin.
            net::trust_mitm_ca()
        }
        false => {
            net::forget_mitm_ca();
            Vec::new()
        }
    };
    if let Err(e) = save_env(&env) {
        eprintln!("sandboxd: saving {EXEC_ENV}: {e}");
    }
    Outcome { error, env }
}

fn save_env(env: &[(String, String)]) -> io::Result<()> {
    if env.is_empty() {
        return match std::fs::remove_file(EXEC_ENV) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::create_dir_all("/run/gondolin")?;
    let tmp = format!("{EXEC_ENV}.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, EXEC_ENV)
}

/// The exec environment a configure saved (empty before the first one).
pub fn load_env() -> Vec<(String, String)> {
    std::fs::read_to_string(EXEC_ENV)
        .map(|t| parse_env(&t))
        .unwrap_or_default()
}

fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_lines() {
        assert_eq!(
            parse_env("SSL_CERT_FILE=/run/gondolin/ca.crt\n=x\nnoequals\nA=b=c\n"),
            vec![
                (
                    "SSL_CERT_FILE".to_string(),
                    "/run/gondolin/ca.crt".to_string()
                ),
                ("A".to_string(), "b=c".to_string()),
            ]
        );
    }
}
