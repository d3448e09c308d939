//! One guest HTTP connection: a hyper server towards the guest, and for
//! each request a short list of named steps (see [`steps`]); every refusal
//! is a [`Refusal`], answered and recorded in one place.

use std::convert::Infallible;
use std::net::SocketAddrV4;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::admission::{admit, host_of, Hop};
use super::deliver::{refuse_unreadable, respond, scrub};
use super::hook_glue::{from_pairs, hook_response, on_response, to_pairs};
use super::hooks::{Hook, HookRequest, OnRequest};
use super::refusal::{Ctx, Refusal};
use super::reply::{empty, full, strip_hop_by_hop, Body};
use super::secrets::Secrets;
use super::{upstream, Egress, Policy};

const MAX_REDIRECTS: usize = 10;
/// One limit for a request head (request line + headers) on every path,
/// hooks or not: beyond it hyper answers 431 and nothing goes upstream.
pub(crate) const HEAD_LIMIT: usize = 64 * 1024;
pub(crate) const MAX_HEADERS: usize = 100;

/// Serve HTTP/1 on one guest connection (keep-alive included).
pub(crate) async fn serve<I>(eg: Arc<Egress>, io: I, sni: Option<String>, _dst: SocketAddrV4)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let eg = eg.clone();
        let sni = sni.clone();
        async move { Ok::<_, Infallible>(handle(eg, req, sni).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(HEAD_LIMIT + 8 * 1024)
        .max_header_size(HEAD_LIMIT)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let _ = conn.await;
}

async fn handle(eg: Arc<Egress>, req: Request<Incoming>, sni: Option<String>) -> Response<Body> {
    let mut ctx = Ctx {
        eg,
        method: req.method().to_string(),
        url: String::new(),
        host: String::new(),
        protocol: if sni.is_some() { "https" } else { "http" },
    };
    match steps(&mut ctx, req, sni.as_deref()).await {
        Ok(resp) => resp,
        Err(r) => ctx.refuse(r),
    }
}

/// What goes upstream (first hop).
struct Outgoing {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
    body: Body,
    has_body: bool,
}

/// One guest request, step by step; any step may refuse it.
async fn steps(
    ctx: &mut Ctx,
    mut req: Request<Incoming>,
    sni: Option<&str>,
) -> Result<Response<Body>, Refusal> {
    read_target(ctx, &req, sni)?;
    check_method(req.method())?;
    let upgrade = check_upgrade(&req, &ctx.eg.policy)?;
    check_declared_length(&req, ctx.eg.policy.max_request_body)?;
    let guest_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut out = outgoing(ctx, req)?;
    if let Some(answer) = on_request_head(ctx, &mut out).await? {
        return Ok(deliver_as_is(ctx, answer));
    }
    if let Some(answer) = on_request(ctx, &mut out).await? {
        return Ok(deliver_as_is(ctx, answer));
    }
    check_method(&out.method)?;
    strip_hop_by_hop(&mut out.headers, upgrade);
    // onResponse gets the request as the guest (or onRequest) made it.
    let on_resp = ctx
        .eg
        .policy
        .hook(Hook::OnResponse)
        .cloned()
        .map(|h| (h, head_view(&out)));
    let method = out.method.clone();
    let _permit = ctx.eg.upstream.clone().acquire_owned().await;
    let (resp, carried_secret) = send_following(ctx, out).await?;
    refuse_unreadable(&resp, carried_secret)?;
    let scrubber = ctx.eg.policy.secrets.scrubber();
    match on_resp {
        Some((h, view)) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => {
            let out = on_response(ctx, h, resp, view).await?;
            Ok(scrub(out, scrubber, &method))
        }
        _ => Ok(respond(
            ctx.clone(),
            scrub(resp, scrubber, &method),
            guest_upgrade,
        )),
    }
}

fn head_view(out: &Outgoing) -> HookRequest {
    HookRequest {
        method: out.method.to_string(),
        url: out.url.to_string(),
        headers: to_pairs(&out.headers),
        body: None,
    }
}

/// Who the request is for. A request names its host once: a second
/// `Host` header is malformed (RFC 9112 §3.2), and an absolute-form target
/// or a TLS server name that disagrees with `Host` is misdirected, so the
/// host that is checked is the host that goes upstream.
fn read_target(ctx: &mut Ctx, req: &Request<Incoming>, sni: Option<&str>) -> Result<(), Refusal> {
    let https = sni.is_some();
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("more than one Host header"));
    }
    let host_header = host_header
        .map(|v| v.to_str().map(str::trim))
        .transpose()
        .map_err(|_| Refusal::BadRequest("invalid Host header"))?;
    let in_target = req.uri().authority().map(|a| a.as_str());
    let authority = match (in_target, host_header) {
        (Some(t), Some(h)) => {
            if endpoint(t, https) != endpoint(h, https) {
                return Err(Refusal::Misdirected(
                    "Host header does not match the request target",
                ));
            }
            t
        }
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return Err(Refusal::BadRequest("missing Host header")),
    };
    let (host, _) = endpoint(authority, https).ok_or(Refusal::BadRequest("invalid Host header"))?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    ctx.url = format!("{}://{authority}{path}", ctx.protocol);
    ctx.host = host.clone();
    if let Some(sni) = sni {
        if !host.eq_ignore_ascii_case(sni.trim_end_matches('.')) {
            return Err(Refusal::Misdirected(
                "Host header does not match the TLS server name",
            ));
        }
    }
    Ok(())
}

