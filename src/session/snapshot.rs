//! The `snapshot` message's contract with the VM's owner: the server does
//! not checkpoint anything itself. It asks the owner (in the addon, the JS
//! `VM`, through `vm.checkpoint`) and relays the answer: upstream's session
//! IPC `snapshot` (protocol.md §8), plus `memory` (our extension).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Where the checkpoint file goes, as the client sent it (the owner
    /// refuses a relative one with upstream's message).
    pub path: String,
    /// Also save RAM and device state (`vm.checkpoint(path, { memory: true })`).
    pub memory: bool,
}

/// A written checkpoint: the `snapshot_response` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDone {
    pub path: String,
    pub name: String,
}

/// Why the owner could not checkpoint; sent as `snapshot_failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFailure {
    pub message: String,
}

type SnapshotFuture = Pin<Box<dyn Future<Output = Result<SnapshotDone, SnapshotFailure>> + Send>>;

/// The owner's checkpoint function. After it succeeds the VM is consumed:
/// the connection that asked gets its reply and is closed; the owner
/// closes the server.
#[derive(Clone)]
pub struct SnapshotHandler(Arc<dyn Fn(SnapshotRequest) -> SnapshotFuture + Send + Sync>);

impl SnapshotHandler {
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(SnapshotRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<SnapshotDone, SnapshotFailure>> + Send + 'static,
    {
        SnapshotHandler(Arc::new(move |req| Box::pin(f(req))))
    }

    pub fn run(&self, req: SnapshotRequest) -> SnapshotFuture {
        (self.0)(req)
    }
}

impl fmt::Debug for SnapshotHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotHandler")
    }
}
