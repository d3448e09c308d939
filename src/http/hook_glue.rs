//! The bridge's side of the user hooks: asking them, turning their
//! answers into responses, and buffering bodies for those that need one.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::bridge::{full, reply, strip_hop_by_hop, Body, Ctx};
use super::hooks::{HookError, HookRequest, HookResponse, HttpHooks, IpCheck};
use super::Egress;

/// Resolve and ask the user's `isIpAllowed` about each address (after the
/// built-in internal-range check) until one passes.
pub(super) async fn first_allowed_ip(
    h: &dyn HttpHooks,
    eg: &Arc<Egress>,
    host: &str,
    port: u16,
    scheme: &str,
) -> Result<bool, HookError> {
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.map(|a| a.ip()).collect(),
            Err(_) => return Ok(true), // the upstream request reports it
        },
    };
    for ip in addrs {
        if !eg.policy.ip_allowed(host, ip) {
            continue;
        }
        let info = IpCheck {
            hostname: host.to_string(),
            ip,
            port,
            protocol: if scheme == "https" { "https" } else { "http" },
        };
        if h.is_ip_allowed(&info).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn to_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub(super) fn from_pairs(pairs: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k}"))?;
        h.append(name, value);
    }
    Ok(h)
}

pub(super) fn hook_response(r: HookResponse) -> Response<Body> {
    let mut resp = Response::new(full(r.body));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    if let Ok(h) = from_pairs(&r.headers) {
        *resp.headers_mut() = h;
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp
}

pub(super) fn hook_failed(ctx: &Ctx, why: &str) -> Response<Body> {
    ctx.deny(StatusCode::BAD_GATEWAY, why)
}

pub(super) fn hook_error(ctx: &Ctx, e: HookError) -> Response<Body> {
    match e {
        HookError::Blocked {
            status,
            status_text,
            message,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            ctx.record(false, Some(&message), status.as_u16(), 0);
            let mut r = reply(status, &message);
            let _ = status_text;
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        HookError::Failed(m) => hook_failed(ctx, &m),
    }
}

/// Buffer the upstream response for `onResponse`, then send what it says.
pub(super) async fn on_response(
    ctx: Ctx,
    h: Arc<dyn HttpHooks>,
    resp: Response<Body>,
    req: HookRequest,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let limit = ctx.eg.policy.max_response_body as usize;
    let bytes = match collect_limited(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ctx.deny(
                StatusCode::BAD_GATEWAY,
                "response body exceeds maxHttpResponseBodyBytes",
            )
        }
    };
    let view = HookResponse {
        status: parts.status.as_u16(),
        status_text: parts.status.canonical_reason().unwrap_or("").to_string(),
        headers: to_pairs(&parts.headers),
        body: bytes.clone(),
    };
    let out = match h.on_response(view, &req).await {
        Ok(Some(r)) => hook_response(r),
        Ok(None) => {
            let mut r = Response::from_parts(parts, full(bytes));
            r.headers_mut().remove(header::CONTENT_LENGTH);
            r
        }
        Err(e) => return hook_error(&ctx, e),
    };
    ctx.record(
        true,
        None,
        out.status().as_u16(),
        out.body().size_hint().exact().unwrap_or(0),
    );
    out
}

/// Buffer a body up to `limit` bytes (`Err` beyond it, or on a body error).
pub(super) fn collect_limited(
    mut body: Body,
    limit: usize,
) -> Pin<Box<dyn Future<Output = Result<Bytes, ()>> + Send>> {
    Box::pin(async move {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ())?;
            if let Some(d) = frame.data_ref() {
                if buf.len() + d.len() > limit {
                    return Err(());
                }
                buf.extend_from_slice(d);
            }
        }
        Ok(buf.freeze())
    })
}

/// Hand the request to the user's fetch (type-erased future: keeps the
/// caller's future `Send` for every lifetime).
pub(super) fn fetch_via_hook(
    h: Arc<dyn HttpHooks>,
    req: Request<Body>,
    url: String,
) -> Pin<Box<dyn Future<Output = Result<Response<Body>, HookError>> + Send>> {
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|_| HookError::Blocked {
                status: 413,
                status_text: "Payload Too Large".into(),
                message: "request body exceeds maxHttpBodyBytes".into(),
            })?
            .to_bytes();
        let hreq = HookRequest {
            method: parts.method.to_string(),
            url,
            headers: to_pairs(&parts.headers),
            body: (!bytes.is_empty()).then_some(bytes),
        };
        h.fetch(hreq).await.map(hook_response)
    })
}
