//! The host side of the guest's programmable filesystem.
//!
//! The guest's `sandboxfs` forwards every FUSE operation over the
//! `gondolin.fs` port; [`server`] turns those inode-based requests into
//! path-based calls on a [`Provider`]. Providers are the native ones here
//! ([`memory`], [`realfs`], [`readonly`], [`shadow`], routed by [`mounts`]) or
//! adapters around JavaScript objects (in `src/napi/`, since the core never
//! imports napi).

mod deadline;
mod handles;
mod hook_op;
pub mod hooks;
mod inodes;
pub mod path;
mod provider;
pub mod serve;
pub mod server;
// Native providers (one module each) go below this line.
pub mod memory;
pub mod mounts;
pub mod readonly;
pub mod realfs;
pub mod shadow;
pub mod watch;

#[cfg(test)]
mod conformance;

pub use hook_op::HookOp;
pub use provider::{
    CachePolicy, ChangeSink, DirEntry, FileHandle, FileKind, Metadata, OpenOptions, Provider,
    SetTimes, StatFs, SYNTHETIC_STATFS,
};

use gondolin_wire::fs::errno;

/// A failed filesystem operation: a Linux errno plus, optionally, a message
/// for logs and for `vm.fs` errors on the host (never sent to the guest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", errno_name(*errno), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
pub struct VfsError {
    pub errno: i32,
    pub message: Option<String>,
}

pub type VfsResult<T> = Result<T, VfsError>;

impl VfsError {
    pub fn new(errno: i32) -> Self {
        VfsError {
            errno,
            message: None,
        }
    }
    pub fn with_message(errno: i32, message: impl Into<String>) -> Self {
        VfsError {
            errno,
            message: Some(message.into()),
        }
    }
    pub fn noent() -> Self {
        Self::new(errno::ENOENT)
    }
    pub fn rofs() -> Self {
        Self::new(errno::EROFS)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::with_message(errno::EINVAL, message)
    }
    pub fn nosys(op: &str) -> Self {
        Self::with_message(
            errno::ENOSYS,
            format!("{op} is not supported by this provider"),
        )
    }
    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

impl From<std::io::Error> for VfsError {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => VfsError::new(n),
            None => VfsError::with_message(errno::EIO, e.to_string()),
        }
    }
}

impl From<nix::errno::Errno> for VfsError {
    fn from(e: nix::errno::Errno) -> Self {
        VfsError::new(e as i32)
    }
}

/// The symbolic name of a Linux errno (`ENOENT`), as Node's `err.code`.
pub fn errno_name(n: i32) -> &'static str {
    use errno::*;
    match n {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        EIO => "EIO",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EACCES => "EACCES",
        EBUSY => "EBUSY",
        EEXIST => "EEXIST",
        EXDEV => "EXDEV",
        ENOTDIR => "ENOTDIR",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        EFBIG => "EFBIG",
        ENOSPC => "ENOSPC",
        EROFS => "EROFS",
        EMLINK => "EMLINK",
        ERANGE => "ERANGE",
        ENAMETOOLONG => "ENAMETOOLONG",
        ENOSYS => "ENOSYS",
        ENOTEMPTY => "ENOTEMPTY",
        ELOOP => "ELOOP",
        ENODATA => "ENODATA",
        EOPNOTSUPP => "EOPNOTSUPP",
        _ => "EIO",
    }
}

/// The Linux errno for a Node `err.code` string; unknown codes map to EIO.
pub fn errno_from_name(code: &str) -> i32 {
    use errno::*;
    match code {
        "EPERM" => EPERM,
        "ENOENT" => ENOENT,
        "EIO" => EIO,
        "EBADF" => EBADF,
        "EAGAIN" => EAGAIN,
        "ENOMEM" => ENOMEM,
        "EACCES" => EACCES,
        "EBUSY" => EBUSY,
        "EEXIST" => EEXIST,
        "EXDEV" => EXDEV,
        "ENOTDIR" => ENOTDIR,
        "EISDIR" => EISDIR,
        "EINVAL" => EINVAL,
        "EFBIG" => EFBIG,
        "ENOSPC" => ENOSPC,
        "EROFS" => EROFS,
        "EMLINK" => EMLINK,
        "ERANGE" => ERANGE,
        "ENAMETOOLONG" => ENAMETOOLONG,
        "ENOSYS" => ENOSYS,
        "ENOTEMPTY" => ENOTEMPTY,
        "ELOOP" => ELOOP,
        "ENODATA" => ENODATA,
        "EOPNOTSUPP" | "ENOTSUP" => EOPNOTSUPP,
        _ => EIO,
    }
}
