//! The response on its way back to the guest: real secret values turned
//! back into placeholders, hop-by-hop headers dropped, WebSocket upgrades
//! joined, and the egress event recorded with the byte count.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::{Method, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::refusal::{Ctx, Refusal};
use super::reply::{empty, strip_hop_by_hop, Body, BoxError};
use super::scrub::{ScrubBody, Scrubber};

/// A compressed body cannot be searched for real values without decoding
/// it; the host asks for `identity` whenever a request carries one, and
/// refuses a compressed answer to such a request rather than pass on
/// something it could not check.
pub(crate) fn refuse_unreadable(
    resp: &Response<Body>,
    carried_secret: bool,
) -> Result<(), Refusal> {
    let encoded = resp
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if carried_secret && encoded {
        return Err(Refusal::Upstream(
            "compressed response from a secret's host (it could not be checked for real values)"
                .into(),
        ));
    }
    Ok(())
}

/// Real values in headers and body become placeholders (nothing to do,
/// and no copy, when there are no secrets).
pub(crate) fn scrub(
    resp: Response<Body>,
    scrubber: Option<Arc<Scrubber>>,
    method: &Method,
) -> Response<Body> {
    let Some(s) = scrubber else { return resp };
    let (mut parts, body) = resp.into_parts();
    s.headers(&mut parts.headers);
    let bodiless = *method == Method::HEAD
        || parts.status.is_informational()
        || matches!(parts.status.as_u16(), 204 | 304);
    if bodiless {
        return Response::from_parts(parts, body);
    }
    // Placeholders and values differ in length.
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, ScrubBody::new(body, s).boxed())
}

pub(crate) fn respond(
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
            return Response::from_parts(parts, empty());
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
