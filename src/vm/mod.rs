//! Launching and supervising one QEMU micro-VM.
//!
//! [`Vm::start`] resolves the accelerator, prepares the root disk, binds the
//! host end of every virtio-serial port, spawns QEMU and waits until the
//! guest is up (booted to `Ready`, or resumed from a boot template or a
//! checkpoint: `launch.rs`), then configures it for this VM
//! (`configure.rs`). [`Vm::close`] stops QEMU and removes every socket and
//! temp file; a QEMU that dies on its own fails every pending exec with the
//! reason instead of leaving it hanging.

mod accel;
mod bootdiag;
pub mod checkpoint;
mod configure;
mod console;
mod disk;
mod guest_dial;
mod launch;
mod machine;
mod migrate;
mod qemu;
mod qmp;
pub mod rootfs_size;
mod template;

use std::path::PathBuf;

use crate::error::ErrorCode;
use std::time::Duration;

pub use accel::{detect as detect_accel, Accel, TCG_CMDLINE};
pub use launch::StartedFrom;
pub use machine::{CheckpointRequest, Vm};
pub use qemu::{qemu_argv, DiskFormat, QemuPlan, Ram};

/// How the guest may write its root disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsMode {
    /// Base image attached read-only; guest writes fail with EROFS.
    Readonly,
    /// Writes kept in QEMU's memory (`snapshot=on`), gone on close.
    Memory,
    /// Writes go to a temp qcow2 overlay, deleted on close.
    Cow,
}

impl RootfsMode {
    /// The option value that names this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Readonly => "readonly",
            Self::Memory => "memory",
            Self::Cow => "cow",
        }
    }

    pub fn parse(s: &str) -> Result<Self, VmError> {
        match s {
            "readonly" => Ok(Self::Readonly),
            "memory" => Ok(Self::Memory),
            "cow" => Ok(Self::Cow),
            other => Err(VmError::InvalidOption(format!(
                "unsupported rootfs mode: {other} (expected \"readonly\", \"memory\" or \"cow\")"
            ))),
        }
    }
}

/// Everything needed to boot one VM. Built by the caller from user options.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    /// Base kernel command line from the image manifest.
    pub cmdline: String,
    pub rootfs_mode: RootfsMode,
    /// `rootfs.size` in bytes (see [`rootfs_size`]): the root disk grows to
    /// it after start, and the guest's filesystem with it. `None` = the
    /// image's size.
    pub rootfs_size: Option<u64>,
    /// QEMU size syntax, e.g. "1G" or "512M".
    pub memory: String,
    pub cpus: u32,
    /// Explicit accelerator (`kvm`, `hvf`, `tcg`); `None` = detect.
    pub accel: Option<String>,
    pub qemu_path: Option<PathBuf>,
    pub machine: Option<String>,
    pub cpu: Option<String>,
    /// Extra kernel command-line words appended after the base.
    pub append: Option<String>,
    /// `None` waits forever.
    pub start_timeout: Option<Duration>,
    /// Echo the guest console to stderr.
    pub debug: bool,
    /// The host-served filesystem, if any.
    pub vfs: Option<VfsAttach>,
    /// The guest's network, if any (no NIC at all otherwise).
    pub net: Option<NetAttach>,
    /// Start from this checkpoint file (see `checkpoint`) instead of the
    /// image's disk; a memory checkpoint resumes the guest where it was.
    pub resume: Option<PathBuf>,
    /// Where boot templates live (one directory per machine; see
    /// `template`). `None`: always boot the kernel.
    pub template_dir: Option<PathBuf>,
}

/// The guest NIC's host side: the stack and what handles its flows.
#[derive(Clone)]
pub struct NetAttach {
    pub config: crate::net::NetConfig,
    pub dns: std::sync::Arc<crate::net::dns::DnsServer>,
    pub handler: std::sync::Arc<dyn crate::net::FlowHandler>,
    pub stats: std::sync::Arc<crate::net::NetStats>,
    /// Host-opened connections into the guest (ingress, `enableSsh`).
    pub dial: crate::net::dial::Dialer,
}

impl std::fmt::Debug for NetAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetAttach")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How the guest mounts the host-served filesystem.
#[derive(Debug, Clone)]
pub struct VfsAttach {
    pub server: std::sync::Arc<crate::vfs::server::FsServer>,
    /// Where sandboxfs mounts the provider root (upstream default `/data`).
    pub fuse_mount: String,
    /// Guest paths bind-mounted from `fuse_mount` + path before any exec
    /// (sent in the guest's `Configure`, see `configure.rs`).
    pub binds: Vec<String>,
}

impl VmConfig {
    /// Check user-facing values, naming the option that is wrong.
    pub fn validate(&self) -> Result<(), VmError> {
        parse_memory_mib(&self.memory)?;
        if self.rootfs_size.is_some() && self.rootfs_mode == RootfsMode::Readonly {
            return Err(VmError::InvalidOption(rootfs_size::NEEDS_WRITABLE.into()));
        }
        if self.cpus == 0 || self.cpus > 255 {
            return Err(VmError::InvalidOption(format!(
                "cpus must be between 1 and 255 (got {})",
                self.cpus
            )));
        }
        Ok(())
    }
}

