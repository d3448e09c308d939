//! The ingress gateway: a host HTTP server whose requests reach servers
//! inside the guest (upstream's `vm.enableIngress()`).
//!
//! - [`listeners`]: the routing table and its file, `/etc/gondolin/listeners`
//!   (parse, serialize, the host's authoritative copy, reloads).
//! - [`etc`]: the native provider the guest mounts at `/etc/gondolin`; only
//!   `listeners` is writable, and each finished write makes the host reparse.
//! - [`hooks`]: what the user may decide per request ([`IngressHooks`]).
//! - [`gateway`]: the hyper server: routing, hooks, proxying to the guest
//!   through a [`crate::net::dial::GuestConnector`] (one guest connection per
//!   request), WebSocket passthrough, timeouts, a per-gateway connection cap.
//!
//! Everything the guest controls is bounded: the listeners file (64 KiB,
//! [`MAX_ROUTES`] routes), response heads (hyper's limits), bodies it sends
//! slower than the inter-chunk timeout, and the number of connections.

pub mod etc;
pub mod gateway;
mod headers;
pub mod hooks;
pub mod listeners;

#[cfg(test)]
mod tests;

pub use gateway::{Gateway, GatewayOptions};
pub use hooks::IngressHooks;
pub use listeners::{parse_listeners, serialize_listeners, Listeners, Route};

/// The most bytes `/etc/gondolin/listeners` may hold (upstream's cap).
pub const MAX_LISTENERS_BYTES: u64 = 64 * 1024;
/// The most routes a listeners file or `setIngressRoutes` may carry (ours:
/// 64 KiB of shortest lines would be ~8000; nobody routes that many).
pub const MAX_ROUTES: usize = 1024;

/// A listeners file or route list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenersError {
    /// A line of the file is malformed; the message names the line.
    #[error("invalid listeners file line {line}: {reason}")]
    Line { line: usize, reason: String },
    /// Over [`MAX_LISTENERS_BYTES`] (`code: LISTENERS_FILE_TOO_LARGE` upstream).
    #[error("listeners file too large")]
    TooLarge,
    /// Over [`MAX_ROUTES`].
    #[error("too many ingress routes (at most {MAX_ROUTES})")]
    TooManyRoutes,
    /// A route given through `setIngressRoutes` is invalid (upstream's messages).
    #[error("{0}")]
    Route(String),
    /// The file could not be read from its provider.
    #[error("cannot read the listeners file: {0}")]
    Read(String),
}

impl crate::error::Coded for ListenersError {
    fn code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidOption
    }
}
