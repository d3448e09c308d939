//! Gondolin host core: launches QEMU micro-VMs, speaks the control protocol
//! to the guest, and builds guest images. `napi/` is the only part that knows
//! about Node; everything else is plain Rust, tested with `cargo test`.

pub mod control;
pub mod error;
pub mod framed;
pub mod http;
pub mod image;
pub mod ingress;
pub mod log_limit;
pub mod net;
pub mod options;
pub mod remote;
pub mod session;
pub mod ssh;
pub mod tls;
pub mod vfs;
pub mod vm;
