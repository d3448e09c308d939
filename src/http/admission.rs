//! The one admission step every hop (the guest's request and each redirect
//! the host follows) goes through, in a fixed order:
//!
//! 1. the built-in host rule (`allowedHosts`),
//! 2. the built-in IP rule (internal ranges, this machine's addresses) on
//!    the addresses the name resolves to,
//! 3. the user's `isRequestAllowed`,
//! 4. the user's `isIpAllowed`, on those same addresses.
//!
//! The name is resolved once, here; the addresses that pass are handed to
//! the upstream client's dialer ([`Dialer`]), which connects to nothing
//! else. So the address the hooks judged is the address that is dialled.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::hook_glue::to_pairs;
use super::hooks::{Hook, HookRequest, IpCheck};
use super::refusal::Refusal;
use super::Egress;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Admitted destinations remembered for the dialer (cleared when full).
const PLAN_LIMIT: usize = 4096;

/// One hop, as the hooks see it: placeholders, never real values.
pub(crate) struct Hop<'a> {
    pub method: &'a Method,
    pub url: &'a url::Url,
    pub headers: &'a HeaderMap,
}

/// The lower-case host of a URL, without IPv6 brackets.
pub(crate) fn host_of(url: &url::Url) -> String {
    url.host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Admit one hop, or say why not. On success the dialer knows which
/// addresses it may connect to for this destination.
pub(crate) async fn admit(eg: &Egress, hop: Hop<'_>) -> Result<(), Refusal> {
    let host = host_of(hop.url);
    let port = hop.url.port_or_known_default().unwrap_or(80);
    let https = hop.url.scheme() == "https";
    let policy = &eg.policy;
    // 1. Built-in host rule.
    if !policy.host_allowed(&host) {
        return Err(Refusal::Host(host));
    }
    // 2. Built-in IP rule, on the one resolution. A user's `fetch` dials
    // for itself, so a name only it can resolve (a mock, its own resolver)
    // leaves no address here to judge; that is allowed only for a host the
    // allowlist names exactly, never through a wildcard, so a guest cannot
    // make its own names fail here (SERVFAIL) and resolve in the fetch.
    let fetch_dials = policy.hook(Hook::Fetch).is_some();
    let resolved = match resolve(&host, port).await {
        Err(Refusal::Unresolved(_)) if fetch_dials && policy.names_exactly(&host) => Vec::new(),
        other => other?,
    };
    let unresolved_for_fetch = resolved.is_empty();
    let mut addrs: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| policy.ip_allowed(&host, a.ip()))
        .collect();
    if addrs.is_empty() && !unresolved_for_fetch {
        return Err(Refusal::Ip(host));
    }
    // 3. The user's request rule.
    if let Some(h) = policy.hook(Hook::IsRequestAllowed) {
        let head = HookRequest {
            method: hop.method.to_string(),
            url: hop.url.to_string(),
            headers: to_pairs(hop.headers),
            body: None,
        };
        if !h.is_request_allowed(&head).await? {
            return Err(Refusal::RequestHook);
        }
    }
    // 4. The user's IP rule: the first address it allows is the one dialled.
    if let Some(h) = policy
        .hook(Hook::IsIpAllowed)
        .filter(|_| !unresolved_for_fetch)
    {
        let mut chosen = None;
        for a in &addrs {
            let info = IpCheck {
                hostname: host.clone(),
                ip: a.ip(),
                port,
                protocol: if https { "https" } else { "http" },
            };
            if h.is_ip_allowed(&info).await? {
                chosen = Some(*a);
                break;
            }
        }
        addrs = match chosen {
            Some(a) => vec![a],
            None => return Err(Refusal::Ip(host)),
        };
    }
    eg.dial_plan.set(DialKey { https, host, port }, addrs);
    Ok(())
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(a) => Ok(a.collect()),
        Err(_) => Err(Refusal::Unresolved(host.to_string())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DialKey {
    https: bool,
    host: String,
    port: u16,
}

impl DialKey {
    fn of(uri: &Uri) -> Option<DialKey> {
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(DialKey { https, host, port })
    }
}

/// The addresses the last admission of each destination allowed. Each
/// admission replaces its entry, so the dialer only ever connects to
/// addresses that passed every rule for that destination.
#[derive(Debug, Default)]
pub(crate) struct DialPlan(Mutex<HashMap<DialKey, Vec<SocketAddr>>>);

impl DialPlan {
    fn set(&self, key: DialKey, addrs: Vec<SocketAddr>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= PLAN_LIMIT && !m.contains_key(&key) {
            // Make room by one: clearing all would refuse other requests'
            // dials between their admission and their connect.
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        m.insert(key, addrs);
    }

    fn get(&self, key: &DialKey) -> Option<Vec<SocketAddr>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

/// A destination the dialer refused (its host), carried through the
/// client's errors.
#[derive(Debug)]
pub struct Blocked(pub String);
impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Blocked {}

/// The upstream client's connector: dials only what admission allowed.
#[derive(Clone)]
pub struct Dialer(pub(crate) Weak<Egress>);

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let eg = self.0.upgrade();
        Box::pin(async move {
            let eg = eg.ok_or_else(|| std::io::Error::other("the VM is gone"))?;
            let refused = |what: String| {
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, Blocked(what))
            };
            let key = DialKey::of(&uri).ok_or_else(|| refused(uri.to_string()))?;
            // Nothing admitted for this destination: refuse, never resolve.
            let addrs = eg
                .dial_plan
                .get(&key)
                .ok_or_else(|| refused(key.host.clone()))?;
            let mut last = std::io::Error::other("no address");
            for a in addrs {
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        return Ok(TokioIo::new(s));
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        last =
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                    }
                }
            }
            Err(last)
        })
    }
}
