//! The ingress gateway: a hyper HTTP/1.1 server on a host address whose
//! requests go to the guest's loopback, chosen by the listeners table.
//!
//! Per request: route (longest prefix) → `isAllowed` → `onRequest` patch →
//! a fresh guest connection ([`GuestConnector`], as upstream opens a fresh
//! stream per request, with `connection: close`) → hyper's client sends the
//! request (its body streamed, re-chunked when the length is unknown) →
//! the response head within `upstream_header_timeout` → `onResponse` patch
//! (the body buffered only when asked, up to a cap) → the body streamed back
//! with at most `upstream_response_timeout` between chunks. hyper decodes
//! chunked and close-delimited (HTTP/1.0-style) bodies and re-frames them
//! for the client; a failure after the head was sent ends the client's
//! connection, as upstream does. WebSocket upgrades are piped both ways
//! once the guest answers 101.

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::headers::{
    from_pairs, has_upgrade_intent, is_upgrade_request, strip_hop_by_hop, to_pairs, tokens,
    upstream_headers,
};
use super::hooks::{
    apply_header_patch, AllowInfo, HeaderPatch, HookError, HookRequest, HookResponse, IngressHooks,
    RequestPatch,
};
use super::listeners::{backend_path, choose, Listeners, Route};
use crate::net::dial::GuestConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies both ways.
pub type Body = BoxBody<Bytes, BoxError>;

