//! The Gondolin host <-> guest wire protocol: the one source of truth for
//! every message that crosses a virtio-serial port.
//!
//! A frame is a 4-byte big-endian payload length followed by a postcard
//! encoding of [`HostMsg`] (host -> guest) or [`GuestMsg`] (guest -> host).
//!
//! Both ends treat the peer as adversarial: [`FrameDecoder`] refuses any
//! length above [`MAX_FRAME`] before buffering it, decoding is bounded by the
//! frame, and [`HostMsg::validate`] / [`GuestMsg::validate`] check the limits
//! below so that a decoded message is always safe to act on.

mod frame;
pub mod fs;
pub mod guestfs;
mod msg;
pub mod ports;

pub use frame::{decode, encode, encode_into, FrameDecoder};
pub use fs::MAX_FS_DATA;
pub use msg::{
    Configure, Exec, FsPlan, GuestMsg, HostMsg, Stream, MAX_BINDS, MAX_PATH, MAX_SEED, MIN_SEED,
    PROTOCOL_VERSION,
};

/// Largest payload accepted in one frame: the largest data chunk (an fs
/// read or write of [`MAX_FS_DATA`]) plus room for its headers.
pub const MAX_FRAME: usize = 1024 * 1024 + 64 * 1024;
/// Largest data chunk (output, stdin, file data) carried by one frame.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Default per-stream output credit (`windowBytes`).
pub const DEFAULT_WINDOW: u32 = 256 * 1024;
/// Smallest and largest output credit a host may request.
pub const MIN_WINDOW: u32 = 4 * 1024;
pub const MAX_WINDOW: u32 = 16 * 1024 * 1024;
/// Stdin credit the guest grants (and keeps topped up) per exec.
pub const STDIN_WINDOW: u32 = 4 * 1024 * 1024;
/// Bounds on exec requests.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_STRING: usize = 128 * 1024;

/// Why a frame or message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = MAX_FRAME)]
    FrameTooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}