/// `(host, port)` of an authority, lower-case, default port filled in.
fn endpoint(authority: &str, https: bool) -> Option<(String, u16)> {
    let uri: Uri = format!("http://{authority}/").parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((host, uri.port_u16().unwrap_or(if https { 443 } else { 80 })))
}

/// CONNECT tunnels past the policy; TRACE and TRACK reflect the request,
/// secrets filled in, back into the guest.
fn check_method(m: &Method) -> Result<(), Refusal> {
    let name = m.as_str();
    if *m == Method::CONNECT || *m == Method::TRACE || name.eq_ignore_ascii_case("TRACK") {
        return Err(Refusal::Method(name.to_string()));
    }
    Ok(())
}

/// `true` for a WebSocket upgrade (when allowed); other upgrades are refused.
fn check_upgrade(req: &Request<Incoming>, policy: &Policy) -> Result<bool, Refusal> {
    let Some(u) = req.headers().get(header::UPGRADE) else {
        return Ok(false);
    };
    if u.as_bytes().eq_ignore_ascii_case(b"websocket") && policy.allow_websockets {
        return Ok(true);
    }
    Err(Refusal::Upgrade)
}

fn check_declared_length(req: &Request<Incoming>, max: u64) -> Result<(), Refusal> {
    let Some(len) = req.headers().get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    match len.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(n) if n > max => Err(Refusal::BodyTooLarge),
        Some(_) => Ok(()),
        None => Err(Refusal::BadRequest("bad Content-Length")),
    }
}

/// The guest's request as the first hop; a body streams, capped.
fn outgoing(ctx: &Ctx, req: Request<Incoming>) -> Result<Outgoing, Refusal> {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let url = url::Url::parse(&ctx.url).map_err(|_| Refusal::BadRequest("invalid request URL"))?;
    let (parts, incoming) = req.into_parts();
    let body = if has_body {
        Limited::new(incoming, ctx.eg.policy.max_request_body as usize).boxed()
    } else {
        empty()
    };
    Ok(Outgoing {
        method: parts.method,
        url,
        headers: parts.headers,
        body,
        has_body,
    })
}

/// `onRequest` sees (and may replace, or answer) the whole request.
async fn on_request(ctx: &mut Ctx, out: &mut Outgoing) -> Result<Option<Response<Body>>, Refusal> {
    let Some(h) = ctx.eg.policy.hook(Hook::OnRequest).cloned() else {
        return Ok(None);
    };
    let bytes = if out.has_body {
        let taken = std::mem::replace(&mut out.body, empty());
        let c = taken.collect().await.map_err(|_| Refusal::BodyTooLarge)?;
        Some(c.to_bytes())
    } else {
        None
    };
    if let Some(b) = &bytes {
        out.body = full(b.clone());
    }
    let hreq = HookRequest {
        method: out.method.to_string(),
        url: out.url.to_string(),
        headers: to_pairs(&out.headers),
        body: bytes,
    };
    match h.on_request(hreq).await? {
        OnRequest::Keep => Ok(None),
        OnRequest::Respond(r) => Ok(Some(hook_response(r))),
        OnRequest::Rewrite(r) => {
            rewrite_head(ctx, out, &r, "onRequest")?;
            out.has_body = r.body.as_ref().is_some_and(|b| !b.is_empty());
            out.body = full(r.body.unwrap_or_default());
            Ok(None)
        }
    }
}

