//! The per-VM configuration the guest gets once it is up: which VFS to
//! mount and where, whether eth0 comes up, the host's clock and a fresh
//! entropy seed. Sent after `Ready` on a cold boot and after a memory
//! snapshot resumes (which never sends `Ready` again), so nothing per-VM is
//! baked into the kernel command line or a saved memory image.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use super::checkpoint::CheckpointError;
use super::{VmConfig, VmError};
use crate::control::{Configure, ConfigureError, ControlClient, Disconnect, FsPlan};

/// Bytes of host randomness mixed into the guest's pool on each configure
/// (a full ChaCha20 key's worth twice over).
const SEED_BYTES: usize = 64;

/// Configure the guest for `config` and check the protocol version it
/// reports. Any failure fails VM start: `BootFailed` with the guest's
/// reason (a VFS that did not mount) or the connection's.
pub(crate) async fn configure_guest(
    control: &ControlClient,
    config: &VmConfig,
) -> Result<(), VmError> {
    let msg = build(config)?;
    let version = control.configure(msg).await.map_err(|e| match e {
        ConfigureError::Disconnected(d) => VmError::BootFailed(d.message),
        other => VmError::BootFailed(other.to_string()),
    })?;
    ControlClient::check_version(version)
        .map_err(|(guest, host)| VmError::ProtocolMismatch { guest, host })
}

/// End the guest's execs and unmount its VFS before a memory checkpoint is
/// saved (see [`Configure::quiesce`]). New execs are refused from here on,
/// with `why`.
pub(crate) async fn quiesce_guest(control: &ControlClient, why: Disconnect) -> Result<(), VmError> {
    control.refuse_new(why);
    let msg = Configure {
        fs: None,
        net: false,
        time_unix_ns: 0,
        seed: seed()?,
        quiesce: true,
    };
    control.configure(msg).await.map(drop).map_err(|e| {
        VmError::Checkpoint(CheckpointError::Failed(format!("quiescing the guest: {e}")))
    })
}

fn seed() -> Result<Vec<u8>, VmError> {
    let mut seed = vec![0u8; SEED_BYTES];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| VmError::Io(std::io::Error::other("the host has no random source")))?;
    Ok(seed)
}

fn build(config: &VmConfig) -> Result<Configure, VmError> {
    let seed = seed()?;
    // A host clock before 1970 is not worth a failure: 0 tells the guest
    // to keep its own.
    let time_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0);
    Ok(Configure {
        fs: config.vfs.as_ref().map(|v| FsPlan {
            fuse_mount: v.fuse_mount.clone(),
            binds: v.binds.clone(),
        }),
        net: config.net.is_some(),
        time_unix_ns,
        seed,
        quiesce: false,
    })
}

#[cfg(test)]
#[path = "configure_tests.rs"]
mod tests;
