//! Egress: every guest TCP flow is classified, then HTTP (plain, or inside
//! a TLS session the host terminates with a minted certificate) is parsed
//! by hyper, checked against the policy, has its secrets filled in, and is
//! replayed upstream by a hyper client. Anything else is reset.

mod admission;
mod bridge;
pub mod classify;
mod deliver;
mod hook_glue;
pub mod hooks;
pub mod policy;
mod refusal;
mod reply;
pub(crate) use reply::strip_hop_by_hop;
pub mod scrub;
pub mod secrets;
pub mod tcp_map;
mod upstream;

use std::net::{IpAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::log_limited;
use crate::net::{dns::DnsServer, Flow, FlowHandler};
use crate::tls::MitmCa;
use classify::{classify_on, Kind, SNIFF_LIMIT};
use policy::{any_match, is_internal, is_own_address, HostPattern};
use secrets::Secrets;

pub use bridge::apply_secrets;
pub use upstream::UpstreamClient;

/// How long a new flow may take to say what it is.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream requests in flight per VM.
pub const MAX_UPSTREAM: usize = 128;

/// What the guest may reach, decided on the host.
#[derive(Debug)]
pub struct Policy {
    /// `None` = every host.
    pub allowed_hosts: Option<Vec<HostPattern>>,
    /// May resolve to internal addresses; implicitly allowed.
    pub allowed_internal: Vec<HostPattern>,
    pub block_internal: bool,
    pub secrets: Arc<Secrets>,
    pub allow_websockets: bool,
    pub max_request_body: u64,
    /// Bodies buffered for `onResponse` are capped here (then 502).
    pub max_response_body: u64,
    pub hooks: Option<Arc<dyn hooks::HttpHooks>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_hosts: None,
            allowed_internal: Vec::new(),
            block_internal: true,
            secrets: Arc::new(Secrets::default()),
            allow_websockets: true,
            max_request_body: 64 * 1024 * 1024,
            max_response_body: 64 * 1024 * 1024,
            hooks: None,
        }
    }
}

impl Policy {
    pub fn host_allowed(&self, host: &str) -> bool {
        match &self.allowed_hosts {
            None => true,
            Some(list) => any_match(list, host) || any_match(&self.allowed_internal, host),
        }
    }

    /// The built-in IP rule: internal ranges (including IPv6 forms that
    /// embed an internal IPv4 address) and this machine's own addresses.
    /// Whether `allowedHosts` (or `allowedInternalHosts`) lists `host`
    /// itself, not through a wildcard.
    pub fn names_exactly(&self, host: &str) -> bool {
        let exact = |list: &[HostPattern]| list.iter().any(|p| p.as_str() == host);
        self.allowed_hosts.as_deref().is_some_and(exact) || exact(&self.allowed_internal)
    }

    pub fn ip_allowed(&self, host: &str, ip: IpAddr) -> bool {
        let internal = is_internal(ip) || is_own_address(ip);
        !(self.block_internal && internal && !any_match(&self.allowed_internal, host))
    }

    fn hook(&self, which: hooks::Hook) -> Option<&Arc<dyn hooks::HttpHooks>> {
        self.hooks.as_ref().filter(|h| h.has(which))
    }
}

/// One audit record per request (or refused flow).
#[derive(Debug, Clone)]
pub struct EgressEvent {
    pub protocol: &'static str,
    pub host: String,
    pub method: String,
    /// As the guest sent it: placeholders, never secrets.
    pub url: String,
    pub allowed: bool,
    pub reason: Option<String>,
    pub status: Option<u16>,
    /// Response body bytes sent to the guest.
    pub bytes: u64,
}

