//! The host end of the control port: exec sessions multiplexed over one
//! virtio-serial connection to the guest's `sandboxd`.
//!
//! [`ControlClient`] owns the connection: a reader task routes guest
//! messages to per-exec queues, a writer task sends frames. Output is
//! credit-based: the guest may have at most `window` unacknowledged bytes per
//! stream, and credit is returned only when the consumer takes the data from
//! [`ExecHandle::next_batch`] — so a slow consumer stops the guest process
//! and host memory stays bounded by the window.

mod client;
mod exec;

pub use client::configure::{ConfigureError, CONFIGURE_TIMEOUT};
pub use client::guest_fs::{DirEntry, EntryKind, FsStat, GuestFsError, Time};
#[cfg(test)]
pub(crate) use client::tests::{pair as fake_guest_pair, FakeGuest};
pub use client::{Connection, ControlClient};
pub use exec::{ExecControl, ExecEvent, ExecHandle, ExecRequest};
/// Linux errno number → name (`2` → `"ENOENT"`): the guest's numbering.
pub use gondolin_wire::guestfs::errno_name;
pub use gondolin_wire::{Configure, FsPlan, Stream};

use crate::error::ErrorCode;

/// Why the connection to the guest is gone; carried to every pending exec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Disconnect {
    /// `VmClosed`, `VmExited`, `ProtocolError` or `ConnectionClosed`.
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Disconnected(#[from] Disconnect),
    #[error("invalid exec request: {0}")]
    InvalidRequest(String),
    #[error("stdin was not enabled for this exec")]
    StdinDisabled,
    #[error("the process has already exited")]
    Exited,
    #[error("too many execs in flight")]
    NoIds,
}

impl crate::error::Coded for ControlError {
    fn code(&self) -> ErrorCode {
        match self {
            ControlError::Disconnected(d) => d.code,
            ControlError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ControlError::StdinDisabled => ErrorCode::StdinDisabled,
            ControlError::Exited => ErrorCode::ExecExited,
            ControlError::NoIds => ErrorCode::QueueFull,
        }
    }
}
