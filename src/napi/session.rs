//! `serveAttach`: starts a VM's session attach server (the core's
//! `gondolin::session`) on a unix socket. The JS registry
//! (`js/sessions.cjs`) picks the path, writes the `<id>.json` entry and
//! closes the server with the VM.

use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;

use super::error::{spawn_coded, JsFailure};
use super::vm::NativeVm;
use gondolin::error::ErrorCode;
use gondolin::session::{AttachServer, Target};

#[napi(object)]
pub struct NativeAttachOptions {
    /// Where to listen; a stale socket there is replaced. Mode 0600.
    pub socket_path: String,
    /// Sent to each client in the `status` message.
    pub vm_id: String,
    /// The VM's `env` option as `KEY=VALUE`; attach execs merge theirs over it.
    pub env: Vec<String>,
}

/// A listening attach server.
#[napi]
pub struct NativeAttachServer {
    inner: Arc<AttachServer>,
}

/// Listen for attach clients of `vm` (protocol: docs/attach-protocol.md).
/// Rejects with code `io_error` when the socket cannot be created.
#[napi(ts_return_type = "Promise<NativeAttachServer>")]
pub fn serve_attach<'e>(
    env: &'e Env,
    vm: &NativeVm,
    options: NativeAttachOptions,
) -> napi::Result<PromiseRaw<'e, NativeAttachServer>> {
    let target = Target {
        vm_id: options.vm_id,
        control: vm.control(),
        env: options.env,
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