pub struct Egress {
    pub policy: Policy,
    ca: Arc<MitmCa>,
    dns: Arc<DnsServer>,
    client: UpstreamClient,
    /// What admission allowed the client to dial.
    dial_plan: admission::DialPlan,
    events: Option<mpsc::Sender<EgressEvent>>,
    upstream: Arc<tokio::sync::Semaphore>,
    /// Mapped TCP (`tcp.hosts`): the table and the flow cap.
    tcp: tcp_map::Mapped,
    /// SSH egress (`ssh`): its config, host key and caps.
    ssh: crate::ssh::SshEgress,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Egress {
    pub fn new(
        policy: Policy,
        ca: Arc<MitmCa>,
        dns: Arc<DnsServer>,
        events: Option<mpsc::Sender<EgressEvent>>,
    ) -> Arc<Egress> {
        Arc::new_cyclic(|me: &std::sync::Weak<Egress>| Egress {
            policy,
            ca,
            dns,
            client: upstream::client(me.clone()),
            dial_plan: admission::DialPlan::default(),
            events,
            upstream: Arc::new(tokio::sync::Semaphore::new(MAX_UPSTREAM)),
            tcp: tcp_map::Mapped::default(),
            ssh: crate::ssh::SshEgress::default(),
        })
    }

    pub(crate) fn event(&self, e: EgressEvent) {
        if let Some(tx) = &self.events {
            // Auditing never slows the guest: a full queue drops records.
            let _ = tx.try_send(e);
        }
    }

    async fn serve_flow(self: Arc<Self>, flow: Flow) {
        // Mapped TCP (`tcp.hosts`) is decided before sniffing: raw bytes.
        if let Some(route) = self.tcp.route(&self.dns, flow.dst) {
            return tcp_map::serve(self, flow, route).await;
        }
        let Flow {
            dst,
            src,
            mut stream,
        } = flow;
        let ssh_port = self.ssh.is_ssh_port(dst.port()); // SSH egress
        let mut buf = BytesMut::with_capacity(1024);
        let kind = tokio::time::timeout(SNIFF_TIMEOUT, async {
            loop {
                match classify_on(&buf, ssh_port) {
                    Kind::Undecided => {}
                    k => return k,
                }
                if buf.len() >= SNIFF_LIMIT {
                    return Kind::Deny("sniff-limit-exceeded");
                }
                let mut chunk = [0u8; 2048];
                let want = chunk.len().min(SNIFF_LIMIT - buf.len());
                match stream.read(&mut chunk[..want]).await {
                    Ok(0) | Err(_) => return Kind::Deny("closed"),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .unwrap_or(Kind::Deny("sniff-timeout"));
        let io = Rewind {
            prefix: buf.freeze(),
            inner: stream,
        };
        match kind {
            Kind::Http => bridge::serve(self, io, None, dst).await,
            Kind::Tls => self.serve_tls(io, dst).await,
            Kind::Ssh => self.serve_ssh(io, src, dst).await, // SSH egress
            Kind::Deny(reason) => {
                if reason != "closed" {
                    log_limited!(debug, target: "gondolin::net", %dst, reason, "refused flow");
                    self.event(EgressEvent {
                        protocol: "tcp",
                        host: dst.to_string(),
                        method: String::new(),
                        url: String::new(),
                        allowed: false,
                        reason: Some(reason.to_string()),
                        status: None,
                        bytes: 0,
                    });
                }
                io.inner.reset();
            }
            Kind::Undecided => unreachable!("classification loop returns a decision"),
        }
    }

    // --- SSH egress ---
    /// Install the VM's `ssh` config (before the VM starts; once).
    pub fn set_ssh(&self, config: Arc<crate::ssh::SshConfig>) {
        self.ssh.set(config);
    }

    async fn serve_ssh(self: Arc<Self>, io: Rewind, src: SocketAddrV4, dst: SocketAddrV4) {
        let label = match self.dns.name_for(*dst.ip()) {
            Some(n) => format!("{n}:{}", dst.port()),
            None => dst.to_string(),
        };
        let refuse = |reason: String| {
            log_limited!(debug, target: "gondolin::net", %dst, reason, "refused ssh flow");
            self.event(EgressEvent {
                protocol: "ssh",
                host: label.clone(),
                method: String::new(),
                url: String::new(),
                allowed: false,
                reason: Some(reason),
                status: None,
                bytes: 0,
            });
        };
        let Some(route) = self.ssh.route(&self.dns, dst) else {
            refuse("policy-deny".into());
            return io.inner.reset();
        };
        let ctx = match self.ssh.context() {
            Ok(c) => c,
            Err(e) => {
                refuse(e);
                return io.inner.reset();
            }
        };
        let events = self.events.clone();
        // The flow holds no reference to the Egress (see tcp_map).
        drop(self);
        crate::ssh::serve(io, route, src, ctx, events).await;
    }
    // --- end SSH egress ---

    async fn serve_tls(self: Arc<Self>, io: Rewind, dst: SocketAddrV4) {
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(SNIFF_TIMEOUT, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                log_limited!(debug, target: "gondolin::net", %dst, "bad TLS ClientHello: {e}");
                return;
            }
            Err(_) => return,
        };
        let sni = start.client_hello().server_name().map(str::to_string);
        let name = match &sni {
            Some(n) => n.clone(),
            None => self
                .dns
                .name_for(*dst.ip())
                .unwrap_or_else(|| dst.ip().to_string()),
        };
        let config = match self.ca.server_config(&name) {
            Ok(c) => c,
            Err(e) => {
                // A name the guest chose (SNI) that no leaf can carry.
                log_limited!(warn, target: "gondolin::net", %dst, "{e}");
                return;
            }
        };
        let Ok(Ok(tls)) = tokio::time::timeout(SNIFF_TIMEOUT, start.into_stream(config)).await
        else {
            return;
        };
        bridge::serve(self, tls, Some(name), dst).await;
    }
}

/// Wraps the egress engine as the stack's flow handler.
#[derive(Debug, Clone)]
pub struct EgressHandler(pub Arc<Egress>);

impl FlowHandler for EgressHandler {
    fn handle(&self, flow: Flow) {
        tokio::spawn(self.0.clone().serve_flow(flow));
    }
}

/// A stream that first replays the sniffed bytes.
pub(crate) struct Rewind {
    prefix: Bytes,
    inner: crate::net::FlowStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
