//! HTTP hooks written in JavaScript, seen from Rust as [`HttpHooks`].
//!
//! Every call goes through one weak threadsafe function to a JS dispatcher
//! (`js/net.cjs`) that builds WHATWG `Request`/`Response` objects, runs the
//! user's hook and always resolves (errors become outcomes), so a throwing
//! or wrongly-typed hook fails its own request only.

use std::sync::Arc;

use async_trait::async_trait;
use napi::bindgen_prelude::{Buffer, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;
use napi_derive::napi;

use gondolin::http::hooks::{
    Hook, HookError, HookRequest, HookResponse, HttpHooks, IpCheck, OnRequest,
};

#[napi(object)]
#[derive(Default)]
pub struct HttpHookCall {
    /// "isRequestAllowed" | "isIpAllowed" | "onRequestHead" | "onRequest" |
    /// "onResponse" | "fetch"
    pub hook: String,
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
    /// "allow" | "deny" | "keep" | "request" | "response" | "blocked" | "error"
    pub action: String,
    pub method: Option<String>,
    pub url: Option<String>,
    pub headers: Option<Vec<Vec<String>>>,
    pub body: Option<Buffer>,
    pub status: Option<u32>,
    pub status_text: Option<String>,
    pub message: Option<String>,
}

pub type HttpDispatch =
    ThreadsafeFunction<HttpHookCall, Promise<HttpHookOutcome>, HttpHookCall, Status, false, true>;

pub struct JsHttpHooks {
    dispatch: Arc<HttpDispatch>,
    present: Vec<Hook>,
}

impl JsHttpHooks {
    pub fn new(dispatch: HttpDispatch, names: &[String]) -> Self {
        let present = names
            .iter()
            .filter_map(|n| match n.as_str() {
                "isRequestAllowed" => Some(Hook::IsRequestAllowed),
                "isIpAllowed" => Some(Hook::IsIpAllowed),
                "onRequestHead" => Some(Hook::OnRequestHead),
                "onRequest" => Some(Hook::OnRequest),
                "onResponse" => Some(Hook::OnResponse),
                "fetch" => Some(Hook::Fetch),
                _ => None,
            })
            .collect();
        JsHttpHooks {
            dispatch: Arc::new(dispatch),
            present,
        }
    }

    async fn call(&self, call: HttpHookCall) -> Result<HttpHookOutcome, HookError> {
        let hook = call.hook.clone();
        let promise = self
            .dispatch
            .call_async(call)
            .await
            .map_err(|e| HookError::Failed(format!("{hook} could not be called: {e}")))?;
        let out = promise
            .await
            .map_err(|e| HookError::Failed(format!("{hook} failed: {e}")))?;
        match out.action.as_str() {
            "blocked" => Err(HookError::Blocked {
                status: out.status.unwrap_or(403).clamp(100, 599) as u16,
                status_text: out.status_text.unwrap_or_default(),
                message: out.message.unwrap_or_else(|| "request blocked".into()),
            }),
            "error" => Err(HookError::Failed(format!(
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

fn request_call(hook: &str, r: &HookRequest) -> HttpHookCall {
    HttpHookCall {
        hook: hook.into(),
        method: Some(r.method.clone()),
        url: Some(r.url.clone()),
        headers: Some(pairs_to_js(&r.headers)),
        body: r.body.as_ref().map(|b| Buffer::from(b.to_vec())),
        ..Default::default()
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
    match out.action.as_str() {
        "request" => OnRequest::Rewrite(HookRequest {
            method: out.method.unwrap_or(req.method),
            url: out.url.unwrap_or(req.url),
            headers: pairs_from_js(out.headers),
            body: out.body.map(|b| b.to_vec().into()),
        }),
        "response" => OnRequest::Respond(response_from(out)),
        _ => OnRequest::Keep,
    }
}

#[async_trait]
impl HttpHooks for JsHttpHooks {
    fn has(&self, hook: Hook) -> bool {
        self.present.contains(&hook)
    }

    async fn is_request_allowed(&self, head: &HookRequest) -> Result<bool, HookError> {
        let out = self.call(request_call("isRequestAllowed", head)).await?;
        Ok(out.action == "allow")
    }

    async fn is_ip_allowed(&self, info: &IpCheck) -> Result<bool, HookError> {
        let out = self
            .call(HttpHookCall {
                hook: "isIpAllowed".into(),
                hostname: Some(info.hostname.clone()),
                ip: Some(info.ip.to_string()),
                family: Some(if info.ip.is_ipv4() { 4 } else { 6 }),
                port: Some(info.port.into()),
                protocol: Some(info.protocol.into()),
                ..Default::default()
            })
            .await?;
        Ok(out.action == "allow")
    }

    async fn on_request_head(&self, head: HookRequest) -> Result<OnRequest, HookError> {
        let out = self.call(request_call("onRequestHead", &head)).await?;
        Ok(on_request_outcome(out, head))
    }

    async fn on_request(&self, req: HookRequest) -> Result<OnRequest, HookError> {
        let out = self.call(request_call("onRequest", &req)).await?;
        Ok(on_request_outcome(out, req))
    }

    async fn on_response(
        &self,
        resp: HookResponse,
        req: &HookRequest,
    ) -> Result<Option<HookResponse>, HookError> {
        let mut call = request_call("onResponse", req);
        call.status = Some(resp.status.into());
        call.status_text = Some(resp.status_text.clone());
        call.response_headers = Some(pairs_to_js(&resp.headers));
        call.response_body = Some(Buffer::from(resp.body.to_vec()));
        let out = self.call(call).await?;
        Ok((out.action == "response").then(|| response_from(out)))
    }

    async fn fetch(&self, req: HookRequest) -> Result<HookResponse, HookError> {
        let out = self.call(request_call("fetch", &req)).await?;
        if out.action != "response" {
            return Err(HookError::Failed("fetch must resolve to a Response".into()));
        }
        Ok(response_from(out))
    }
}
