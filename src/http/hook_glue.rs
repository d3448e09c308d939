//! The bridge's side of the user hooks: asking them, turning their
//! answers into responses, and buffering bodies for those that need one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::hooks::{HookError, HookRequest, HookResponse, HttpHooks};
use super::refusal::{Ctx, Refusal};
use super::reply::{full, strip_hop_by_hop, Body};

pub(crate) fn to_pairs(h: &HeaderMap) -> Vec<(String, String)> {
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

/// Buffer the upstream response for `onResponse`, then send what it says
/// (the egress event is recorded here, with the final size).
pub(super) async fn on_response(
    ctx: &Ctx,
    h: Arc<dyn HttpHooks>,
    resp: Response<Body>,
    req: HookRequest,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let limit = ctx.eg.policy.max_response_body as usize;
    let bytes = collect_limited(body, limit)
        .await
        .map_err(|_| Refusal::ResponseTooLarge)?;
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
        Err(e) => return Err(e.into()),
    };
    ctx.record(
        true,
        None,
        out.status().as_u16(),
        out.body().size_hint().exact().unwrap_or(0),
    );
    Ok(out)
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
