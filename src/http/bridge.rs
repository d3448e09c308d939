//! One guest HTTP connection: hyper server towards the guest, policy and
//! secrets in the middle, hyper client (rustls, system roots) upstream.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::hook_glue::{
    fetch_via_hook, first_allowed_ip, from_pairs, hook_error, hook_failed, hook_response,
    on_response, to_pairs,
};
use super::hooks::{Hook, HookRequest, OnRequest};
use super::{resolve_allowed, Egress, EgressEvent};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector<GuardResolver>>, Body>;

const MAX_REDIRECTS: usize = 10;
const HEADER_LIMIT: usize = 64 * 1024;

/// A request the policy refused (carried through connector errors).
#[derive(Debug)]
pub struct Blocked(pub String);
impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Blocked {}

/// The upstream client's resolver: resolves on the host and drops every
/// address the policy refuses, at connect time.
#[derive(Clone)]
pub struct GuardResolver(Weak<Egress>);

impl tower_service::Service<Name> for GuardResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let eg = self.0.upgrade();
        Box::pin(async move {
            let eg = eg.ok_or_else(|| std::io::Error::other("the VM is gone"))?;
            Ok(resolve_allowed(&eg.policy, name.as_str(), 0)
                .await?
                .into_iter())
        })
    }
}

fn tls_config() -> rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            // Honors SSL_CERT_FILE / SSL_CERT_DIR, like OpenSSL.
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!(target: "gondolin::net", "no system CA certificates found: HTTPS upstreams will fail verification");
            }
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth()
        })
        .clone()
}

pub(crate) fn client(egress: Weak<Egress>) -> UpstreamClient {
    let mut http = HttpConnector::new_with_resolver(GuardResolver(egress));
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(16)
        .build(https)
}

/// Serve HTTP/1 on one guest connection (keep-alive included).
pub(crate) async fn serve<I>(eg: Arc<Egress>, io: I, sni: Option<String>, dst: SocketAddrV4)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let eg = eg.clone();
        let sni = sni.clone();
        async move { Ok::<_, Infallible>(handle(eg, req, sni, dst).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(HEADER_LIMIT + 8 * 1024)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let _ = conn.await;
}

pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A short text/plain answer the host makes itself.
pub(super) fn reply(status: StatusCode, detail: &str) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = if detail.is_empty() {
        format!("{} {reason}\n", status.as_u16())
    } else {
        format!("{} {reason}: {detail}\n", status.as_u16())
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if !detail.is_empty() {
        if let Ok(v) = HeaderValue::from_str(detail) {
            h.insert("x-gondolin-reason", v);
        }
    }
    r
}

/// Connection-level headers that never cross the bridge.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let nominated: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in nominated {
        if !(keep_upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// `(host, port, authority)` the request is for.
fn target(req: &Request<Incoming>, https: bool) -> Option<(String, u16, String)> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .trim()
            .to_string(),
    };
    let uri: Uri = format!("http://{authority}/").parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Some((host, port, authority))
}

pub(super) struct Ctx {
    pub(super) eg: Arc<Egress>,
    pub(super) method: String,
    pub(super) url: String,
    pub(super) host: String,
    pub(super) protocol: &'static str,
}

impl Ctx {
    /// One audit record for this request.
    pub(super) fn record(&self, allowed: bool, reason: Option<&str>, status: u16, bytes: u64) {
        self.eg.event(EgressEvent {
            protocol: self.protocol,
            host: self.host.clone(),
            method: self.method.clone(),
            url: self.url.clone(),
            allowed,
            reason: reason.map(str::to_string),
            status: Some(status),
            bytes,
        });
    }

    pub(super) fn deny(&self, status: StatusCode, reason: &str) -> Response<Body> {
        self.record(false, Some(reason), status.as_u16(), 0);
        reply(status, reason)
    }
}

