//! The remote transport (issue 18): WebSocket connections between a
//! `gondolin ws-server` and the clients whose VMs it runs. This module owns
//! the wire only — HTTP, WebSocket framing, TLS, auth, limits, keepalive,
//! health and metrics endpoints; the protocol spoken over it (VMs, exec, fs,
//! hooks) is JavaScript's (`js/`), built on the public VM API.
//!
//! - [`server`]: a hyper HTTP/1.1 server (optionally rustls) with
//!   `/healthz`, `/readyz`, `/metrics` and the WebSocket upgrade on
//!   [`PROTOCOL_PATH`] behind a bearer token compared in constant time.
//! - [`client`]: `ws://` and `wss://` connections (native roots plus an
//!   optional extra CA), with distinct errors for 401 and 503.
//! - [`conn`]: one [`Connection`] per WebSocket, the same on both ends: a
//!   reader task and a writer task joined to the caller by bounded queues
//!   (at most [`QUEUE_MESSAGES`] messages and [`QUEUE_BYTES`] bytes each
//!   way), so a reader that stops reading stops the socket being read (TCP
//!   backpressure) and a peer that stops reading stops `send` completing.
//!
//! Close codes seen by the caller (RFC 6455): the peer's own, or ours —
//! 1000 on [`Connection::close`] without a code, 1001 when the server shuts
//! down or the keepalive times out, 1008 when the peer reads nothing for
//! [`WRITE_TIMEOUT`] while messages wait, 1002 for a malformed frame, 1009 for a
//! message over `max_message_bytes`, 1006 when the socket ended without a
//! close frame (never sent on the wire).

pub mod client;
pub mod conn;
mod progress;
pub mod server;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{connect, ClientConfig};
pub use conn::{CloseStatus, Connection, Enqueued, Message, TryRecv};
pub use server::{bind, ServerConfig, ServerHandle};

/// The path of the WebSocket upgrade; the protocol version is in it.
pub const PROTOCOL_PATH: &str = "/v1";
/// Messages queued each way per connection (inbound: read but not yet
/// taken by `recv`; outbound: given to `send` but not yet written).
pub const QUEUE_MESSAGES: usize = 64;
/// Bytes of message payload queued each way per connection (one message
/// larger than this is still admitted, alone).
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Default `max_message_bytes` (one message, either direction).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The largest `max_message_bytes` accepted.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1024 * 1024 * 1024;
/// Default `max_connections` of a server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// A ping is sent this often on an idle or busy connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Nothing read from the peer (not even a pong) for this long closes the
/// connection (1001), so a vanished peer's resources are released. Time
/// spent waiting for our own caller to take messages does not count.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages waiting to be written and the peer's socket accepting no bytes
/// for this long closes the connection (1008): a peer that stops reading
/// (but may keep sending, so the keepalive never fires) is let go.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a close handshake (our close frame out, the peer's back) may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A transport failure, as a sentence naming what to change.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No token and a non-loopback address.
    #[error("refusing to serve {addr} without a token: give one with --token-file, or listen on a loopback address with --insecure-no-auth")]
    InsecureNoAuth { addr: SocketAddr },
    /// An option out of range or malformed.
    #[error("{0}")]
    InvalidOption(String),
    /// The TLS certificate or key could not be used.
    #[error("invalid TLS certificate or key (--tls-cert/--tls-key): {0}")]
    Tls(String),
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The URL is not a `ws://` or `wss://` URL we can dial.
    #[error("invalid remote URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// TCP or TLS failed while connecting.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP, TLS and the upgrade) took longer than allowed.
    #[error("connecting to {url} timed out after {ms} ms (timeoutMs)")]
    Timeout { url: String, ms: u128 },
    /// The server answered the upgrade with 401.
    #[error("remote refused the token (401): check GONDOLIN_REMOTE_TOKEN or --token-file")]
    Unauthorized,
    /// The server answered the upgrade with 503 (draining, at its limit).
    #[error("remote unavailable (503): {reason}")]
    Unavailable { reason: String },
    /// Any other handshake failure (another status, a bad accept key).
    #[error("WebSocket handshake with {url} failed: {message}")]
    Handshake { url: String, message: String },
    /// The message is larger than `max_message_bytes`.
    #[error("message of {len} bytes is over maxMessageBytes ({max})")]
    TooLarge { len: usize, max: usize },
    /// The connection is closed (or closing): nothing more can be sent.
    #[error("the remote connection is closed")]
    Closed,
}

impl crate::error::Coded for RemoteError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode as C;
        match self {
            RemoteError::InsecureNoAuth { .. }
            | RemoteError::InvalidOption(_)
            | RemoteError::Tls(_)
            | RemoteError::Url { .. }
            | RemoteError::TooLarge { .. } => C::InvalidOption,
            RemoteError::Unauthorized => C::RemoteUnauthorized,
            RemoteError::Unavailable { .. } => C::RemoteUnavailable,
            RemoteError::Closed => C::ConnectionClosed,
            RemoteError::Listen { .. }
            | RemoteError::Connect { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::Handshake { .. } => C::IoError,
        }
    }
}

/// Checks `max_message_bytes` (both ends use the same rule).
fn check_max_message(n: usize) -> Result<usize, RemoteError> {
    if (1024..=MAX_MESSAGE_BYTES_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(RemoteError::InvalidOption(format!(
            "maxMessageBytes must be between 1024 and {MAX_MESSAGE_BYTES_LIMIT} (got {n})"
        )))
    }
}

/// The WebSocket limits for `max_message_bytes`: one message and one frame
/// at most that large; writes buffered up to 128 KiB before a flush.
fn ws_config(
    max_message_bytes: usize,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}
