//! The ingress gateway from JS: `NativeIngress` (a running
//! `gondolin::ingress::Gateway`), `NativeListeners` (a VM's routing table,
//! fed by its `/etc/gondolin/listeners`), the listeners file functions, and
//! ingress hooks written in JS seen as the core's [`IngressHooks`] through
//! one [`JsCallback`] dispatcher (`js/ingress.cjs`), which always resolves:
//! a throwing hook becomes an `error` or `blocked` outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use napi::bindgen_prelude::{block_on, Buffer, Promise, PromiseRaw};
use napi::Env;
use napi_derive::napi;

use gondolin::error::ErrorCode;
use gondolin::ingress::hooks::{
    AllowInfo, HeaderPatch, HookError, HookRequest, HookResponse, IngressHooks, RequestPatch,
    ResponsePatch,
};
use gondolin::ingress::listeners::check_route;
use gondolin::ingress::{
    parse_listeners, serialize_listeners, Gateway, GatewayOptions, Listeners, Route,
};

use crate::error::{spawn_coded, IntoJs, JsFailure};
use crate::js_callback::{boundary_enum, Component, JsCallback};
use crate::vm::NativeVm;

#[napi(object)]
#[derive(Clone)]
pub struct IngressRoute {
    pub prefix: String,
    pub port: u32,
    pub strip_prefix: bool,
}

#[napi(object)]
pub struct IngressRouteInput {
    pub prefix: String,
    pub port: f64,
    pub strip_prefix: bool,
}

fn to_js(r: &Route) -> IngressRoute {
    IngressRoute {
        prefix: r.prefix.clone(),
        port: r.port.into(),
        strip_prefix: r.strip_prefix,
    }
}

fn from_js(routes: Vec<IngressRouteInput>) -> Result<Vec<Route>, JsFailure> {
    routes
        .into_iter()
        .map(|r| check_route(&r.prefix, r.port, r.strip_prefix))
        .collect::<Result<_, _>>()
        .map_err(|e| JsFailure::from_core(&e))
}

/// Parse a listeners file (`invalid_option` naming the line on error).
#[napi]
pub fn parse_listeners_file(env: &Env, text: String) -> napi::Result<Vec<IngressRoute>> {
    parse_listeners(&text)
        .map(|r| r.iter().map(to_js).collect())
        .map_err(|e| JsFailure::from_core(&e))
        .js(env)
}

/// The canonical file for `routes` (checked as `setIngressRoutes` does).
#[napi]
pub fn serialize_listeners_file(env: &Env, routes: Vec<IngressRouteInput>) -> napi::Result<String> {
    from_js(routes).map(|r| serialize_listeners(&r)).js(env)
}

/// A VM's routing table (from its `/etc/gondolin` provider).
#[napi]
pub struct NativeListeners {
    pub(crate) inner: Arc<Listeners>,
}

#[napi]
impl NativeListeners {
    #[napi]
    pub fn routes(&self) -> Vec<IngressRoute> {
        self.inner.routes().iter().map(to_js).collect()
    }

    /// Replace the routes and rewrite the file in canonical form.
    #[napi]
    pub fn set_routes(&self, env: &Env, routes: Vec<IngressRouteInput>) -> napi::Result<()> {
        let routes = from_js(routes).js(env)?;
        block_on(self.inner.set_routes(routes))
            .map_err(|e| JsFailure::from_core(&e))
            .js(env)
    }

    /// Why the last reload of the file failed (old routes kept), or null.
    #[napi]
    pub fn reload_error(&self) -> Option<String> {
        self.inner.reload_error()
    }
}

boundary_enum! {
    /// The ingress hooks JS may supply.
    IngressHook {
        IsAllowed = "isAllowed",
        OnRequest = "onRequest",
        OnResponse = "onResponse",
    }
}

boundary_enum! {
    /// What an ingress hook's outcome says.
    IngressAction {
        /// isAllowed: yes.
        Allow = "allow",
        /// isAllowed: no (403).
        Deny = "deny",
        /// No patch.
        Keep = "keep",
        /// Apply the outcome's fields.
        Patch = "patch",
        /// The hook threw `IngressRequestBlockedError`.
        Blocked = "blocked",
        /// The hook threw anything else (502).
        Error = "error",
    }
}

/// A header edit: `values` null deletes the header.
#[napi(object)]
pub struct IngressHeaderEdit {
    pub name: String,
    pub values: Option<Vec<String>>,
}

