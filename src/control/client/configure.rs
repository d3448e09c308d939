//! [`ControlClient::configure`]: hand the guest its per-VM configuration
//! ([`Configure`]: VFS plan, network, clock, entropy seed) and wait for
//! [`GuestMsg::Configured`](gondolin_wire::GuestMsg::Configured). Sent after
//! `Ready` on a cold boot and after a memory snapshot resumes, so both take
//! one path. One configure is pending at a time, answered within
//! [`CONFIGURE_TIMEOUT`].

use std::time::Duration;

use gondolin_wire::{encode, Configure, HostMsg, MAX_FRAME};
use tokio::sync::oneshot;

use super::ControlClient;
use crate::control::{ControlError, Disconnect};
use crate::error::{Coded, ErrorCode};

/// How long the guest may take to answer. Mounting the VFS waits up to 30 s
/// for sandboxfs (see sandboxd's `configure::vfs`); this leaves room for
/// that and for tearing down a previous mount.
pub const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why [`ControlClient::configure`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    #[error(transparent)]
    Disconnected(#[from] Disconnect),
    /// The request breaks the wire bounds (too many binds, a bad path, a
    /// seed of the wrong size); nothing was sent.
    #[error("invalid guest configuration: {0}")]
    Invalid(String),
    /// Another configure is still waiting for its answer.
    #[error("a guest configuration is already in progress")]
    Busy,
    /// The guest did not answer within [`CONFIGURE_TIMEOUT`].
    #[error("the guest did not answer the configuration within {0} ms")]
    Timeout(u128),
    /// The guest answered, but could not set everything up (the VFS).
    #[error("the guest could not mount the VFS: {0}")]
    Guest(String),
}

impl Coded for ConfigureError {
    fn code(&self) -> ErrorCode {
        match self {
            ConfigureError::Disconnected(d) => d.code,
            ConfigureError::Invalid(_) => ErrorCode::InvalidRequest,
            ConfigureError::Busy => ErrorCode::InvalidState,
            // The guest broke the bound every request has.
            ConfigureError::Timeout(_) => ErrorCode::ProtocolError,
            ConfigureError::Guest(_) => ErrorCode::VfsError,
        }
    }
}

/// The guest's answer: its protocol version and what failed, if anything.
type Answer = Result<(u32, Option<String>), Disconnect>;

/// The configure waiting for its answer; lives in the client's state.
#[derive(Default)]
pub(super) struct Pending(Option<oneshot::Sender<Answer>>);

impl Pending {
    /// Route `Configured`; one nobody asked for is dropped.
    pub(super) fn complete(&mut self, version: u32, error: Option<String>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Ok((version, error)));
        }
    }

    pub(super) fn fail(&mut self, d: &Disconnect) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(d.clone()));
        }
    }
}

impl ControlClient {
    /// Send `cfg` and wait for the guest to apply it. Returns the protocol
    /// version the guest reports (check it with
    /// [`ControlClient::check_version`]: a resumed guest sends no `Ready`).
    pub async fn configure(&self, cfg: Configure) -> Result<u32, ConfigureError> {
        self.configure_within(cfg, CONFIGURE_TIMEOUT).await
    }

    /// [`configure`](Self::configure) with another bound (tests).
    pub(crate) async fn configure_within(
        &self,
        cfg: Configure,
        bound: Duration,
    ) -> Result<u32, ConfigureError> {
        cfg.validate()
            .map_err(|e| ConfigureError::Invalid(e.to_string()))?;
        let msg = HostMsg::Configure(cfg);
        // The guest's decoder drops a frame over the limit without knowing
        // what it was, so it could not answer: refuse it here.
        let len = encode(&msg).len();
        if len > MAX_FRAME {
            return Err(ConfigureError::Invalid(format!(
                "the plan takes {len} bytes, over the {MAX_FRAME} byte frame limit"
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(d) = &st.disconnect {
                return Err(d.clone().into());
            }
            if st.configure.0.as_ref().is_some_and(|t| !t.is_closed()) {
                return Err(ConfigureError::Busy);
            }
            st.configure.0 = Some(tx);
        }
        let unregister = || self.shared.state.lock().unwrap().configure.0 = None;
        if let Err(e) = self.shared.send(&msg) {
            unregister();
            return Err(match e {
                ControlError::Disconnected(d) => d.into(),
                other => ConfigureError::Invalid(other.to_string()),
            });
        }
        let answer = match tokio::time::timeout(bound, rx).await {
            Ok(a) => a,
            Err(_) => {
                unregister();
                return Err(ConfigureError::Timeout(bound.as_millis()));
            }
        };
        // A dropped sender means the client went away without a reason.
        let (version, error) = answer.unwrap_or_else(|_| {
            Err(Disconnect {
                code: ErrorCode::ConnectionClosed,
                message: "the connection to the guest closed".into(),
            })
        })?;
        match error {
            Some(e) => Err(ConfigureError::Guest(e)),
            None => Ok(version),
        }
    }
}
