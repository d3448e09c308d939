//! Every reason a guest request does not go (or come back) through, mapped
//! to the status the guest sees and the egress event the host records, in
//! one place.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::hooks::HookError;
use super::reply::{reply, Body};
use super::{Egress, EgressEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Malformed request (400).
    BadRequest(&'static str),
    /// The request names two different hosts (421): Host vs. an
    /// absolute-form target, or Host vs. the TLS server name.
    Misdirected(&'static str),
    /// CONNECT, TRACE, TRACK (405).
    Method(String),
    /// Upgrades other than WebSocket, or WebSocket when turned off (501).
    Upgrade,
    /// The request body exceeds `maxHttpBodyBytes` (413).
    BodyTooLarge,
    /// The built-in host rule (403).
    Host(String),
    /// The built-in IP rule, or `isIpAllowed` for every address (403).
    Ip(String),
    /// The user's `isRequestAllowed` (403).
    RequestHook,
    /// A secret (placeholder or real value) headed outside its hosts (403).
    Secret(String),
    /// A user hook threw `HttpRequestBlockedError` (its status) or failed (502).
    Hook(HookError),
    /// The host could not resolve the name (502).
    Unresolved(String),
    /// Upstream failed, or answered in a way we cannot pass on (502).
    Upstream(String),
    /// The response body exceeds `maxHttpResponseBodyBytes` (502).
    ResponseTooLarge,
    TooManyRedirects,
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        use Refusal::*;
        match self {
            BadRequest(_) => StatusCode::BAD_REQUEST,
            Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Upgrade => StatusCode::NOT_IMPLEMENTED,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Host(_) | Ip(_) | RequestHook | Secret(_) => StatusCode::FORBIDDEN,
            Hook(HookError::Blocked { status, .. }) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
            Hook(HookError::Failed(_)) | Unresolved(_) | Upstream(_) | ResponseTooLarge => {
                StatusCode::BAD_GATEWAY
            }
            TooManyRedirects => StatusCode::LOOP_DETECTED,
        }
    }

    pub(crate) fn reason(&self) -> String {
        use Refusal::*;
        match self {
            BadRequest(why) | Misdirected(why) => why.to_string(),
            Method(m) => format!("{m} is not allowed"),
            Upgrade => "upgrades other than WebSocket (when allowed) are not supported".into(),
            BodyTooLarge => "request body exceeds maxHttpBodyBytes".into(),
            Host(h) | Ip(h) => format!("blocked by policy: {h}"),
            RequestHook => "blocked by request policy".into(),
            Secret(why) | Upstream(why) => why.clone(),
            Hook(HookError::Blocked { message, .. }) => message.clone(),
            Hook(HookError::Failed(why)) => why.clone(),
            Unresolved(h) => format!("upstream request failed: cannot resolve {h}"),
            ResponseTooLarge => "response body exceeds maxHttpResponseBodyBytes".into(),
            TooManyRedirects => "too many redirects".into(),
        }
    }
}

impl From<HookError> for Refusal {
    fn from(e: HookError) -> Self {
        Refusal::Hook(e)
    }
}

/// One guest request, for its audit record.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) eg: Arc<Egress>,
    pub(crate) method: String,
    /// As the guest sent it (placeholders, never real values).
    pub(crate) url: String,
    pub(crate) host: String,
    pub(crate) protocol: &'static str,
}

impl Ctx {
    /// One audit record for this request.
    pub(crate) fn record(&self, allowed: bool, reason: Option<&str>, status: u16, bytes: u64) {
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

    /// The guest's answer to a refusal, recorded.
    pub(crate) fn refuse(&self, r: Refusal) -> Response<Body> {
        let status = r.status();
        // A reason can quote what upstream sent (a redirect's host, an
        // error): it goes to the guest, so never with a real value in it.
        let reason = r.reason();
        let reason = match self.eg.policy.secrets.scrubber() {
            Some(s) => s.text(&reason).into_owned(),
            None => reason,
        };
        self.record(false, Some(&reason), status.as_u16(), 0);
        reply(status, &reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (Refusal::BadRequest("more than one Host header"), 400),
            (Refusal::Misdirected("x"), 421),
            (Refusal::Method("TRACE".into()), 405),
            (Refusal::BodyTooLarge, 413),
            (Refusal::Host("a".into()), 403),
            (Refusal::Ip("a".into()), 403),
            (Refusal::RequestHook, 403),
            (Refusal::Upgrade, 501),
            (
                Refusal::Hook(HookError::Blocked {
                    status: 451,
                    status_text: String::new(),
                    message: "m".into(),
                }),
                451,
            ),
            (Refusal::Hook(HookError::Failed("f".into())), 502),
            (Refusal::TooManyRedirects, 508),
        ];
        for (r, s) in cases {
            assert_eq!(r.status().as_u16(), s, "{r:?}");
        }
        assert_eq!(
            Refusal::Method("TRACE".into()).reason(),
            "TRACE is not allowed"
        );
    }
}
