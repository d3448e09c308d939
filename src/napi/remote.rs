//! The remote transport for `js/` (`gondolin::remote`): `remoteListen` →
//! `RemoteServer`, `remoteConnect` → `RemoteConnection`. Internal API: the
//! JS protocol is built on it; index.d.ts declares it under "Remote
//! transport (internal)".

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use napi::bindgen_prelude::{Buffer, Either, Null, PromiseRaw, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use napi_derive::napi;

use gondolin::error::ErrorCode;
use gondolin::remote::{
    self, ClientConfig, Connection, Enqueued, Message, ServerConfig, ServerHandle, TryRecv,
};

use crate::error::{spawn_coded, JsFailure};

/// Messages handed to JS per `recv()`, at most.
const RECV_BATCH: usize = 64;

#[napi(object)]
pub struct RemoteListenOptions {
    /// An IP address (`127.0.0.1`, `0.0.0.0`, `::`).
    pub host: String,
    /// 0: ephemeral (read it back from `RemoteServer.port`).
    pub port: u32,
    /// The bearer token; null/undefined only on a loopback host.
    #[napi(ts_type = "string | null")]
    pub token: Option<NullableString>,
    /// PEM certificate chain; with `tlsKey`, serve `wss://`.
    pub tls_cert: Option<String>,
    /// PEM private key.
    pub tls_key: Option<String>,
    /// One message, either direction (default 16 MiB, 1 KiB..1 GiB).
    pub max_message_bytes: Option<u32>,
    /// Open WebSocket connections at once (default 256); more get 503.
    pub max_connections: Option<u32>,
    /// Connections not yet upgraded from one client address (one /64 for
    /// IPv6) at once (default 32); more are closed unanswered.
    pub max_http_per_ip: Option<u32>,
    /// Milliseconds for the TLS handshake, and then for the request head
    /// (default 10000).
    pub http_head_timeout_ms: Option<u32>,
    /// Milliseconds a connection may stay without upgrading (default 30000).
    pub http_deadline_ms: Option<u32>,
    /// Milliseconds a client may read nothing while messages wait before it
    /// is closed with 1008 (default 30000).
    pub write_timeout_ms: Option<u32>,
}

#[napi(object)]
pub struct RemoteConnectOptions {
    #[napi(ts_type = "string | null")]
    pub token: Option<NullableString>,
    /// An extra CA (PEM) for `wss://`, besides the system's roots.
    #[napi(ts_type = "string | null")]
    pub ca: Option<NullableString>,
    /// Default 16 MiB.
    pub max_message_bytes: Option<u32>,
    /// TCP + TLS + upgrade (default 10000).
    pub timeout_ms: Option<u32>,
}

/// `string | null | undefined` (napi's `Option<String>` refuses null).
type NullableString = Either<String, Null>;

fn text(v: Option<NullableString>) -> Option<String> {
    match v {
        Some(Either::A(s)) => Some(s),
        _ => None,
    }
}

type OnReadable = ThreadsafeFunction<u32, Unknown<'static>, u32, Status, false>;

fn to_js(m: Message) -> Either<String, Buffer> {
    match m {
        Message::Text(s) => Either::A(s),
        Message::Binary(b) => Either::B(Buffer::from(Vec::from(b))),
    }
}

type OnConnection =
    ThreadsafeFunction<RemoteConnection, Unknown<'static>, RemoteConnection, Status, false>;

/// A listening transport server. Keeps Node alive until `close()`.
#[napi]
pub struct RemoteServer {
    handle: Arc<ServerHandle>,
}

#[napi]
impl RemoteServer {
    /// The bound port.
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.handle.local_addr().port() as u32
    }

    /// What `/readyz` answers while not draining (starts true).
    #[napi]
    pub fn set_ready(&self, ready: bool) {
        self.handle.set_ready(ready);
    }

    /// Prometheus text appended to `/metrics` (replaces the previous text).
    #[napi]
    pub fn set_metrics(&self, text: String) {
        self.handle.set_metrics(&text);
    }

    /// `/readyz` and new upgrades answer 503; open connections stay.
    #[napi]
    pub fn drain(&self) {
        self.handle.drain();
    }

    /// Stop listening and close every connection (1001 "server shutting
    /// down"); resolves once they finished (a few seconds at most).
    #[napi]
    pub async fn close(&self) {
        self.handle.close().await;
    }
}