#[napi(object)]
pub struct IngressHookCall {
    pub hook: IngressHook,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub route: IngressRoute,
    /// `[name, value]` pairs, names lowercased.
    pub headers: Vec<Vec<String>>,
    pub backend_host: Option<String>,
    pub backend_port: Option<u32>,
    pub backend_target: Option<String>,
    pub status: Option<u32>,
    pub status_message: Option<String>,
    pub response_headers: Option<Vec<Vec<String>>>,
    pub response_body: Option<Buffer>,
}

#[napi(object)]
pub struct IngressHookOutcome {
    pub action: IngressAction,
    pub method: Option<String>,
    pub backend_host: Option<String>,
    pub backend_port: Option<u32>,
    pub backend_target: Option<String>,
    pub headers: Option<Vec<IngressHeaderEdit>>,
    pub buffer_response_body: Option<bool>,
    pub max_buffered_response_body_bytes: Option<f64>,
    pub status: Option<u32>,
    pub status_message: Option<String>,
    pub body: Option<Buffer>,
    pub message: Option<String>,
}

/// `(call) => Promise<IngressHookOutcome>`.
pub type IngressDispatch = JsCallback<IngressHookCall, Promise<IngressHookOutcome>>;

struct JsIngressHooks {
    dispatch: IngressDispatch,
    present: Vec<IngressHook>,
}

fn pairs(h: &[(String, String)]) -> Vec<Vec<String>> {
    h.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect()
}

fn patch(edits: Option<Vec<IngressHeaderEdit>>) -> HeaderPatch {
    edits
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.values))
        .collect()
}

impl JsIngressHooks {
    fn call_for(hook: IngressHook, r: &HookRequest) -> IngressHookCall {
        IngressHookCall {
            hook,
            client_ip: r.client_ip.clone(),
            method: r.method.clone(),
            path: r.path.clone(),
            route: to_js(&r.route),
            headers: pairs(&r.headers),
            backend_host: Some(r.backend_host.clone()),
            backend_port: Some(r.backend_port.into()),
            backend_target: Some(r.backend_target.clone()),
            status: None,
            status_message: None,
            response_headers: None,
            response_body: None,
        }
    }

    async fn call(&self, call: IngressHookCall) -> Result<IngressHookOutcome, HookError> {
        let name = call.hook.as_str();
        let out = self
            .dispatch
            .call(Component::Net, name, call)
            .await
            .map_err(|e| HookError::Failed(e.to_string()))?;
        match out.action {
            IngressAction::Blocked => Err(HookError::Blocked {
                status: out.status.unwrap_or(403).clamp(100, 599) as u16,
                status_message: out.status_message.unwrap_or_else(|| "Forbidden".into()),
                body: out
                    .body
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|| "forbidden\n".into()),
            }),
            IngressAction::Error => Err(HookError::Failed(format!(
                "{name} failed: {}",
                out.message.unwrap_or_default()
            ))),
            _ => Ok(out),
        }
    }
}

#[async_trait]
impl IngressHooks for JsIngressHooks {
    fn has_is_allowed(&self) -> bool {
        self.present.contains(&IngressHook::IsAllowed)
    }
    fn has_on_request(&self) -> bool {
        self.present.contains(&IngressHook::OnRequest)
    }
    fn has_on_response(&self) -> bool {
        self.present.contains(&IngressHook::OnResponse)
    }

    async fn is_allowed(&self, info: AllowInfo) -> Result<bool, HookError> {
        let out = self
            .call(IngressHookCall {
                hook: IngressHook::IsAllowed,
                client_ip: info.client_ip,
                method: info.method,
                path: info.path,
                route: to_js(&info.route),
                headers: pairs(&info.headers),
                backend_host: None,
                backend_port: None,
                backend_target: None,
                status: None,
                status_message: None,
                response_headers: None,
                response_body: None,
            })
            .await?;
        Ok(out.action == IngressAction::Allow)
    }

    async fn on_request(&self, req: HookRequest) -> Result<Option<RequestPatch>, HookError> {
        let out = self
            .call(Self::call_for(IngressHook::OnRequest, &req))
            .await?;
        if out.action != IngressAction::Patch {
            return Ok(None);
        }
        let port = match out.backend_port {
            None => None,
            Some(p @ 1..=65535) => Some(p as u16),
            Some(p) => {
                return Err(HookError::Failed(format!(
                    "onRequest returned an invalid backendPort: {p}"
                )))
            }
        };
        Ok(Some(RequestPatch {
            method: out.method,
            backend_host: out.backend_host,
            backend_port: port,
            backend_target: out.backend_target,
            headers: patch(out.headers),
            buffer_response_body: out.buffer_response_body,
            max_buffered_response_body_bytes: out
                .max_buffered_response_body_bytes
                .map(|n| n.max(0.0) as u64),
        }))
    }

