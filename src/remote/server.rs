//! The server side: a hyper HTTP/1.1 server (plain or rustls) whose
//! `GET /v1` upgrades to a WebSocket behind a bearer token, beside the
//! unauthenticated probes `/healthz`, `/readyz` and `/metrics`.
//!
//! Before the upgrade a TCP connection holds one of
//! [`MAX_HTTP_CONNECTIONS`] slots, at most `max_http_per_ip` of them per
//! client address (per /64 for IPv6), for at most `http_deadline` (the
//! request head within `http_head_timeout`); every answer other than the
//! upgrade carries `Connection: close`, so a slot serves one request. An
//! upgraded connection gives its slot back and counts in `max_connections`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::create_response_with_body;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{self, ByteCounters, ConnOptions, Connection};
use super::{
    check_max_message, ws_config, RemoteError, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES,
    IDLE_TIMEOUT, PING_INTERVAL, PROTOCOL_PATH, WRITE_TIMEOUT,
};

/// TCP connections still in HTTP (not yet upgraded) at once; more are
/// dropped at accept.
const MAX_HTTP_CONNECTIONS: usize = 512;
/// Default `http_head_timeout`: a request head (and a TLS handshake) must
/// arrive within this.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `http_deadline`: a connection not upgraded by then is closed.
pub const HTTP_DEADLINE: Duration = Duration::from_secs(30);
/// Default `max_http_per_ip`: connections not yet upgraded from one
/// address (one /64 for IPv6) at once; more are dropped at accept.
pub const DEFAULT_MAX_HTTP_PER_IP: usize = 32;
/// Accepted connections waiting for the caller to take them.
const ACCEPT_QUEUE: usize = 16;
/// How long `close` waits for connections to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The most bytes of caller-set metrics text kept.
const MAX_EXTRA_METRICS: usize = 1024 * 1024;

/// What to listen on and how.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// The bearer token clients must present; `None` only on loopback.
    pub token: Option<String>,
    /// PEM certificate chain and PEM private key: serve `wss://`.
    pub tls: Option<(String, String)>,
    pub max_message_bytes: usize,
    /// Open WebSocket connections at once; more get 503.
    pub max_connections: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// A client reading nothing for this long while messages wait is
    /// closed (1008).
    pub write_timeout: Duration,
    /// The TLS handshake, and then the request head, each within this.
    pub http_head_timeout: Duration,
    /// A TCP connection not upgraded within this is closed.
    pub http_deadline: Duration,
    /// Connections not yet upgraded from one address (IPv6: one /64).
    pub max_http_per_ip: usize,
}

impl ServerConfig {
    /// Defaults: no TLS, 16 MiB messages, 256 connections, 10 s pings,
    /// 30 s idle and write timeouts; before the upgrade 10 s for the head,
    /// 30 s in all, 32 connections per address.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        ServerConfig {
            addr,
            token,
            tls: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ping_interval: PING_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            http_head_timeout: HTTP_HEAD_TIMEOUT,
            http_deadline: HTTP_DEADLINE,
            max_http_per_ip: DEFAULT_MAX_HTTP_PER_IP,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    connections_total: AtomicU64,
    auth_failures_total: AtomicU64,
    http_refused_total: AtomicU64,
    bytes: Arc<ByteCounters>,
}

struct State {
    token_digest: Option<ring::digest::Digest>,
    ready: AtomicBool,
    draining: AtomicBool,
    extra_metrics: Mutex<String>,
    counters: Counters,
    open: AtomicUsize,
    max_connections: usize,
    max_message_bytes: usize,
    ping_interval: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    http_head_timeout: Duration,
    http_deadline: Duration,
    max_http_per_ip: usize,
    /// Connections not yet upgraded, per [`ip_key`].
    http_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Taken on close, so the caller's receiver ends.
    conn_tx: Mutex<Option<mpsc::Sender<Connection>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A listening server. Dropping it does not stop it; call [`close`](Self::close).
pub struct ServerHandle {
    local_addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address (an ephemeral port resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What `/readyz` answers (while not draining). Starts `true`.
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    /// Text appended to `/metrics` (Prometheus exposition format; at most
    /// 1 MiB kept).
    pub fn set_metrics(&self, text: &str) {
        let mut end = text.len().min(MAX_EXTRA_METRICS);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        *self
            .state
            .extra_metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = text[..end].to_string();
    }

    /// `/readyz` → 503 and new upgrades → 503; open connections untouched.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
    }

    /// Stop listening and close every connection (1001 "server shutting
    /// down"); resolves once they finished (at most a few seconds).
    pub async fn close(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        self.state.shutdown.cancel();
        self.state
            .conn_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.state.tracker.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.state.tracker.wait()).await;
    }
}

