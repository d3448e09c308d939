//! User hooks on the HTTP path (written in JS, adapted in `src/napi/`).
//!
//! When a hook needs a body it gets the whole body, buffered up to the
//! configured limit; requests and responses that no hook looks at stream.

use std::net::IpAddr;

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct HookRequest {
    pub method: String,
    /// Absolute: `scheme://authority/path?query`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// `None`: no body, or a head-only view.
    pub body: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct HookResponse {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct IpCheck {
    pub hostname: String,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
}

#[derive(Debug)]
pub enum OnRequest {
    Keep,
    Rewrite(HookRequest),
    /// Answer the guest directly; nothing goes upstream.
    Respond(HookResponse),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookError {
    /// `HttpRequestBlockedError`: the guest gets this status.
    Blocked {
        status: u16,
        status_text: String,
        message: String,
    },
    /// The hook threw or returned something unusable: 502 for this request.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    IsRequestAllowed,
    IsIpAllowed,
    /// Head only, before the body is read.
    OnRequestHead,
    OnRequest,
    OnResponse,
    /// A user-supplied upstream client instead of the built-in one.
    Fetch,
}

#[async_trait]
pub trait HttpHooks: Send + Sync {
    /// Which hooks exist (the others are never called).
    fn has(&self, hook: Hook) -> bool;
    // Each default is what an absent hook means; only hooks `has` reports
    // are called, so an implementation writes just the ones it has.
    async fn is_request_allowed(&self, head: &HookRequest) -> Result<bool, HookError> {
        let _ = head;
        Ok(true)
    }
    async fn is_ip_allowed(&self, info: &IpCheck) -> Result<bool, HookError> {
        let _ = info;
        Ok(true)
    }
    /// The request head (no body) before the body is read; a rewrite keeps
    /// the body.
    async fn on_request_head(&self, head: HookRequest) -> Result<OnRequest, HookError> {
        let _ = head;
        Ok(OnRequest::Keep)
    }
    async fn on_request(&self, req: HookRequest) -> Result<OnRequest, HookError> {
        let _ = req;
        Ok(OnRequest::Keep)
    }
    async fn on_response(
        &self,
        resp: HookResponse,
        req: &HookRequest,
    ) -> Result<Option<HookResponse>, HookError> {
        let _ = (resp, req);
        Ok(None)
    }
    /// Perform the (policy-checked, secrets-filled) request upstream.
    async fn fetch(&self, req: HookRequest) -> Result<HookResponse, HookError> {
        let _ = req;
        Err(HookError::Failed("no fetch hook".into()))
    }
}

impl std::fmt::Debug for dyn HttpHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpHooks")
    }
}