/// `onRequestHead` sees the head only, before the body is read (which then
/// streams on unbuffered unless `onRequest` exists); it may rewrite the
/// head or answer.
async fn on_request_head(
    ctx: &mut Ctx,
    out: &mut Outgoing,
) -> Result<Option<Response<Body>>, Refusal> {
    let Some(h) = ctx.eg.policy.hook(Hook::OnRequestHead).cloned() else {
        return Ok(None);
    };
    match h.on_request_head(head_view(out)).await? {
        OnRequest::Keep => Ok(None),
        OnRequest::Respond(r) => Ok(Some(hook_response(r))),
        OnRequest::Rewrite(r) => {
            rewrite_head(ctx, out, &r, "onRequestHead")?;
            Ok(None)
        }
    }
}

/// Method, URL and headers from a hook's rewritten request.
fn rewrite_head(
    ctx: &mut Ctx,
    out: &mut Outgoing,
    r: &HookRequest,
    hook: &str,
) -> Result<(), Refusal> {
    let failed = |why: String| Refusal::Hook(super::hooks::HookError::Failed(why));
    out.method = Method::from_bytes(r.method.as_bytes())
        .map_err(|_| failed(format!("{hook} returned an invalid method")))?;
    out.url = url::Url::parse(&r.url).map_err(|_| Refusal::BadRequest("invalid request URL"))?;
    out.headers = from_pairs(&r.headers).map_err(failed)?;
    // The rewritten URL names the host; Host follows it.
    if let Some(h) = out.url.host_str() {
        let auth = match out.url.port() {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&auth) {
            out.headers.insert(header::HOST, v);
        }
    }
    ctx.url = out.url.to_string();
    ctx.method = out.method.to_string();
    ctx.host = host_of(&out.url);
    Ok(())
}

/// An answer made on the host (by `onRequest`): scrubbed and recorded.
fn deliver_as_is(ctx: &Ctx, resp: Response<Body>) -> Response<Body> {
    ctx.record(
        true,
        Some("answered by onRequest"),
        resp.status().as_u16(),
        0,
    );
    let method: Method = ctx.method.parse().unwrap_or(Method::GET);
    scrub(resp, ctx.eg.policy.secrets.scrubber(), &method)
}

/// Send upstream, following redirects on the host when the request has no
/// body to replay. Every hop is admitted the same way; real secret values
/// only ever travel to their own hosts. Also says whether a real value
/// went upstream (then the response may echo one).
async fn send_following(ctx: &Ctx, out: Outgoing) -> Result<(Response<Body>, bool), Refusal> {
    let eg = &ctx.eg;
    let Outgoing {
        mut method,
        mut url,
        mut headers,
        body,
        has_body,
    } = out;
    let mut body = Some(body);
    let mut carried = false;
    for hop in 0..=MAX_REDIRECTS {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Refusal::BadRequest(
                "only http and https URLs are supported",
            ));
        }
        let host = host_of(&url);
        if hop == 0 {
            // Secrets first: a placeholder headed off its hosts is refused
            // before anything is resolved. The hooks see placeholders.
            let filled = fill_secrets(&eg.policy.secrets, &headers, &url, &host)?;
            admit(eg, hop_view(&method, &url, &headers)).await?;
            if let Some((h, u)) = filled {
                (headers, url, carried) = (h, u, true);
            }
        } else {
            refuse_real_values(eg, &url, &headers, &host)?;
            let (view_url, view_headers) = placeholder_view(eg, &url, &headers);
            admit(eg, hop_view(&method, &view_url, &view_headers)).await?;
        }
        // Decided by destination, not by this request alone: a secret's host
        // may answer with a value an earlier request stored there.
        carried |= eg.policy.secrets.serves_host(&host);
        if carried {
            // So the answer can be searched for the value (see deliver.rs):
            // whole and uncompressed, never a piece of it.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            headers.remove(header::RANGE);
        }
        let b = body.take().unwrap_or_else(empty);
        let resp = upstream::send(eg, method.clone(), &url, headers.clone(), b).await?;
        let Some(next) = redirect_target(&resp, &url, has_body) else {
            return Ok((resp, carried));
        };
        if next.origin() != url.origin() {
            headers.remove(header::AUTHORIZATION);
            headers.remove(header::COOKIE);
        }
        let next_host = host_of(&next);
        let auth = match next.port() {
            Some(p) if next_host.contains(':') => format!("[{next_host}]:{p}"),
            Some(p) => format!("{next_host}:{p}"),
            None if next_host.contains(':') => format!("[{next_host}]"),
            None => next_host,
        };
        let host_value =
            HeaderValue::from_str(&auth).map_err(|_| Refusal::Upstream("bad redirect".into()))?;
        headers.insert(header::HOST, host_value);
        if resp.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
            method = Method::GET;
        }
        url = next;
    }
    Err(Refusal::TooManyRedirects)
}

