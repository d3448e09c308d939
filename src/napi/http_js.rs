//! HTTP hooks written in JavaScript, seen from Rust as [`HttpHooks`].
//!
//! Every call goes through one [`JsCallback`] to a JS dispatcher
//! (`js/net.cjs`) that builds WHATWG `Request`/`Response` objects, runs the
//! user's hook and always resolves (errors become outcomes), so a throwing
//! or wrongly-typed hook fails its own request only.

use std::sync::Arc;

use async_trait::async_trait;
use napi::bindgen_prelude::{Buffer, Promise};
use napi_derive::napi;

use super::js_callback::{boundary_enum, Component, JsCallback};

use gondolin::http::hooks::{
    Hook, HookError, HookRequest, HookResponse, HttpHooks, IpCheck, OnRequest,
};

boundary_enum! {
    /// The HTTP hooks JS may supply (upstream's `httpHooks` members plus
    /// `fetch`): the names `startVm` accepts and `HttpHookCall.hook` carries.
    HttpHook {
        IsRequestAllowed = "isRequestAllowed",
        IsIpAllowed = "isIpAllowed",
        OnRequestHead = "onRequestHead",
        OnRequest = "onRequest",
        OnResponse = "onResponse",
        Fetch = "fetch",
    }
}

impl From<HttpHook> for Hook {
    fn from(h: HttpHook) -> Hook {
        match h {
            HttpHook::IsRequestAllowed => Hook::IsRequestAllowed,
            HttpHook::IsIpAllowed => Hook::IsIpAllowed,
            HttpHook::OnRequestHead => Hook::OnRequestHead,
            HttpHook::OnRequest => Hook::OnRequest,
            HttpHook::OnResponse => Hook::OnResponse,
            HttpHook::Fetch => Hook::Fetch,
        }
    }
}

boundary_enum! {
    /// What a hook's outcome says.
    HookAction {
        /// isRequestAllowed / isIpAllowed: yes.
        Allow = "allow",
        /// isRequestAllowed / isIpAllowed: no.
        Deny = "deny",
        /// Leave the request or response as it is.
        Keep = "keep",
        /// Replace the request with the outcome's method/url/headers/body.
        Request = "request",
        /// Answer with the outcome's status/headers/body.
        Response = "response",
        /// The hook threw `HttpRequestBlockedError`: refuse with `status`.
        Blocked = "blocked",
        /// The hook threw anything else: the request fails with `message`.
        Error = "error",
    }
}

#[napi(object)]
pub struct HttpHookCall {
    pub hook: HttpHook,
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: Option<Vec<Vec<String>>>,
    pub body: Option<Buffer>,
    pub status: Option<u32>,
    pub status_text: Option<String>,
    pub response_headers: Option<Vec<Vec<String>>>,
    pub response_body: Option<Buffer>,
    pub hostname: Option<String>,
    pub ip: Option<String>,
    pub family: Option<u32>,
    pub port: Option<u32>,
    pub protocol: Option<String>,
}

#[napi(object)]
pub struct HttpHookOutcome {
    pub action: HookAction,
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: Option<Vec<Vec<String>>>,
    pub body: Option<Buffer>,
    pub status: Option<u32>,
    pub status_text: Option<String>,
    pub message: Option<String>,
}

/// `(call) => Promise<HttpHookOutcome>`.
pub type HttpDispatch = JsCallback<HttpHookCall, Promise<HttpHookOutcome>>;

pub struct JsHttpHooks {
    dispatch: Arc<HttpDispatch>,
    present: Vec<Hook>,
}

impl JsHttpHooks {
    pub fn new(dispatch: HttpDispatch, names: &[HttpHook]) -> Self {
        let present = names.iter().map(|&h| Hook::from(h)).collect();
        JsHttpHooks {
            dispatch: Arc::new(dispatch),
            present,
        }
    }

    async fn call(&self, call: HttpHookCall) -> Result<HttpHookOutcome, HookError> {
        let hook = call.hook.as_str();
        let out = self
            .dispatch
            .call(Component::Net, hook, call)
            .await
            .map_err(|e| HookError::Failed(e.to_string()))?;
        match out.action {
            HookAction::Blocked => Err(HookError::Blocked {
                status: out.status.unwrap_or(403).clamp(100, 599) as u16,
                status_text: out.status_text.unwrap_or_default(),
                message: out.message.unwrap_or_else(|| "request blocked".into()),
            }),
            HookAction::Error => Err(HookError::Failed(format!(
                "{hook} failed: {}",
                out.message.unwrap_or_default()
            ))),
            _ => Ok(out),
        }
    }
}