async fn handle(
    eg: Arc<Egress>,
    mut req: Request<Incoming>,
    sni: Option<String>,
    _dst: SocketAddrV4,
) -> Response<Body> {
    let https = sni.is_some();
    let scheme = if https { "https" } else { "http" };
    let Some((host, _, authority)) = target(&req, https) else {
        return reply(StatusCode::BAD_REQUEST, "missing Host header");
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let mut ctx = Ctx {
        eg: eg.clone(),
        method: req.method().to_string(),
        url: format!("{scheme}://{authority}{path}"),
        host: host.clone(),
        protocol: scheme,
    };
    if let Some(sni) = &sni {
        if !host.eq_ignore_ascii_case(sni.trim_end_matches('.')) {
            return ctx.deny(
                StatusCode::MISDIRECTED_REQUEST,
                "Host header does not match the TLS server name",
            );
        }
    }
    if req.method() == Method::CONNECT {
        return ctx.deny(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not allowed");
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if let Some(u) = &upgrade {
        if u != "websocket" || !eg.policy.allow_websockets {
            return ctx.deny(
                StatusCode::NOT_IMPLEMENTED,
                "upgrades other than WebSocket (when allowed) are not supported",
            );
        }
    }
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        match len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n > eg.policy.max_request_body => {
                return ctx.deny(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body exceeds maxHttpBodyBytes",
                );
            }
            Some(_) => {}
            None => return reply(StatusCode::BAD_REQUEST, "bad Content-Length"),
        }
    }
    let guest_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let (parts, incoming) = req.into_parts();
    let mut method = parts.method;
    let mut url = ctx.url.clone();
    let mut headers = parts.headers;
    let mut body: Body = if has_body {
        Limited::new(incoming, eg.policy.max_request_body as usize).boxed()
    } else {
        Empty::new().map_err(|never| match never {}).boxed()
    };
    let mut has_body = has_body;

    // onRequest sees (and may replace) the whole request first.
    let hook_onrequest = eg.policy.hook(Hook::OnRequest).cloned();
    if let Some(h) = hook_onrequest {
        let bytes = if has_body {
            let taken = std::mem::replace(&mut body, full(Bytes::new()));
            match taken.collect().await {
                Ok(c) => Some(c.to_bytes()),
                Err(_) => {
                    return ctx.deny(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body exceeds maxHttpBodyBytes",
                    )
                }
            }
        } else {
            None
        };
        if let Some(b) = &bytes {
            body = full(b.clone());
        }
        let hreq = HookRequest {
            method: method.to_string(),
            url: url.clone(),
            headers: to_pairs(&headers),
            body: bytes.clone(),
        };
        match h.on_request(hreq).await {
            Ok(OnRequest::Keep) => {}
            Ok(OnRequest::Rewrite(r)) => {
                let Ok(m) = Method::from_bytes(r.method.as_bytes()) else {
                    return hook_failed(&ctx, "onRequest returned an invalid method");
                };
                method = m;
                url = r.url;
                headers = match from_pairs(&r.headers) {
                    Ok(h) => h,
                    Err(e) => return hook_failed(&ctx, &e),
                };
                has_body = r.body.as_ref().is_some_and(|b| !b.is_empty());
                body = full(r.body.unwrap_or_default());
                if let Ok(u) = url::Url::parse(&url) {
                    if let Some(h) = u.host_str() {
                        let auth = match u.port() {
                            Some(p) => format!("{h}:{p}"),
                            None => h.to_string(),
                        };
                        if let Ok(v) = HeaderValue::from_str(&auth) {
                            headers.insert(header::HOST, v);
                        }
                    }
                }
                ctx.url = url.clone();
                ctx.method = method.to_string();
            }
            Ok(OnRequest::Respond(r)) => {
                let resp = hook_response(r);
                ctx.record(
                    true,
                    Some("answered by onRequest"),
                    resp.status().as_u16(),
                    0,
                );
                return resp;
            }
            Err(e) => return hook_error(&ctx, e),
        }
    }

    // Where the (possibly rewritten) request goes.
    let Ok(target_url) = url::Url::parse(&url) else {
        return reply(StatusCode::BAD_REQUEST, "invalid request URL");
    };
    if target_url.scheme() != "http" && target_url.scheme() != "https" {
        return ctx.deny(
            StatusCode::BAD_REQUEST,
            "only http and https URLs are supported",
        );
    }
    let host = target_url
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = target_url.port_or_known_default().unwrap_or(80);
    ctx.host = host.clone();
    if !eg.policy.host_allowed(&host) {
        return ctx.deny(StatusCode::FORBIDDEN, &format!("blocked by policy: {host}"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !eg.policy.ip_allowed(&host, ip) {
            return ctx.deny(StatusCode::FORBIDDEN, &format!("blocked by policy: {host}"));
        }
    }
    let hook_isrequestallowed = eg.policy.hook(Hook::IsRequestAllowed).cloned();
    if let Some(h) = hook_isrequestallowed {
        let head = HookRequest {
            method: method.to_string(),
            url: url.clone(),
            headers: to_pairs(&headers),
            body: None,
        };
        match h.is_request_allowed(&head).await {
            Ok(true) => {}
            Ok(false) => return ctx.deny(StatusCode::FORBIDDEN, "blocked by request policy"),
            Err(e) => return hook_error(&ctx, e),
        }
    }
    let hook_isipallowed = eg.policy.hook(Hook::IsIpAllowed).cloned();
    if let Some(h) = hook_isipallowed {
        match first_allowed_ip(h.as_ref(), &eg, &host, port, target_url.scheme()).await {
            Ok(true) => {}
            Ok(false) => {
                return ctx.deny(StatusCode::FORBIDDEN, &format!("blocked by policy: {host}"))
            }
            Err(e) => return hook_error(&ctx, e),
        }
    }
    // Secrets, in headers and (when enabled) the query.
    if let Err(why) = fill_secrets(&eg, &mut headers, &host) {
        return ctx.deny(StatusCode::FORBIDDEN, &why);
    }
    let mut final_url = target_url.clone();
    if let Some(q) = target_url.query() {
        match eg.policy.secrets.query(q, &host) {
            Ok(q2) => final_url.set_query(Some(&q2)),
            Err(e) => return ctx.deny(StatusCode::FORBIDDEN, &e.0),
        }
    }
    strip_hop_by_hop(&mut headers, upgrade.is_some());
    let _permit = eg.upstream.clone().acquire_owned().await;
    let resp = match send_following(
        &ctx,
        method.clone(),
        final_url.to_string(),
        headers.clone(),
        body,
        has_body,
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let hook_onresponse = eg.policy.hook(Hook::OnResponse).cloned();
    if let Some(h) = hook_onresponse {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let req_view = HookRequest {
                method: method.to_string(),
                url,
                headers: to_pairs(&headers),
                body: None,
            };
            return on_response(ctx, h, resp, req_view).await;
        }
    }
    respond(ctx, resp, guest_upgrade)
}

fn fill_secrets(eg: &Egress, headers: &mut HeaderMap, host: &str) -> Result<(), String> {
    if eg.policy.secrets.is_empty() {
        return Ok(());
    }
    for v in headers.values_mut() {
        let Ok(s) = v.to_str() else { continue };
        let name = "";
        let out = eg.policy.secrets.header(name, s, host).map_err(|e| e.0)?;
        if out != s {
            *v = HeaderValue::from_str(&out)
                .map_err(|_| "secret value is not a valid header value".to_string())?;
        }
    }
    for name in [header::AUTHORIZATION, header::PROXY_AUTHORIZATION] {
        if let Some(v) = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        {
            let out = eg
                .policy
                .secrets
                .header(name.as_str(), &v, host)
                .map_err(|e| e.0)?;
            if out != v {
                headers.insert(
                    name,
                    HeaderValue::from_str(&out)
                        .map_err(|_| "invalid Authorization after substitution".to_string())?,
                );
            }
        }
    }
    Ok(())
}

fn is_blocked(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return Some(b.0.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(b) = io.get_ref().and_then(|i| i.downcast_ref::<Blocked>()) {
                return Some(b.0.clone());
            }
        }
        cur = err.source();
    }
    None
}

/// Send upstream, following redirects on the host (each hop re-checked)
/// when the request has no body to replay.
async fn send_following(
    ctx: &Ctx,
    mut method: Method,
    mut url: String,
    mut headers: HeaderMap,
    body: Body,
    has_body: bool,
) -> Result<Response<Body>, Response<Body>> {
    let eg = &ctx.eg;
    let mut body = Some(body);
    for _ in 0..=MAX_REDIRECTS {
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        *builder.headers_mut().unwrap() = headers.clone();
        let b = body
            .take()
            .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed());
        let Ok(req) = builder.body(b) else {
            return Err(reply(StatusCode::BAD_REQUEST, "invalid request"));
        };
        let fetch_hook = eg.policy.hook(Hook::Fetch).cloned();
        let resp = if let Some(h) = fetch_hook {
            // The user's fetch replaces the built-in client (and with it the
            // connect-time address check; the policy checks before it stand).
            match fetch_via_hook(h, req, url.clone()).await {
                Ok(r) => r,
                Err(e) => return Err(hook_error(ctx, e)),
            }
        } else {
            match eg.client.request(req).await {
                Ok(r) => r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
                Err(e) => {
                    if let Some(why) = is_blocked(&e) {
                        return Err(ctx.deny(StatusCode::FORBIDDEN, &why));
                    }
                    tracing::debug!(target: "gondolin::net", "upstream {url}: {e:?}");
                    let detail = upstream_error(&e);
                    return Err(ctx.deny(StatusCode::BAD_GATEWAY, &detail));
                }
            }
        };
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let (true, Some(location), false) = (redirect, location, has_body) else {
            return Ok(resp);
        };
        let Ok(base) = url::Url::parse(&url) else {
            return Ok(resp);
        };
        let Ok(next) = base.join(&location) else {
            return Ok(resp);
        };
        if next.scheme() != "http" && next.scheme() != "https" {
            return Ok(resp);
        }
        let next_host = next
            .host_str()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !eg.policy.host_allowed(&next_host) {
            return Err(ctx.deny(
                StatusCode::FORBIDDEN,
                &format!("blocked by policy: {next_host} (redirect)"),
            ));
        }
        if let Ok(ip) = next_host.parse::<IpAddr>() {
            if !eg.policy.ip_allowed(&next_host, ip) {
                return Err(ctx.deny(
                    StatusCode::FORBIDDEN,
                    &format!("blocked by policy: {next_host} (redirect)"),
                ));
            }
        }
        if next.origin() != base.origin() {
            headers.remove(header::AUTHORIZATION);
            headers.remove(header::COOKIE);
        }
        // Real secret values may only follow to their own hosts.
        for v in headers.values() {
            if let Ok(s) = v.to_str() {
                if let Err(e) = eg.policy.secrets.header("", s, &next_host) {
                    return Err(ctx.deny(StatusCode::FORBIDDEN, &e.0));
                }
            }
        }
        if let Some(port) = next.port() {
            headers.insert(
                header::HOST,
                HeaderValue::from_str(&format!("{next_host}:{port}"))
                    .map_err(|_| reply(StatusCode::BAD_GATEWAY, "bad redirect"))?,
            );
        } else {
            headers.insert(
                header::HOST,
                HeaderValue::from_str(&next_host)
                    .map_err(|_| reply(StatusCode::BAD_GATEWAY, "bad redirect"))?,
            );
        }
        if status == StatusCode::SEE_OTHER && method != Method::HEAD {
            method = Method::GET;
        }
        url = next.to_string();
    }
    Err(ctx.deny(StatusCode::LOOP_DETECTED, "too many redirects"))
}

fn upstream_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut msg = String::from("upstream request failed");
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        msg = format!("upstream request failed: {err}");
        cur = err.source();
    }
    msg
}

fn respond(
    ctx: Ctx,
    resp: Response<Body>,
    guest_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(guest) = guest_upgrade {
            let upstream =
                hyper::upgrade::on(Response::from_parts(parts.clone(), Empty::<Bytes>::new()));
            tokio::spawn(async move {
                if let (Ok(g), Ok(u)) = (guest.await, upstream.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(g), &mut TokioIo::new(u))
                            .await;
                }
            });
            strip_hop_by_hop(&mut parts.headers, true);
            ctx.record(true, Some("websocket"), 101, 0);
            return Response::from_parts(
                parts,
                Empty::new().map_err(|never| match never {}).boxed(),
            );
        }
    }
    strip_hop_by_hop(&mut parts.headers, false);
    let counted = Counted {
        inner: body,
        bytes: 0,
        ctx: Some(ctx),
        status: status.as_u16(),
    };
    Response::from_parts(parts, counted.boxed())
}

/// The response body on its way to the guest; reports the egress event
/// with the byte count when it ends (or the guest goes away).
struct Counted {
    inner: Body,
    bytes: u64,
    ctx: Option<Ctx>,
    status: u16,
}

impl Counted {
    fn finish(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            ctx.record(true, None, self.status, self.bytes);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