fn hop_view<'a>(method: &'a Method, url: &'a url::Url, headers: &'a HeaderMap) -> Hop<'a> {
    Hop {
        method,
        url,
        headers,
    }
}

/// Where a redirect the host should follow points (http/https only).
fn redirect_target(resp: &Response<Body>, url: &url::Url, has_body: bool) -> Option<url::Url> {
    let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
    if !redirect || has_body {
        return None;
    }
    let location = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    let next = url.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then_some(next)
}

/// Placeholders become real values (headers, and the query when enabled)
/// for the secret's hosts; anywhere else the request is refused. `None`
/// when nothing changes (and no copy without secrets).
fn fill_secrets(
    secrets: &Secrets,
    headers: &HeaderMap,
    url: &url::Url,
    host: &str,
) -> Result<Option<(HeaderMap, url::Url)>, Refusal> {
    if secrets.is_empty() {
        return Ok(None);
    }
    let refused = |e: super::secrets::Refused| Refusal::Secret(e.0);
    let (mut headers, mut url) = (headers.clone(), url.clone());
    let mut carried = false;
    for (name, v) in headers.iter_mut() {
        let Ok(s) = v.to_str() else { continue };
        let out = secrets.header(name.as_str(), s, host).map_err(refused)?;
        if out != s {
            *v = HeaderValue::from_str(&out)
                .map_err(|_| Refusal::Secret("secret value is not a valid header value".into()))?;
            carried = true;
        }
    }
    if let Some(q) = url.query().map(str::to_string) {
        let q2 = secrets.query(&q, host).map_err(refused)?;
        if q2 != q {
            url.set_query(Some(&q2));
            carried = true;
        }
    }
    Ok(carried.then_some((headers, url)))
}

/// A request's URL and header pairs, as JS holds them.
pub type RequestParts = (String, Vec<(String, String)>);

/// [`fill_secrets`] for a request held by JS (`httpHooks.onRequest` called
/// directly): the same substitution and refusals the VM applies. `Ok(None)`
/// when nothing changes; `Err` carries the refusal's message.
pub fn apply_secrets(
    secrets: &Secrets,
    url: &str,
    headers: &[(String, String)],
) -> Result<Option<RequestParts>, String> {
    let url = url::Url::parse(url).map_err(|_| format!("invalid request URL {url:?}"))?;
    let headers = from_pairs(headers)?;
    match fill_secrets(secrets, &headers, &url, &host_of(&url)) {
        Ok(None) => Ok(None),
        Ok(Some((h, u))) => Ok(Some((u.to_string(), to_pairs(&h)))),
        Err(Refusal::Secret(why)) => Err(why),
        Err(other) => Err(other.reason()),
    }
}

/// A redirect may reflect a real value (an open redirect on the secret's
/// host pointing elsewhere with `?stolen=VALUE`): the hop is refused if its
/// URL (as sent, or percent-decoded) or headers carry a real value to a
/// host outside that secret's hosts.
fn refuse_real_values(
    eg: &Egress,
    url: &url::Url,
    headers: &HeaderMap,
    host: &str,
) -> Result<(), Refusal> {
    let secrets = &eg.policy.secrets;
    if secrets.is_empty() {
        return Ok(());
    }
    let refused = |e: super::secrets::Refused| Refusal::Secret(format!("{} (redirect)", e.0));
    let decoded = percent_encoding::percent_decode_str(url.as_str()).decode_utf8_lossy();
    secrets.refuse_real(url.as_str(), host).map_err(refused)?;
    secrets.refuse_real(&decoded, host).map_err(refused)?;
    secrets
        .refuse_real(&decoded.replace('+', " "), host)
        .map_err(refused)?;
    for v in headers.values() {
        if let Ok(s) = v.to_str() {
            secrets.refuse_real(s, host).map_err(refused)?;
        }
    }
    Ok(())
}

/// What hooks see of a redirect hop: real values back to placeholders.
fn placeholder_view(eg: &Egress, url: &url::Url, headers: &HeaderMap) -> (url::Url, HeaderMap) {
    let Some(s) = eg.policy.secrets.scrubber() else {
        return (url.clone(), headers.clone());
    };
    let view_url = url::Url::parse(&s.text(url.as_str())).unwrap_or_else(|_| url.clone());
    let mut view_headers = headers.clone();
    for v in view_headers.values_mut() {
        if let Ok(text) = v.to_str() {
            if let Ok(nv) = HeaderValue::from_str(&s.text(text)) {
                *v = nv;
            }
        }
    }
    (view_url, view_headers)
}