/// One WebSocket connection (server side or client side).
#[napi]
pub struct RemoteConnection {
    conn: Arc<Connection>,
}

#[napi]
impl RemoteConnection {
    #[napi(getter)]
    pub fn remote_address(&self) -> String {
        self.conn.remote_addr().to_string()
    }

    /// The next 1..=64 messages in order (string: text frame, Buffer:
    /// binary frame); `[]` once closed.
    #[napi(ts_return_type = "Promise<Array<string | Buffer>>")]
    pub async fn recv(&self) -> Vec<Either<String, Buffer>> {
        self.conn
            .recv_many(RECV_BATCH)
            .await
            .into_iter()
            .map(to_js)
            .collect()
    }

    /// The next 1..=64 messages in order without waiting; null when none is
    /// queued yet (the `onReadable` callback then runs once more arrive),
    /// `[]` once closed. The fast path of the protocol's read loop: no
    /// promise per batch. Not to be mixed with a pending `recv()`.
    #[napi(ts_return_type = "Array<string | Buffer> | null")]
    pub fn try_recv(&self) -> Option<Vec<Either<String, Buffer>>> {
        match self.conn.try_recv_many(RECV_BATCH) {
            TryRecv::Messages(m) => Some(m.into_iter().map(to_js).collect()),
            TryRecv::Closed => Some(Vec::new()),
            TryRecv::Empty => None,
        }
    }

    /// What `tryRecv()` returning null waits for: after each such null,
    /// `cb` runs (on the JS thread) once a message arrives; it also runs
    /// once when the connection ends (at once if it already has) and is
    /// then released. Replaces an earlier callback. Holds the event loop
    /// open until the connection ends.
    #[napi]
    pub fn on_readable(&self, #[napi(ts_arg_type = "() => void")] cb: OnReadable) {
        self.conn.on_readable(move || {
            cb.call(0, ThreadsafeFunctionCallMode::NonBlocking);
        });
    }

    /// Queue one message, in call order. Returns null when it went
    /// straight into the bounded send queue, or a promise that resolves
    /// once it is there (the queue was full: await it for backpressure).
    /// Throws `connection_closed` once closing, `invalid_option` over
    /// maxMessageBytes; a held message rejects with `connection_closed`
    /// if the connection closes first.
    #[napi(ts_return_type = "Promise<void> | null")]
    pub fn send<'e>(
        &self,
        env: &'e Env,
        data: Either<String, Buffer>,
    ) -> napi::Result<Option<PromiseRaw<'e, ()>>> {
        let msg = match data {
            Either::A(s) => Message::Text(s),
            Either::B(b) => Message::Binary(Bytes::from(b.to_vec())),
        };
        match self.conn.enqueue(msg) {
            Ok(Enqueued::Queued) => Ok(None),
            Ok(Enqueued::Waiting(rx)) => spawn_coded(env, async move {
                Enqueued::wait(rx)
                    .await
                    .map_err(|e| JsFailure::from_core(&e))
            })
            .map(Some),
            Err(e) => Err(JsFailure::from_core(&e).into_napi(env)),
        }
    }

    /// Close with `code` (default 1000; 1000 or 3000–4999) and `reason`
    /// (at most 123 bytes). No-op once closing.
    #[napi]
    pub fn close(&self, code: Option<u32>, reason: Option<String>) {
        let code = code.and_then(|c| u16::try_from(c).ok()).unwrap_or(1000);
        self.conn.close(code, reason.as_deref().unwrap_or(""));
    }

    /// Once closing: the close code (ours or the peer's; 1006 when the
    /// socket ended without a close frame).
    #[napi(getter)]
    pub fn close_code(&self) -> Option<u32> {
        self.conn.close_status().map(|s| s.code as u32)
    }

    #[napi(getter)]
    pub fn close_reason(&self) -> Option<String> {
        self.conn.close_status().map(|s| s.reason)
    }
}