/// The least memory the guest kernel and init boot in.
pub const MIN_MEMORY_MIB: u64 = 128;

/// Parse QEMU's size syntax ("512M", "1G", "2048" = MiB) into MiB. The one
/// memory rule: checked when the VM is constructed (`options::resolve`)
/// and again by [`VmConfig::validate`] for callers of the core alone.
pub fn parse_memory_mib(s: &str) -> Result<u64, VmError> {
    let bad = || {
        VmError::InvalidOption(format!(
            "memory must be a size like \"512M\" or \"2G\" (got {})",
            json(s)
        ))
    };
    let mib = size_mib(s, true).ok_or_else(bad)?;
    if mib < MIN_MEMORY_MIB {
        return Err(VmError::InvalidOption(format!(
            "memory must be at least {MIN_MEMORY_MIB}M: the guest kernel and init do not boot in less (got {})",
            json(s)
        )));
    }
    if mib > 1024 * 1024 {
        return Err(VmError::InvalidOption(format!(
            "memory must be at most 1T (got {})",
            json(s)
        )));
    }
    Ok(mib)
}

/// QEMU's size syntax with a binary suffix (`512M`, `4G`, `1T`, any case)
/// in MiB; a bare number is MiB when `bare_is_mib` (as `-m` reads it),
/// else refused. `None` for anything else or an overflow.
fn size_mib(s: &str, bare_is_mib: bool) -> Option<u64> {
    let t = s.trim();
    let (num, mul) = match t.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'M') => (&t[..t.len() - 1], 1),
        Some(b'G') => (&t[..t.len() - 1], 1024),
        Some(b'T') => (&t[..t.len() - 1], 1024 * 1024),
        _ if bare_is_mib => (t, 1),
        _ => return None,
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// `s` quoted as JSON, as the JS API quotes values in messages.
fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    InvalidOption(String),
    #[error(
        "QEMU binary '{path}' not found. Install QEMU: sudo apt install qemu-system-x86 qemu-utils"
    )]
    QemuNotFound { path: String },
    #[error("qemu-img not found (needed for rootfs mode \"cow\"). Install it: sudo apt install qemu-utils")]
    QemuImgNotFound,
    #[error("creating the copy-on-write overlay failed: {0}")]
    Overlay(String),
    #[error("guest asset missing: {0}")]
    MissingAsset(PathBuf),
    #[error("starting QEMU failed: {0}")]
    Spawn(#[source] std::io::Error),
    /// The second field is the slow-boot report (empty for short timeouts).
    #[error("vm startup timed out after {0}ms while waiting for guest readiness{1}")]
    StartTimeout(u128, String),
    #[error("the VM exited during startup: {0}")]
    BootFailed(String),
    #[error("guest protocol version {guest} does not match the host's {host}; rebuild the guest image (gondolin build)")]
    ProtocolMismatch { guest: u32, host: u32 },
    /// Loading a saved state (boot template, memory checkpoint) failed.
    #[error("resuming the VM failed: {0}")]
    ResumeFailed(String),
    #[error("{0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::Coded for VmError {
    fn code(&self) -> ErrorCode {
        match self {
            VmError::InvalidOption(_) => ErrorCode::InvalidOption,
            VmError::QemuNotFound { .. } => ErrorCode::QemuNotFound,
            VmError::QemuImgNotFound => ErrorCode::QemuImgNotFound,
            VmError::Overlay(_) => ErrorCode::OverlayFailed,
            VmError::MissingAsset(_) => ErrorCode::MissingAsset,
            VmError::Spawn(_) => ErrorCode::SpawnFailed,
            VmError::StartTimeout(..) => ErrorCode::VmStartTimeout,
            VmError::BootFailed(_) => ErrorCode::VmBootFailed,
            VmError::ProtocolMismatch { .. } => ErrorCode::ProtocolMismatch,
            VmError::ResumeFailed(_) => ErrorCode::VmBootFailed,
            VmError::Checkpoint(e) => crate::error::Coded::code(e),
            VmError::Io(_) => ErrorCode::IoError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("1G").unwrap(), 1024);
        assert_eq!(parse_memory_mib("512M").unwrap(), 512);
        assert_eq!(parse_memory_mib("2048").unwrap(), 2048);
        assert_eq!(parse_memory_mib("2g").unwrap(), 2048);
        assert_eq!(parse_memory_mib(" 128m ").unwrap(), 128);
        for bad in [
            "",
            "G",
            "1X",
            "-1G",
            "+1G",
            "1.5G",
            "32M",
            "2T",
            "99999999999999999999G",
        ] {
            let e = parse_memory_mib(bad).unwrap_err().to_string();
            assert!(e.starts_with("memory must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn rootfs_modes() {
        assert_eq!(RootfsMode::parse("cow").unwrap(), RootfsMode::Cow);
        assert!(RootfsMode::parse("rw")
            .unwrap_err()
            .to_string()
            .contains("unsupported rootfs mode: rw"));
    }
}