fn load_tls(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor, RemoteError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RemoteError::Tls(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(RemoteError::Tls(
            "no CERTIFICATE block in the certificate PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| RemoteError::Tls(format!("private key PEM: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RemoteError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| RemoteError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The shortest and longest a configurable timeout may be.
const TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// Each timeout within [`TIMEOUT_RANGE`] (the deadline bounds the head's
/// timeout too: the shorter applies).
fn check_timeouts(config: &ServerConfig) -> Result<(), RemoteError> {
    for (name, flag, d) in [
        (
            "httpHeadTimeoutMs",
            "--http-head-timeout-ms",
            config.http_head_timeout,
        ),
        ("httpDeadlineMs", "--http-deadline-ms", config.http_deadline),
        ("writeTimeoutMs", "--write-timeout-ms", config.write_timeout),
        ("idle timeout", "", config.idle_timeout),
        ("ping interval", "", config.ping_interval),
    ] {
        if !TIMEOUT_RANGE.contains(&d) {
            let flag = if flag.is_empty() {
                String::new()
            } else {
                format!(" ({flag})")
            };
            return Err(RemoteError::InvalidOption(format!(
                "{name}{flag} must be between 100 and 3600000 ms (got {} ms)",
                d.as_millis()
            )));
        }
    }
    Ok(())
}

/// Listen per `config`. Upgraded, authenticated connections arrive on the
/// returned receiver (bounded: a caller that stops taking them stops
/// upgrades completing). Fails on a missing token off loopback, bad TLS
/// material or limits, or a taken address.
pub async fn bind(
    config: ServerConfig,
) -> Result<(ServerHandle, mpsc::Receiver<Connection>), RemoteError> {
    let max_message_bytes = check_max_message(config.max_message_bytes)?;
    if config.max_http_per_ip == 0 {
        return Err(RemoteError::InvalidOption(
            "maxHttpPerIp must be at least 1 (--max-http-per-ip)".into(),
        ));
    }
    check_timeouts(&config)?;
    if config.max_connections == 0 {
        return Err(RemoteError::InvalidOption(
            "maxConnections must be at least 1".into(),
        ));
    }
    let token_digest = match config.token.as_deref() {
        Some("") => {
            return Err(RemoteError::InvalidOption(
                "the token is empty: give a non-empty token (--token-file)".into(),
            ))
        }
        Some(t) => Some(ring::digest::digest(&ring::digest::SHA256, t.as_bytes())),
        None if config.addr.ip().is_loopback() => None,
        None => return Err(RemoteError::InsecureNoAuth { addr: config.addr }),
    };
    let tls = match &config.tls {
        Some((cert, key)) => Some(load_tls(cert, key)?),
        None => None,
    };
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| RemoteError::Listen {
            addr: config.addr,
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| RemoteError::Listen {
            addr: config.addr,
            source,
        })?;
    let (conn_tx, conn_rx) = mpsc::channel(ACCEPT_QUEUE);
    let state = Arc::new(State {
        token_digest,
        ready: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        extra_metrics: Mutex::new(String::new()),
        counters: Counters::default(),
        open: AtomicUsize::new(0),
        max_connections: config.max_connections,
        max_message_bytes,
        ping_interval: config.ping_interval,
        idle_timeout: config.idle_timeout,
        write_timeout: config.write_timeout,
        http_head_timeout: config.http_head_timeout,
        http_deadline: config.http_deadline,
        max_http_per_ip: config.max_http_per_ip,
        http_per_ip: Mutex::new(HashMap::new()),
        conn_tx: Mutex::new(Some(conn_tx)),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
    });
    state
        .tracker
        .spawn(accept_loop(listener, tls, state.clone()));
    Ok((ServerHandle { local_addr, state }, conn_rx))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    let http_slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(target: "gondolin::remote", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over either cap: dropped.
        let Ok(slot) = http_slots.clone().try_acquire_owned() else {
            state
                .counters
                .http_refused_total
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(ip_slot) = IpSlot::take(&state, peer.ip()) else {
            state
                .counters
                .http_refused_total
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state2 = state.clone();
        let tls = tls.clone();
        state.tracker.spawn(async move {
            // Returns once upgraded (the WebSocket lives on in its own task).
            let deadline = state2.http_deadline;
            if tokio::time::timeout(deadline, serve_tcp(state2, tcp, peer, tls))
                .await
                .is_err()
            {
                tracing::debug!(target: "gondolin::remote", "{peer}: not upgraded within {deadline:?}: closed");
            }
            drop(ip_slot);
            drop(slot);
        });
    }
}

/// The address a per-address cap counts under: IPv4 as is, IPv6 by /64
/// (one host usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
pub(super) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// One of `max_http_per_ip` for an address, given back on drop.
struct IpSlot {
    state: Arc<State>,
    key: IpAddr,
}

impl IpSlot {
    fn take(state: &Arc<State>, ip: IpAddr) -> Option<IpSlot> {
        let key = ip_key(ip);
        let mut m = state.http_per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= state.max_http_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            state: state.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self
            .state
            .http_per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

async fn serve_tcp(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    match tls {
        None => serve_http(state, tcp, peer).await,
        Some(acceptor) => {
            match tokio::time::timeout(state.http_head_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => serve_http(state, stream, peer).await,
                Ok(Err(e)) => {
                    tracing::debug!(target: "gondolin::remote", "TLS handshake from {peer} failed: {e}")
                }
                Err(_) => {
                    tracing::debug!(target: "gondolin::remote", "TLS handshake from {peer} timed out")
                }
            }
        }
    }
}

async fn serve_http<I>(state: Arc<State>, io: I, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = state.clone();
    let svc = service_fn(move |req| {
        let st = st.clone();
        async move {
            let mut r = route(&st, req, peer);
            // One request per connection: only the upgrade keeps it.
            if r.status() != StatusCode::SWITCHING_PROTOCOLS {
                r.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.http_head_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = state.shutdown.cancelled() => {}
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("a static response is valid")
}

fn route(state: &Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/healthz" | "/readyz" | "/metrics" if !get => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(metrics(state).into()))
            .expect("a static response is valid"),
        PROTOCOL_PATH => upgrade(state, req, peer),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `Authorization: Bearer <token>`, compared in constant time (over
/// SHA-256 digests, so the length is not revealed either).
fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(want) = &state.token_digest else {
        return true;
    };
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(given) = value
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
        .map(|_| &value[7..])
    else {
        return false;
    };
    let got = ring::digest::digest(&ring::digest::SHA256, given);
    use subtle::ConstantTimeEq;
    bool::from(got.as_ref().ct_eq(want.as_ref()))
}

fn upgrade(state: &Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if !authorized(state, &req) {
        state
            .counters
            .auth_failures_total
            .fetch_add(1, Ordering::Relaxed);
        let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if state.draining.load(Ordering::SeqCst) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "server is draining: no new connections\n",
        );
    }
    // Validates method, version, Connection/Upgrade and the key; builds 101.
    let response = match create_response_with_body(&req, || Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("expected a WebSocket upgrade: {e}\n"),
            )
        }
    };
    let max = state.max_connections;
    if state
        .open
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .is_err()
    {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server is at its connection limit ({max} connections: --max-connections, maxConnections)\n"),
        );
    }
    let slot = OpenSlot(state.clone());
    let st = state.clone();
    state.tracker.spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(target: "gondolin::remote", "upgrade from {peer} failed: {e}");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            super::progress::ProgressIo::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(ws_config(st.max_message_bytes)),
        )
        .await;
        let c = &st.counters;
        c.connections.fetch_add(1, Ordering::Relaxed);
        c.connections_total.fetch_add(1, Ordering::Relaxed);
        let (conn, tasks) = conn::start(
            ws,
            peer.to_string(),
            ConnOptions {
                max_message_bytes: st.max_message_bytes,
                ping_interval: st.ping_interval,
                idle_timeout: st.idle_timeout,
                write_timeout: st.write_timeout,
                counters: Some(c.bytes.clone()),
                shutdown: Some(st.shutdown.clone()),
            },
        );
        let tx = st.conn_tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            tokio::select! {
                // Not taken before shutdown: dropped, which closes it.
                _ = st.shutdown.cancelled() => {}
                _ = tx.send(conn) => {}
            }
        }
        let _ = tasks.await;
        c.connections.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
    });
    response
}

/// One of `max_connections`, given back when the connection ends.
struct OpenSlot(Arc<State>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn metrics(state: &State) -> String {
    let c = &state.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 6] = [
        (
            "gondolin_remote_connections",
            "gauge",
            "Open WebSocket connections.",
            get(&c.connections),
        ),
        (
            "gondolin_remote_connections_total",
            "counter",
            "WebSocket connections accepted.",
            get(&c.connections_total),
        ),
        (
            "gondolin_remote_auth_failures_total",
            "counter",
            "Upgrades refused for a missing or wrong token.",
            get(&c.auth_failures_total),
        ),
        (
            "gondolin_remote_http_refused_total",
            "counter",
            "TCP connections dropped at accept (all HTTP slots taken, or maxHttpPerIp for the address).",
            get(&c.http_refused_total),
        ),
        (
            "gondolin_remote_bytes_received_total",
            "counter",
            "Message payload bytes received.",
            get(&c.bytes.received),
        ),
        (
            "gondolin_remote_bytes_sent_total",
            "counter",
            "Message payload bytes sent.",
            get(&c.bytes.sent),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out.push_str(
        &state
            .extra_metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    out
}
