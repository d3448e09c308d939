//! The one list of error codes. Every error that reaches a host program
//! carries one of these names (JS: `err.code`, typed as `GondolinErrorCode`
//! in index.d.ts, listed at run time as `ErrorCodes`). One name per kind of
//! mistake; a name never changes meaning once released. Filesystem errors
//! are the exception: they carry Node's errno names (`ENOENT`), as upstream.

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $name:literal,)+) => {
        /// A stable, machine-readable error kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The name a host program sees (`"invalid_option"`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)+
                }
            }

            /// The code with this name, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(ErrorCode::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// An option or argument is unknown, of the wrong type or out of range
    /// (raised when the VM is constructed, before any boot).
    InvalidOption = "invalid_option",
    /// The call is not available on this object as it is (reading output
    /// of an exec whose stdout is not piped, attaching twice, a synchronous
    /// VFS call on a provider stack with JS providers).
    InvalidState = "invalid_state",
    /// The VM was created with `autoStart: false` and used before `start()`.
    VmNotStarted = "vm_not_started",
    /// The VM was closed (by `close()`) before or while the call ran.
    VmClosed = "vm_closed",
    /// QEMU exited on its own while the VM was running.
    VmExited = "vm_exited",
    /// The guest was not ready within `startTimeoutMs`.
    VmStartTimeout = "vm_start_timeout",
    /// QEMU or the guest failed while booting.
    VmBootFailed = "vm_boot_failed",
    /// The QEMU binary is not installed (or `sandbox.qemuPath` is wrong).
    QemuNotFound = "qemu_not_found",
    /// `qemu-img` is missing (needed for rootfs mode "cow").
    QemuImgNotFound = "qemu_img_not_found",
    /// The copy-on-write root overlay could not be created.
    OverlayFailed = "overlay_failed",
    /// A guest image file (kernel, initrd, rootfs) is missing.
    MissingAsset = "missing_asset",
    /// Starting QEMU failed at the OS level.
    SpawnFailed = "spawn_failed",
    /// The guest image speaks another protocol version than the host.
    ProtocolMismatch = "protocol_mismatch",
    /// The guest broke the control protocol; the host stopped trusting it.
    ProtocolError = "protocol_error",
    /// The control connection to the guest closed.
    ConnectionClosed = "connection_closed",
    /// The guest could not mount the host-served filesystem.
    VfsError = "vfs_error",
    /// The guest refused an exec request as malformed.
    InvalidRequest = "invalid_request",
    /// The guest could not start the process.
    ExecFailed = "exec_failed",
    /// The exec was aborted through its `signal`.
    ExecAborted = "exec_aborted",
    /// Stdin was written or ended but the exec was started without `stdin`.
    StdinDisabled = "stdin_disabled",
    /// The process already exited.
    ExecExited = "exec_exited",
    /// Too many execs are in flight on this VM.
    QueueFull = "queue_full",
    /// A real secret value was about to leave for a host not allowed for it.
    SecretRefused = "secret_refused",
    /// The MITM certificate authority could not be created or loaded.
    MitmCaFailed = "mitm_ca_failed",
    /// An image build needs a host tool that is not installed.
    MissingTool = "missing_tool",
    /// An image build needs root.
    NeedsRoot = "needs_root",
    /// An image definition is invalid.
    InvalidDefinition = "invalid_definition",
    /// A static guest binary is missing (build the guest first).
    MissingGuestBinary = "missing_guest_binary",
    /// An image directory is not a valid image.
    InvalidImage = "invalid_image",
    /// An image build step failed.
    BuildFailed = "build_failed",
    /// Writing a checkpoint failed (QEMU could not save the guest, the disk
    /// could not be rebased or the file could not be written).
    CheckpointFailed = "checkpoint_failed",
    /// A checkpoint or boot-template file is not one we can resume from
    /// (no trailer, unknown version, truncated or damaged).
    InvalidCheckpoint = "invalid_checkpoint",
    /// A remote server refused the bearer token (HTTP 401 on the WebSocket
    /// upgrade); nothing was created there.
    RemoteUnauthorized = "remote_unauthorized",
    /// A remote server is draining or at its connection limit (HTTP 503);
    /// the message carries its reason.
    RemoteUnavailable = "remote_unavailable",
    /// The native addon for this platform could not be loaded (raised by the
    /// JS loader; listed here so the list is whole).
    NativeMissing = "native_missing",
    /// Any other host I/O failure (an exec's output stream failing
    /// included); `cause` holds the underlying error.
    IoError = "io_error",
}

impl ErrorCode {
    /// The code for an error the guest reported on an exec: the guest's own
    /// name when it is one of ours, else `exec_failed`. The guest is not
    /// trusted to invent codes a host program would branch on.
    pub fn from_guest(name: &str) -> Self {
        match Self::from_name(name) {
            Some(c @ (ErrorCode::InvalidRequest | ErrorCode::ExecFailed | ErrorCode::VfsError)) => {
                c
            }
            _ => ErrorCode::ExecFailed,
        }
    }
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its stable code.
pub trait Coded: std::error::Error {
    fn code(&self) -> ErrorCode;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            let n = c.as_str();
            assert!(seen.insert(n), "{n} listed twice");
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
            assert_eq!(ErrorCode::from_name(n), Some(c));
        }
        assert_eq!(
            ErrorCode::from_name("invalid_argument"),
            None,
            "one name per mistake"
        );
    }

    #[test]
    fn guest_codes_are_not_trusted() {
        assert_eq!(ErrorCode::from_guest("exec_failed"), ErrorCode::ExecFailed);
        assert_eq!(
            ErrorCode::from_guest("invalid_request"),
            ErrorCode::InvalidRequest
        );
        assert_eq!(ErrorCode::from_guest("vm_closed"), ErrorCode::ExecFailed);
        assert_eq!(ErrorCode::from_guest("made_up"), ErrorCode::ExecFailed);
    }
}