    async fn on_response(
        &self,
        resp: HookResponse,
        req: HookRequest,
    ) -> Result<Option<ResponsePatch>, HookError> {
        let mut call = Self::call_for(IngressHook::OnResponse, &req);
        call.status = Some(resp.status.into());
        call.status_message = Some(resp.status_message);
        call.response_headers = Some(pairs(&resp.headers));
        call.response_body = resp.body.map(|b| Buffer::from(b.to_vec()));
        let out = self.call(call).await?;
        if out.action != IngressAction::Patch {
            return Ok(None);
        }
        Ok(Some(ResponsePatch {
            status: out.status.map(|s| s.clamp(100, 599) as u16),
            status_message: out.status_message,
            headers: patch(out.headers),
            body: out.body.map(|b| b.to_vec().into()),
        }))
    }
}

/// `EnableIngressOptions` after the JS checks (times in ms).
#[napi(object)]
pub struct NativeIngressOptions {
    pub allow_web_sockets: bool,
    pub buffer_response_body: bool,
    pub max_buffered_response_body_bytes: f64,
    pub upstream_header_timeout_ms: f64,
    pub upstream_response_timeout_ms: f64,
}

#[napi]
pub struct NativeIngress {
    inner: Arc<Gateway>,
}

#[napi]
impl NativeIngress {
    #[napi]
    pub fn host(&self) -> String {
        self.inner.local_addr().ip().to_string()
    }

    #[napi]
    pub fn port(&self) -> u32 {
        self.inner.local_addr().port() as u32
    }

    /// Stop listening and end every connection; resolves once the port
    /// no longer accepts. Idempotent.
    #[napi]
    pub async fn close(&self) {
        self.inner.shutdown().await;
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_millis(if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    })
}

/// Listen on `host:port` and route to the VM's guest by `listeners`.
/// Rejects with `invalid_state` (a VM without a network), `invalid_option`
/// (a host that is not an IP address) or `io_error` (the address is taken).
#[napi(ts_return_type = "Promise<NativeIngress>")]
#[allow(clippy::too_many_arguments)]
pub fn start_ingress<'e>(
    env: &'e Env,
    vm: &NativeVm,
    listeners: &NativeListeners,
    host: String,
    port: u32,
    options: NativeIngressOptions,
    #[napi(
        ts_arg_type = "((call: IngressHookCall) => Promise<IngressHookOutcome>) | undefined | null"
    )]
    dispatch: Option<IngressDispatch>,
    hook_names: Vec<IngressHook>,
) -> napi::Result<PromiseRaw<'e, NativeIngress>> {
    let checked = (|| {
        let Ok(ip) = host.parse::<IpAddr>() else {
            return Err(JsFailure::new(
                ErrorCode::InvalidOption,
                format!("enableIngress listenHost must be an IP address (got {host:?})"),
            ));
        };
        let Ok(port) = u16::try_from(port) else {
            return Err(JsFailure::new(
                ErrorCode::InvalidOption,
                format!("enableIngress listenPort must be 0-65535 (got {port})"),
            ));
        };
        let Some(connector) = vm.guest_connector() else {
            return Err(JsFailure::new(
                ErrorCode::InvalidState,
                "ingress needs the VM's network (sandbox.netEnabled is false)",
            ));
        };
        Ok((SocketAddr::new(ip, port), connector))
    })();
    let (addr, connector) = checked.js(env)?;
    let hooks: Option<Arc<dyn IngressHooks>> = dispatch.map(|d| {
        Arc::new(JsIngressHooks {
            dispatch: d,
            present: hook_names,
        }) as Arc<dyn IngressHooks>
    });
    let opts = GatewayOptions {
        allow_websockets: options.allow_web_sockets,
        buffer_response_body: options.buffer_response_body,
        max_buffered_response_body_bytes: options.max_buffered_response_body_bytes.max(0.0) as u64,
        upstream_header_timeout: ms(options.upstream_header_timeout_ms),
        upstream_response_timeout: ms(options.upstream_response_timeout_ms),
        ..GatewayOptions::default()
    };
    let table = listeners.inner.clone();
    spawn_coded(env, async move {
        let g = Gateway::start(addr, connector, table, hooks, opts)
            .await
            .map_err(|e| {
                JsFailure::new(ErrorCode::IoError, format!("cannot listen on {addr}: {e}"))
                    .caused_by(&e)
            })?;
        Ok(NativeIngress { inner: Arc::new(g) })
    })
}
