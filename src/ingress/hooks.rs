//! What the user decides per ingress request ([`IngressHooks`]), with
//! upstream's shapes: `isAllowed(info)`, `onRequest(request)` returning a
//! patch, `onResponse(response, request)` returning a patch. JS hooks
//! implement this trait in `src/napi/ingress.rs`.

use async_trait::async_trait;
use bytes::Bytes;

use super::listeners::Route;

/// Headers with lowercased names; a repeated header is repeated pairs.
pub type Headers = Vec<(String, String)>;

/// A header patch: a name → new values, or `None` to delete it.
pub type HeaderPatch = Vec<(String, Option<Vec<String>>)>;

/// What `isAllowed` sees.
#[derive(Debug, Clone)]
pub struct AllowInfo {
    pub client_ip: String,
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    pub headers: Headers,
    pub route: Route,
}

/// The request as it will go to the guest (`onRequest`, `onResponse`).
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub route: Route,
    pub backend_host: String,
    pub backend_port: u16,
    /// Path and query after the prefix was stripped.
    pub backend_target: String,
    pub headers: Headers,
}

/// Changes `onRequest` asks for; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct RequestPatch {
    pub method: Option<String>,
    /// Must stay `127.0.0.1` or `localhost`.
    pub backend_host: Option<String>,
    pub backend_port: Option<u16>,
    /// Must start with `/`.
    pub backend_target: Option<String>,
    pub headers: HeaderPatch,
    pub buffer_response_body: Option<bool>,
    pub max_buffered_response_body_bytes: Option<u64>,
}

/// The guest's response as `onResponse` sees it; `body` only when buffered.
#[derive(Debug, Clone)]
pub struct HookResponse {
    pub status: u16,
    pub status_message: String,
    pub headers: Headers,
    pub body: Option<Bytes>,
}

/// Changes `onResponse` asks for. A `body` replaces the guest's (sent with
/// an explicit content-length).
#[derive(Debug, Clone, Default)]
pub struct ResponsePatch {
    pub status: Option<u16>,
    pub status_message: Option<String>,
    pub headers: HeaderPatch,
    pub body: Option<Bytes>,
}

/// Why a hook produced no decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HookError {
    /// The hook threw `IngressRequestBlockedError`: answer with this.
    #[error("request blocked: {status} {status_message}")]
    Blocked {
        status: u16,
        status_message: String,
        body: String,
    },
    /// It threw anything else (answered 502, details only in debug logs).
    #[error("{0}")]
    Failed(String),
}

/// The ingress hooks. `has_*` says which exist, so the gateway skips the
/// rest (and buffers nothing without `onResponse`).
#[async_trait]
pub trait IngressHooks: Send + Sync {
    fn has_is_allowed(&self) -> bool;
    fn has_on_request(&self) -> bool;
    fn has_on_response(&self) -> bool;
    async fn is_allowed(&self, info: AllowInfo) -> Result<bool, HookError>;
    async fn on_request(&self, req: HookRequest) -> Result<Option<RequestPatch>, HookError>;
    async fn on_response(
        &self,
        resp: HookResponse,
        req: HookRequest,
    ) -> Result<Option<ResponsePatch>, HookError>;
}

/// Apply a patch: each named header is replaced by its values, or removed.
pub fn apply_header_patch(headers: &mut Headers, patch: &HeaderPatch) {
    for (name, values) in patch {
        let name = name.to_ascii_lowercase();
        headers.retain(|(k, _)| *k != name);
        if let Some(values) = values {
            headers.extend(values.iter().map(|v| (name.clone(), v.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_patch_replaces_and_deletes() {
        let mut h: Headers = vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ];
        apply_header_patch(
            &mut h,
            &vec![
                ("A".into(), Some(vec!["x".into(), "y".into()])),
                ("b".into(), None),
                ("c".into(), Some(vec!["z".into()])),
            ],
        );
        assert_eq!(
            h,
            vec![
                ("a".to_string(), "x".to_string()),
                ("a".into(), "y".into()),
                ("c".into(), "z".into())
            ]
        );
    }
}