/// Client request heads larger than this are refused by hyper (431).
const HEAD_LIMIT: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// A client must send its request head within this.
const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Gateway settings (`EnableIngressOptions`; defaults are upstream's).
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub allow_websockets: bool,
    /// Buffer every response body for `onResponse` (only with that hook).
    pub buffer_response_body: bool,
    pub max_buffered_response_body_bytes: u64,
    /// The guest must answer with a response head within this (0: no bound).
    pub upstream_header_timeout: Duration,
    /// At most this between two body chunks from the guest (0: no bound).
    pub upstream_response_timeout: Duration,
    /// How long the guest may take to accept the connection.
    pub connect_timeout: Duration,
    /// Client connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            allow_websockets: true,
            buffer_response_body: false,
            max_buffered_response_body_bytes: 2 * 1024 * 1024,
            upstream_header_timeout: Duration::from_millis(2000),
            upstream_response_timeout: Duration::from_millis(15000),
            connect_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

struct Shared {
    connector: Arc<dyn GuestConnector>,
    listeners: Arc<Listeners>,
    hooks: Option<Arc<dyn IngressHooks>>,
    opts: GatewayOptions,
    /// Cancelled on close: ends WebSocket pipes (which outlive their
    /// request's service call).
    stop: CancellationToken,
}

/// A running gateway; stops on [`Gateway::close`] or drop.
pub struct Gateway {
    local: SocketAddr,
    stop: CancellationToken,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Listen on `listen` (port 0: ephemeral) and serve.
    pub async fn start(
        listen: SocketAddr,
        connector: Arc<dyn GuestConnector>,
        listeners: Arc<Listeners>,
        hooks: Option<Arc<dyn IngressHooks>>,
        opts: GatewayOptions,
    ) -> io::Result<Gateway> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            connector,
            listeners,
            hooks,
            opts,
            stop: stop.clone(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared));
        Ok(Gateway {
            local,
            stop,
            tasks: Mutex::new(Some(tasks)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stop listening and end every connection. Idempotent. The listening
    /// socket closes when the aborted accept loop is next polled: await
    /// [`Gateway::shutdown`] to know it is gone.
    pub fn close(&self) {
        self.stop.cancel();
        drop(self.tasks.lock().unwrap().take());
    }

    /// [`Gateway::close`], resolving once the listening socket is closed
    /// (until then the kernel still completes handshakes into its backlog).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tasks = self.tasks.lock().unwrap().take();
        if let Some(mut tasks) = tasks {
            tasks.shutdown().await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(sh.opts.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((client, peer)) = accepted else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let sh = sh.clone();
        conns.spawn(async move {
            let _permit = permit;
            let ip = peer.ip();
            let svc = service_fn(move |req| {
                let sh = sh.clone();
                async move { Ok::<_, Infallible>(handle(sh, ip, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CLIENT_HEADER_TIMEOUT)
                // A client may shut its write side once the request is
                // sent; the response still goes out.
                .half_close(true)
                .max_buf_size(HEAD_LIMIT + 8 * 1024)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(client), svc)
                .with_upgrades();
            let _ = conn.await;
        });
    }
}

/// Why a request got no answer from the guest; each is one response.
#[derive(Debug)]
enum Fail {
    NoRoute,
    Blocked {
        status: u16,
        status_message: String,
        body: String,
    },
    UpgradeRequired,
    Text(StatusCode, &'static str),
    /// Anything else before the head went out: 502 without details.
    BadGateway(String),
}

impl From<HookError> for Fail {
    fn from(e: HookError) -> Self {
        match e {
            HookError::Blocked {
                status,
                status_message,
                body,
            } => Fail::Blocked {
                status,
                status_message,
                body,
            },
            HookError::Failed(m) => Fail::BadGateway(m),
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body = body.into();
    let mut r = Response::new(full(body.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

impl Fail {
    fn response(self) -> Response<Body> {
        match self {
            Fail::NoRoute => text(StatusCode::NOT_FOUND, "no route\n"),
            Fail::Blocked {
                status,
                status_message,
                body,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                let mut r = text(status, body);
                set_reason(&mut r, &status_message);
                r
            }
            Fail::UpgradeRequired => {
                let mut r = text(StatusCode::UPGRADE_REQUIRED, "use websocket upgrade\n");
                let h = r.headers_mut();
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
            Fail::Text(status, body) => text(status, body),
            Fail::BadGateway(detail) => {
                crate::log_limited!(debug, target: "gondolin::net::ingress", detail = %detail, "ingress request failed: 502");
                text(StatusCode::BAD_GATEWAY, "bad gateway\n")
            }
        }
    }
}

fn set_reason(r: &mut Response<Body>, reason: &str) {
    let canonical = r.status().canonical_reason().unwrap_or("");
    if !reason.is_empty() && reason != canonical {
        if let Ok(p) = ReasonPhrase::try_from(Bytes::copy_from_slice(reason.as_bytes())) {
            r.extensions_mut().insert(p);
        }
    }
}

async fn handle(sh: Arc<Shared>, ip: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let upgrade = is_upgrade_request(req.headers());
    match proxy(&sh, ip, req).await {
        Ok(r) => r,
        Err(f) => {
            let mut r = f.response();
            if upgrade {
                // A refused upgrade ends the connection (the client sent no
                // request it expects to keep using it for).
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    }
}

async fn proxy(
    sh: &Arc<Shared>,
    ip: IpAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Fail> {
    let upgrade = is_upgrade_request(req.headers());
    if upgrade {
        if !sh.opts.allow_websockets {
            return Err(Fail::Text(
                StatusCode::NOT_IMPLEMENTED,
                "websocket upgrades disabled\n",
            ));
        }
        // Checked again after the hooks (they may change the method).
        if req.method() != Method::GET {
            return Err(Fail::Text(
                StatusCode::BAD_REQUEST,
                "websocket upgrade requires GET\n",
            ));
        }
    } else if has_upgrade_intent(req.headers()) {
        return Err(Fail::UpgradeRequired);
    }
    let path = req.uri().path().to_string();
    if !path.starts_with('/') {
        return Err(Fail::Text(StatusCode::BAD_REQUEST, "bad request\n"));
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let routes = sh.listeners.routes();
    let route: Route = choose(&routes, &path).cloned().ok_or(Fail::NoRoute)?;
    let client_ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
    .to_string();
    let headers = to_pairs(req.headers());
    let hooks = sh.hooks.clone();

    if let Some(h) = hooks.as_ref().filter(|h| h.has_is_allowed()) {
        let info = AllowInfo {
            client_ip: client_ip.clone(),
            method: req.method().to_string(),
            path: path_and_query.clone(),
            headers: headers.clone(),
            route: route.clone(),
        };
        if !h.is_allowed(info).await? {
            return Err(Fail::Blocked {
                status: 403,
                status_message: "Forbidden".into(),
                body: "forbidden\n".into(),
            });
        }
    }

    let mut hreq = HookRequest {
        client_ip: client_ip.clone(),
        method: req.method().to_string(),
        path: path_and_query.clone(),
        route: route.clone(),
        backend_host: "127.0.0.1".into(),
        backend_port: route.port,
        backend_target: format!("{}{query}", backend_path(&route, &path)),
        headers,
    };
    let mut buffer = sh.opts.buffer_response_body;
    let mut buffer_cap = sh.opts.max_buffered_response_body_bytes;
    if let Some(h) = hooks.as_ref().filter(|h| h.has_on_request()) {
        if let Some(p) = h.on_request(hreq.clone()).await? {
            buffer = p.buffer_response_body.unwrap_or(buffer);
            buffer_cap = p.max_buffered_response_body_bytes.unwrap_or(buffer_cap);
            apply_request_patch(&mut hreq, p)?;
        }
    }
    let on_response = hooks.filter(|h| h.has_on_response());
    let method = Method::from_bytes(hreq.method.as_bytes())
        .map_err(|_| Fail::BadGateway("invalid method".into()))?;
    if upgrade {
        if method != Method::GET {
            return Err(Fail::Text(
                StatusCode::BAD_REQUEST,
                "websocket upgrade requires GET\n",
            ));
        }
        let is_ws = tokens(req.headers(), header::UPGRADE)
            .iter()
            .any(|t| t == "websocket");
        if !is_ws {
            return Err(Fail::Text(
                StatusCode::BAD_REQUEST,
                "expected websocket upgrade\n",
            ));
        }
    }

    // The request to the guest.
    let client_headers = req.headers().clone();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let h = upstream_headers(&hreq.headers, &client_headers, &route, &client_ip, upgrade);
    let body: Body = if upgrade {
        empty()
    } else {
        req.into_body().map_err(|e| Box::new(e) as BoxError).boxed()
    };
    let mut out = Request::builder()
        .method(method.clone())
        .uri(&hreq.backend_target)
        .body(body)
        .map_err(|e| Fail::BadGateway(format!("cannot build the request: {e}")))?;
    *out.headers_mut() = h;

    let mut resp = send(sh, hreq.backend_port, out).await?;

    let status_message = resp
        .extensions()
        .get::<ReasonPhrase>()
        .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
        .unwrap_or_else(|| resp.status().canonical_reason().unwrap_or("").to_string());
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_upgrade = (upgrade && switching).then(|| hyper::upgrade::on(&mut resp));
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade && switching);

    let mut status = parts.status;
    let mut reason = status_message;
    let mut body: Body = body.map_err(|e| Box::new(e) as BoxError).boxed();
    let mut replaced: Option<Bytes> = None;
    if let Some(h) = on_response {
        let buffered = if buffer && !switching {
            let b = collect(body, buffer_cap, sh.opts.upstream_response_timeout).await?;
            body = full(b.clone());
            Some(b)
        } else {
            None
        };
        let view = HookResponse {
            status: status.as_u16(),
            status_message: reason.clone(),
            headers: to_pairs(&parts.headers),
            body: buffered.clone(),
        };
        let patch = h.on_response(view, hreq).await?;
        replaced = buffered;
        if let Some(p) = patch {
            if let Some(s) = p.status {
                status = StatusCode::from_u16(s)
                    .map_err(|_| Fail::BadGateway(format!("onResponse: invalid status {s}")))?;
                if p.status_message.is_none() {
                    reason = status.canonical_reason().unwrap_or("").to_string();
                }
            }
            if let Some(m) = p.status_message {
                reason = m;
            }
            if !p.headers.is_empty() {
                let mut pairs = to_pairs(&parts.headers);
                apply_header_patch(&mut pairs, &p.headers as &HeaderPatch);
                parts.headers = from_pairs(&pairs);
                strip_hop_by_hop(&mut parts.headers, upgrade && switching);
            }
            if let Some(b) = p.body {
                body = full(b.clone());
                replaced = Some(b);
            }
        }
    }
    parts.status = status;
    // Our answer is HTTP/1.1 whatever the guest spoke (an HTTP/1.0 body
    // that ends at EOF is re-framed as chunked).
    parts.version = http::Version::HTTP_11;
    if let Some(b) = &replaced {
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
    }

    if upgrade {
        let ok = status == StatusCode::SWITCHING_PROTOCOLS && replaced.is_none();
        if let (true, Some(up), Some(client)) = (ok, upstream_upgrade, client_upgrade) {
            let stop = sh.stop.clone();
            tokio::spawn(async move {
                let pipe = async {
                    if let (Ok(u), Ok(c)) = (up.await, client.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(c),
                            &mut TokioIo::new(u),
                        )
                        .await;
                    }
                };
                tokio::select! {
                    _ = pipe => {}
                    _ = stop.cancelled() => {}
                }
            });
            let mut r = Response::from_parts(parts, empty());
            set_reason(&mut r, &reason);
            return Ok(r);
        }
        // Not switching (or a patched body): answer and end the connection.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if replaced.is_none() && !sh.opts.upstream_response_timeout.is_zero() {
        body = IdleTimeout::new(body, sh.opts.upstream_response_timeout).boxed();
    }
    let mut r = Response::from_parts(parts, body);
    set_reason(&mut r, &reason);
    Ok(r)
}

/// Apply `onRequest`'s patch; a patch that would leave the guest's
/// loopback or make a malformed request fails the request (502).
fn apply_request_patch(hreq: &mut HookRequest, p: RequestPatch) -> Result<(), Fail> {
    if let Some(m) = p.method {
        Method::from_bytes(m.as_bytes())
            .map_err(|_| Fail::BadGateway(format!("onRequest: invalid method {m:?}")))?;
        hreq.method = m;
    }
    if let Some(host) = p.backend_host {
        if host != "127.0.0.1" && host != "localhost" {
            return Err(Fail::BadGateway(format!(
                "onRequest: backendHost must be 127.0.0.1 or localhost (got {host:?})"
            )));
        }
        hreq.backend_host = host;
    }
    if let Some(port) = p.backend_port {
        if port == 0 {
            return Err(Fail::BadGateway("onRequest: invalid backendPort".into()));
        }
        hreq.backend_port = port;
    }
    if let Some(t) = p.backend_target {
        if !t.starts_with('/') {
            return Err(Fail::BadGateway(format!(
                "onRequest: backendTarget must start with '/' (got {t:?})"
            )));
        }
        hreq.backend_target = t;
    }
    apply_header_patch(&mut hreq.headers, &p.headers);
    Ok(())
}

/// One guest connection, the request, and the response head within the
/// header timeout. The connection's task ends with the body (or the
/// gateway).
async fn send(sh: &Shared, port: u16, out: Request<Body>) -> Result<Response<Incoming>, Fail> {
    let stream = sh
        .connector
        .connect(port, sh.opts.connect_timeout)
        .await
        .map_err(|e| Fail::BadGateway(format!("guest port {port}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(HEAD_LIMIT + 8 * 1024)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(|e| Fail::BadGateway(format!("handshake: {e}")))?;
    let stop = sh.stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = conn.with_upgrades() => {}
            _ = stop.cancelled() => {}
        }
    });
    let sent = sender.send_request(out);
    let resp = if sh.opts.upstream_header_timeout.is_zero() {
        sent.await
    } else {
        tokio::time::timeout(sh.opts.upstream_header_timeout, sent)
            .await
            .map_err(|_| Fail::BadGateway("upstream header timeout".into()))?
    };
    resp.map_err(|e| Fail::BadGateway(format!("upstream: {e}")))
}

/// The whole body, at most `cap` bytes, each chunk within `idle`.
async fn collect(body: Body, cap: u64, idle: Duration) -> Result<Bytes, Fail> {
    let mut body = if idle.is_zero() {
        body
    } else {
        IdleTimeout::new(body, idle).boxed()
    };
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Fail::BadGateway(format!("upstream body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > cap {
                return Err(Fail::BadGateway(format!(
                    "buffered body too large (>{cap} bytes)"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.into())
}

/// A body that fails when the next frame takes longer than `idle`.
struct IdleTimeout {
    inner: Body,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimeout {
    fn new(inner: Body, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + this.idle;
                this.sleep.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("upstream body timed out".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
