//! The upstream side: a hyper client (rustls, system roots) that dials only
//! admitted addresses, or the user's `fetch` in its place.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::admission::{Blocked, Dialer};
use super::hook_glue::fetch_via_hook;
use super::hooks::Hook;
use super::refusal::Refusal;
use super::reply::{Body, BoxError};
use super::Egress;

pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<Dialer>, Body>;

fn tls_config() -> rustls::ClientConfig {
    static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(crate::tls::native_roots())
                .with_no_client_auth()
        })
        .clone()
}

pub(crate) fn client(egress: Weak<Egress>) -> UpstreamClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(Dialer(egress));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(16)
        .build(https)
}

/// Send one admitted hop upstream.
pub(crate) async fn send(
    eg: &Arc<Egress>,
    method: Method,
    url: &url::Url,
    headers: HeaderMap,
    body: Body,
) -> Result<Response<Body>, Refusal> {
    let mut builder = Request::builder().method(method).uri(url.as_str());
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let req = builder
        .body(body)
        .map_err(|_| Refusal::BadRequest("invalid request"))?;
    if let Some(h) = eg.policy.hook(Hook::Fetch).cloned() {
        // The user's fetch replaces the built-in client; admission stands.
        return Ok(fetch_via_hook(h, req, url.to_string()).await?);
    }
    match eg.client.request(req).await {
        Ok(r) => Ok(r.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())),
        Err(e) => Err(failure(url, &e)),
    }
}

fn failure(url: &url::Url, e: &hyper_util::client::legacy::Error) -> Refusal {
    let mut msg = String::from("upstream request failed");
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return Refusal::Ip(b.0.clone());
        }
        if let Some(b) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<Blocked>())
        {
            return Refusal::Ip(b.0.clone());
        }
        // A chunked body cut off at maxHttpBodyBytes: the same answer as
        // a Content-Length over the limit.
        if err.is::<http_body_util::LengthLimitError>() {
            return Refusal::BodyTooLarge;
        }
        msg = format!("upstream request failed: {err}");
        cur = err.source();
    }
    crate::log_limited!(debug, target: "gondolin::net", "upstream {url}: {e:?}");
    Refusal::Upstream(msg)
}
