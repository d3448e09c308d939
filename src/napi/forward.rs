//! `NativePortForward`: a host TCP port piped to a guest loopback port
//! (`gondolin::net::forward`), the transport under `vm.enableSsh()`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;

use gondolin::error::ErrorCode;
use gondolin::net::forward::PortForward;

use crate::error::{spawn_coded, IntoJs, JsFailure};
use crate::vm::NativeVm;

#[napi]
pub struct NativePortForward {
    inner: Arc<PortForward>,
}

#[napi]
impl NativePortForward {
    /// The host address it listens on (`host`, `port`).
    #[napi]
    pub fn host(&self) -> String {
        self.inner.local_addr().ip().to_string()
    }

    #[napi]
    pub fn port(&self) -> u32 {
        self.inner.local_addr().port() as u32
    }

    /// Stop listening and end every piped connection; resolves once the
    /// port no longer accepts. Idempotent.
    #[napi]
    pub async fn close(&self) {
        self.inner.shutdown().await;
    }
}

/// Listen on `host:port` (port 0: ephemeral) and pipe each connection to
/// the guest's `127.0.0.1:guestPort`. Rejects with `invalid_option` (a
/// host that is not an IP address, a port out of range, a VM without a
/// network) or `io_error` (the address is taken).
#[napi(ts_return_type = "Promise<NativePortForward>")]
pub fn start_port_forward<'e>(
    env: &'e Env,
    vm: &NativeVm,
    host: String,
    port: u32,
    guest_port: u32,
) -> napi::Result<PromiseRaw<'e, NativePortForward>> {
    let invalid = |m: String| Err(JsFailure::new(ErrorCode::InvalidOption, m));
    let checked = (|| {
        let Ok(ip) = host.parse::<IpAddr>() else {
            return invalid(format!("listen host must be an IP address (got {host:?})"));
        };
        let (Ok(port), Ok(guest_port @ 1..)) = (u16::try_from(port), u16::try_from(guest_port))
        else {
            return invalid(format!("invalid port: {port} / guest port {guest_port}"));
        };
        let Some(connector) = vm.guest_connector() else {
            return invalid(
                "the VM has no network (sandbox.netEnabled: false); port forwarding needs it"
                    .into(),
            );
        };
        Ok((SocketAddr::new(ip, port), connector, guest_port))
    })();
    let (addr, connector, guest_port) = checked.js(env)?;
    spawn_coded(env, async move {
        let fwd = PortForward::start(addr, connector, guest_port)
            .await
            .map_err(|e| {
                JsFailure::new(ErrorCode::IoError, format!("cannot listen on {addr}: {e}"))
                    .caused_by(&e)
            })?;
        Ok(NativePortForward {
            inner: Arc::new(fwd),
        })
    })
}