fn pairs_to_js(h: &[(String, String)]) -> Vec<Vec<String>> {
    h.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect()
}

fn pairs_from_js(h: Option<Vec<Vec<String>>>) -> Vec<(String, String)> {
    h.unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p.as_slice() {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

impl HttpHookCall {
    fn new(hook: HttpHook) -> Self {
        HttpHookCall {
            hook,
            method: None,
            url: None,
            headers: None,
            body: None,
            status: None,
            status_text: None,
            response_headers: None,
            response_body: None,
            hostname: None,
            ip: None,
            family: None,
            port: None,
            protocol: None,
        }
    }
}

fn request_call(hook: HttpHook, r: &HookRequest) -> HttpHookCall {
    HttpHookCall {
        method: Some(r.method.clone()),
        url: Some(r.url.clone()),
        headers: Some(pairs_to_js(&r.headers)),
        body: r.body.as_ref().map(|b| Buffer::from(b.to_vec())),
        ..HttpHookCall::new(hook)
    }
}

fn response_from(out: HttpHookOutcome) -> HookResponse {
    HookResponse {
        status: out.status.unwrap_or(200).clamp(100, 599) as u16,
        status_text: out.status_text.unwrap_or_default(),
        headers: pairs_from_js(out.headers),
        body: out.body.map(|b| b.to_vec().into()).unwrap_or_default(),
    }
}

fn on_request_outcome(out: HttpHookOutcome, req: HookRequest) -> OnRequest {
    match out.action {
        HookAction::Request => OnRequest::Rewrite(HookRequest {
            method: out.method.unwrap_or(req.method),
            url: out.url.unwrap_or(req.url),
            headers: pairs_from_js(out.headers),
            body: out.body.map(|b| b.to_vec().into()),
        }),
        HookAction::Response => OnRequest::Respond(response_from(out)),
        _ => OnRequest::Keep,
    }
}

#[async_trait]
impl HttpHooks for JsHttpHooks {
    fn has(&self, hook: Hook) -> bool {
        self.present.contains(&hook)
    }

    async fn is_request_allowed(&self, head: &HookRequest) -> Result<bool, HookError> {
        let out = self
            .call(request_call(HttpHook::IsRequestAllowed, head))
            .await?;
        Ok(out.action == HookAction::Allow)
    }

    async fn is_ip_allowed(&self, info: &IpCheck) -> Result<bool, HookError> {
        let out = self
            .call(HttpHookCall {
                hostname: Some(info.hostname.clone()),
                ip: Some(info.ip.to_string()),
                family: Some(if info.ip.is_ipv4() { 4 } else { 6 }),
                port: Some(info.port.into()),
                protocol: Some(info.protocol.into()),
                ..HttpHookCall::new(HttpHook::IsIpAllowed)
            })
            .await?;
        Ok(out.action == HookAction::Allow)
    }

    async fn on_request_head(&self, head: HookRequest) -> Result<OnRequest, HookError> {
        let out = self
            .call(request_call(HttpHook::OnRequestHead, &head))
            .await?;
        Ok(on_request_outcome(out, head))
    }

    async fn on_request(&self, req: HookRequest) -> Result<OnRequest, HookError> {
        let out = self.call(request_call(HttpHook::OnRequest, &req)).await?;
        Ok(on_request_outcome(out, req))
    }

    async fn on_response(
        &self,
        resp: HookResponse,
        req: &HookRequest,
    ) -> Result<Option<HookResponse>, HookError> {
        let mut call = request_call(HttpHook::OnResponse, req);
        call.status = Some(resp.status.into());
        call.status_text = Some(resp.status_text.clone());
        call.response_headers = Some(pairs_to_js(&resp.headers));
        call.response_body = Some(Buffer::from(resp.body.to_vec()));
        let out = self.call(call).await?;
        Ok((out.action == HookAction::Response).then(|| response_from(out)))
    }

    async fn fetch(&self, req: HookRequest) -> Result<HookResponse, HookError> {
        let out = self.call(request_call(HttpHook::Fetch, &req)).await?;
        if out.action != HookAction::Response {
            return Err(HookError::Failed("fetch must resolve to a Response".into()));
        }
        Ok(response_from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_js_hook_name_maps_to_its_own_core_hook() {
        let hooks: Vec<Hook> = HttpHook::ALL.iter().map(|&h| h.into()).collect();
        for (i, h) in hooks.iter().enumerate() {
            assert!(!hooks[i + 1..].contains(h), "{h:?} twice");
        }
        assert_eq!(HttpHook::OnRequestHead.as_str(), "onRequestHead");
        assert_eq!(HookAction::Blocked.as_str(), "blocked");
    }
}