fn bytes_opt(v: Option<u32>, default: usize) -> usize {
    v.map_or(default, |n| n as usize)
}

/// Listen; each authenticated WebSocket is handed to `onConnection`.
/// Rejects with `invalid_option` (host not an IP, a missing token off
/// loopback, half of the TLS pair, bad PEM, limits out of range) or
/// `io_error` (the address is taken).
#[napi(ts_return_type = "Promise<RemoteServer>")]
pub fn remote_listen<'e>(
    env: &'e Env,
    opts: RemoteListenOptions,
    #[napi(ts_arg_type = "(conn: RemoteConnection) => void")] on_connection: OnConnection,
) -> napi::Result<PromiseRaw<'e, RemoteServer>> {
    let invalid = |m: String| Err(JsFailure::new(ErrorCode::InvalidOption, m));
    let checked = (|| {
        let Ok(ip) = opts.host.parse::<IpAddr>() else {
            return invalid(format!(
                "listen host must be an IP address (got {:?})",
                opts.host
            ));
        };
        let Ok(port) = u16::try_from(opts.port) else {
            return invalid(format!("invalid port: {}", opts.port));
        };
        let mut cfg = ServerConfig::new(SocketAddr::new(ip, port), text(opts.token));
        cfg.tls = match (&opts.tls_cert, &opts.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return invalid("tlsCert and tlsKey go together (--tls-cert/--tls-key)".into()),
        };
        cfg.max_message_bytes = bytes_opt(opts.max_message_bytes, cfg.max_message_bytes);
        cfg.max_connections = bytes_opt(opts.max_connections, cfg.max_connections);
        cfg.max_http_per_ip = bytes_opt(opts.max_http_per_ip, cfg.max_http_per_ip);
        let ms = |v: Option<u32>, default: Duration| {
            v.map_or(default, |n| Duration::from_millis(n.into()))
        };
        cfg.http_head_timeout = ms(opts.http_head_timeout_ms, cfg.http_head_timeout);
        cfg.http_deadline = ms(opts.http_deadline_ms, cfg.http_deadline);
        cfg.write_timeout = ms(opts.write_timeout_ms, cfg.write_timeout);
        Ok(cfg)
    })();
    spawn_coded(env, async move {
        // Bad options reject too (never a synchronous throw).
        let cfg = checked?;
        let (handle, mut rx) = remote::bind(cfg)
            .await
            .map_err(|e| JsFailure::from_core(&e))?;
        tokio::spawn(async move {
            // Ends when the server closes; dropping the function lets Node exit.
            while let Some(conn) = rx.recv().await {
                let conn = RemoteConnection {
                    conn: Arc::new(conn),
                };
                on_connection.call(conn, ThreadsafeFunctionCallMode::NonBlocking);
            }
        });
        Ok(RemoteServer {
            handle: Arc::new(handle),
        })
    })
}

/// Connect to a `ws://`/`wss://` server (path `/v1` when the URL has none).
/// Rejects with `remote_unauthorized` (401), `remote_unavailable` (503,
/// the server's reason in the message), `invalid_option` (URL, ca) or
/// `io_error` (network, TLS, timeout).
#[napi(ts_return_type = "Promise<RemoteConnection>")]
pub fn remote_connect<'e>(
    env: &'e Env,
    url: String,
    opts: Option<RemoteConnectOptions>,
) -> napi::Result<PromiseRaw<'e, RemoteConnection>> {
    let defaults = ClientConfig::default();
    let cfg = match opts {
        None => defaults,
        Some(o) => ClientConfig {
            token: text(o.token),
            ca_pem: text(o.ca),
            max_message_bytes: bytes_opt(o.max_message_bytes, defaults.max_message_bytes),
            connect_timeout: o.timeout_ms.map_or(defaults.connect_timeout, |ms| {
                Duration::from_millis(ms.into())
            }),
            ..defaults
        },
    };
    spawn_coded(env, async move {
        let conn = remote::connect(&url, cfg)
            .await
            .map_err(|e| JsFailure::from_core(&e))?;
        Ok(RemoteConnection {
            conn: Arc::new(conn),
        })
    })
}
