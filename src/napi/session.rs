//! `serveAttach`: starts a VM's session attach server (the core's
//! `gondolin::session`) on a unix socket. The JS registry
//! (`js/sessions.cjs`) picks the path, writes the `<id>.json` entry and
//! closes the server with the VM.

use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::{Promise, PromiseRaw};
use napi::Env;
use napi_derive::napi;

use super::error::{spawn_coded, JsFailure};
use super::js_callback::{Component, JsCallError, JsCallback};
use super::vm::NativeVm;
use gondolin::error::ErrorCode;
use gondolin::session::{
    AttachServer, SnapshotDone, SnapshotFailure, SnapshotHandler, SnapshotRequest, Target,
};

#[napi(object)]
pub struct NativeAttachOptions {
    /// Where to listen; a stale socket there is replaced. Mode 0600.
    pub socket_path: String,
    /// Sent to each client in the `status` message.
    pub vm_id: String,
    /// The VM's `env` option as `KEY=VALUE`; attach execs merge theirs over it.
    pub env: Vec<String>,
}

/// What the VM owner's `onSnapshot` resolves to: the checkpoint written.
#[napi(object)]
pub struct NativeSnapshotDone {
    /// The checkpoint file (absolute).
    pub path: String,
    /// The checkpoint's name (its file name without `.qcow2`).
    pub name: String,
}

/// What a client's `snapshot` asks the VM owner for.
#[napi(object)]
pub struct NativeSnapshotRequest {
    /// As the client sent it (not yet checked to be absolute).
    pub path: String,
    /// Save RAM and device state too (our extension).
    pub memory: bool,
}

/// `onSnapshot({ path, memory })`: checkpoint the VM (`vm.checkpoint`).
type OnSnapshot = JsCallback<NativeSnapshotRequest, Promise<NativeSnapshotDone>>;

/// The attach server's `snapshot` handler over the JS VM owner's function.
fn snapshot_handler(on_snapshot: OnSnapshot) -> SnapshotHandler {
    let on_snapshot = Arc::new(on_snapshot);
    SnapshotHandler::new(move |req: SnapshotRequest| {
        let on_snapshot = on_snapshot.clone();
        async move {
            match on_snapshot
                .call(
                    Component::Session,
                    "onSnapshot",
                    NativeSnapshotRequest {
                        path: req.path,
                        memory: req.memory,
                    },
                )
                .await
            {
                Ok(done) => Ok(SnapshotDone {
                    path: done.path,
                    name: done.name,
                }),
                // What vm.checkpoint threw, as upstream's client shows it.
                Err(JsCallError::Failed(_, e)) => Err(SnapshotFailure { message: e.reason }),
                Err(e) => Err(SnapshotFailure {
                    message: e.to_string(),
                }),
            }
        }
    })
}

/// A listening attach server.
#[napi]
pub struct NativeAttachServer {
    inner: Arc<AttachServer>,
}

/// Listen for attach clients of `vm` (protocol: docs/attach-protocol.md).
/// `onSnapshot({ path, memory })` answers the `snapshot` message: it must
/// checkpoint the VM and resolve to `{ path, name }` (a rejection becomes
/// `snapshot_failed` with its message); it must not wait for this server
/// to close, which waits for the reply. Absent = `snapshot` is refused
/// (`unsupported`). Rejects with code `io_error` when the socket cannot be
/// created.
#[napi(ts_return_type = "Promise<NativeAttachServer>")]
pub fn serve_attach<'e>(
    env: &'e Env,
    vm: &NativeVm,
    options: NativeAttachOptions,
    #[napi(
        ts_arg_type = "((request: NativeSnapshotRequest) => Promise<NativeSnapshotDone>) | null | undefined"
    )]
    on_snapshot: Option<OnSnapshot>,
) -> napi::Result<PromiseRaw<'e, NativeAttachServer>> {
    let target = Target {
        vm_id: options.vm_id,
        control: vm.control(),
        env: options.env,
        snapshot: on_snapshot.map(snapshot_handler),
    };
    let path = PathBuf::from(options.socket_path);
    // Spawned so the listener registers with the addon's runtime.
    spawn_coded(env, async move {
        let server = AttachServer::bind(&path, target).map_err(|e| {
            JsFailure::new(
                ErrorCode::IoError,
                format!("cannot listen on {}: {e}", path.display()),
            )
            .caused_by(&e)
        })?;
        Ok(NativeAttachServer {
            inner: Arc::new(server),
        })
    })
}

#[napi]
impl NativeAttachServer {
    /// Stop listening, drop every client (killing the execs they started)
    /// and remove the socket. Idempotent.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        self.inner.close().await;
        Ok(())
    }
}
