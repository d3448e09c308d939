//! The session attach server: other processes (`gondolin attach`) run
//! commands in this process's VM through a per-VM unix socket, speaking
//! JSON lines (docs/attach-protocol.md). It sits beside the control client
//! and drives it directly: each attach exec is an ordinary exec with piped
//! output, whose credit returns only as fast as the attach socket drains.
//!
//! The registry (`<dir>/<id>.json`, garbage collection) stays in
//! `js/sessions.cjs`; this module only serves the socket.

mod codec;
mod conn;
mod protocol;
mod request;
mod snapshot;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::UnixListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::control::ControlClient;

pub use codec::{LineDecoder, LineTooLong, MAX_LINE};
pub use protocol::{parse_line, ClientMsg, Code, ExecMsg, Refusal, ServerMsg, SignalArg};
pub use snapshot::{SnapshotDone, SnapshotFailure, SnapshotHandler, SnapshotRequest};

/// The VM an attach server serves.
#[derive(Debug, Clone)]
pub struct Target {
    /// Reported to each client in the first `status` message.
    pub vm_id: String,
    pub control: ControlClient,
    /// The VM's `env` option as `KEY=VALUE`: the base every attach exec's
    /// env is merged over (as `vm.exec` does).
    pub env: Vec<String>,
    /// Who checkpoints the VM for a `snapshot` message (the VM's owner: the
    /// JS `VM`, which owns its lifecycle). `None` = `snapshot` is refused
    /// with `unsupported`.
    pub snapshot: Option<SnapshotHandler>,
}

/// A listening attach server; [`close`](Self::close) (or dropping it) ends
/// every connection and kills the execs they started.
#[derive(Debug)]
pub struct AttachServer {
    path: PathBuf,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl AttachServer {
    /// Listen on `path` (a stale socket file there is replaced), mode 0600.
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &Path, target: Target) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, Arc::new(target), stop.clone()));
        Ok(AttachServer {
            path: path.to_path_buf(),
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop listening, drop every client (their execs are killed), remove
    /// the socket file. Resolves when all of it is done. Idempotent.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for AttachServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: UnixListener, target: Arc<Target>, stop: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // Reap finished connections so the set does not grow.
            Some(done) = conns.join_next(), if !conns.is_empty() => reaped(done),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(conn::serve(stream, target.clone(), stop.clone()));
                }
                Err(e) => {
                    // EMFILE and the like: back off rather than spin.
                    tracing::debug!(target: "gondolin::session", error = %e, "attach accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while let Some(done) = conns.join_next().await {
        reaped(done);
    }
}

/// Connection tasks that panicked (a bug); the tests assert none did.
#[cfg(test)]
static CONN_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn reaped(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(target: "gondolin::session", error = %e, "attach connection task failed");
        #[cfg(test)]
        CONN_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
