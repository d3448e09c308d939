//! `rootfs.size`: a bigger root disk than the image's (issue: "no space
//! left" during `npm install`, upstream's most reported failure).
//!
//! The disk grows after the guest is up, the same way after a boot and
//! after a resume: QMP `block_resize` on the root drive (the guest kernel
//! gets virtio-blk's config-change interrupt and sees the new capacity),
//! then an online `resize2fs` of the mounted ext4 in the guest. A boot
//! template thus stays shared by VMs of every size, and a checkpoint of a
//! grown VM resumes at its grown size (its qcow2 carries it).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::qmp::Qmp;
use super::VmError;
use crate::control::{ControlClient, ExecEvent, ExecRequest};

/// The root drive's id on QEMU's command line (`qemu.rs`).
const DRIVE: &str = "drive0";
/// ext4 with 4 KiB blocks ends at 16 TiB.
const MAX_BYTES: u64 = 16 << 40;
/// Bound on the guest's side: seeing the capacity change and `resize2fs`.
const GUEST_LIMIT: Duration = Duration::from_secs(120);
/// A read-only root cannot grow (checked with the options and again by
/// `VmConfig::validate`, where the image's default mode is known).
pub const NEEDS_WRITABLE: &str = "rootfs.size needs a writable root disk, but rootfs.mode is \"readonly\"; use \"cow\" or \"memory\", or drop rootfs.size";
/// What of the guest's stderr a failure message keeps.
const STDERR_KEEP: usize = 2048;

/// `rootfs.size` (QEMU size syntax with a unit: `"8G"`, `"10240M"`, `"1T"`)
/// in bytes.
pub fn parse(s: &str) -> Result<u64, VmError> {
    let bad = |why: &str| {
        VmError::InvalidOption(format!(
            "rootfs.size must be a size like \"8G\" or \"10240M\"{why} (got {})",
            serde_json::to_string(s).unwrap_or_default()
        ))
    };
    let mib = super::size_mib(s, false).ok_or_else(|| bad(""))?;
    match mib.checked_mul(1 << 20) {
        Some(b) if b > 0 && b <= MAX_BYTES => Ok(b),
        _ => Err(bad(", at most 16T")),
    }
}

/// Grow the root disk of the VM whose QMP socket is `qmp_sock` to `bytes`,
/// then its filesystem. A size below the disk's is refused (a disk only
/// grows); the same size does nothing.
pub(super) async fn grow(
    qmp_sock: &Path,
    control: &ControlClient,
    bytes: u64,
) -> Result<(), VmError> {
    let qmp_err = |e: std::io::Error| {
        VmError::Io(std::io::Error::new(
            e.kind(),
            format!("rootfs.size: QMP: {e}"),
        ))
    };
    let mut qmp = Qmp::connect(qmp_sock, Duration::from_secs(10))
        .await
        .map_err(qmp_err)?;
    let current = virtual_size(
        &qmp.execute("query-block", Value::Null)
            .await
            .map_err(qmp_err)?,
    )
    .ok_or_else(|| {
        VmError::Io(std::io::Error::other(
            "rootfs.size: QEMU did not report the root disk's size",
        ))
    })?;
    if bytes < current {
        return Err(VmError::InvalidOption(format!(
            "rootfs.size ({}) is smaller than the root disk ({}); it can only grow",
            mib(bytes),
            mib(current)
        )));
    }
    if bytes == current {
        return Ok(());
    }
    qmp.execute("block_resize", json!({ "device": DRIVE, "size": bytes }))
        .await
        .map_err(qmp_err)?;
    // The config-change interrupt is handled asynchronously: wait (bounded)
    // until the kernel reports the new capacity, then grow ext4 online.
    let script = format!(
        "want={sectors}; i=0; \
         while [ \"$(cat /sys/block/vda/size)\" -lt \"$want\" ]; do \
           i=$((i+1)); [ $i -gt 200 ] && {{ echo 'the guest kernel did not see the new disk size' >&2; exit 90; }}; \
           sleep 0.05; \
         done; \
         resize2fs /dev/vda 2>&1 >/dev/null",
        sectors = bytes / 512
    );
    run_checked(control, &script).await
}

/// `inserted.image.virtual-size` of [`DRIVE`] in a `query-block` answer.
fn virtual_size(answer: &Value) -> Option<u64> {
    answer
        .as_array()?
        .iter()
        .find(|b| b.get("device").and_then(Value::as_str) == Some(DRIVE))?
        .pointer("/inserted/image/virtual-size")?
        .as_u64()
}

fn mib(bytes: u64) -> String {
    format!("{}M", bytes.div_ceil(1 << 20))
}

/// Run `script` under `/bin/sh` in the guest; exit 0 within [`GUEST_LIMIT`]
/// or an error carrying its status and the start of its stderr.
async fn run_checked(control: &ControlClient, script: &str) -> Result<(), VmError> {
    let failed = |m: String| {
        VmError::Io(std::io::Error::other(format!(
            "rootfs.size: growing the guest's filesystem failed: {m}"
        )))
    };
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    let mut h = control.exec(&req).map_err(|e| failed(e.to_string()))?;
    let mut stderr = Vec::new();
    let wait = async {
        while let Some(batch) = h.next_batch(1 << 16).await {
            for ev in batch {
                match ev {
                    ExecEvent::Output { data, .. } => {
                        let room = STDERR_KEEP.saturating_sub(stderr.len());
                        stderr.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    ExecEvent::Exit { exit_code: 0, .. } => return Ok(()),
                    ExecEvent::Exit { exit_code, .. } => {
                        return Err(format!(
                            "exit {exit_code}: {}",
                            String::from_utf8_lossy(&stderr).trim()
                        ))
                    }
                    ExecEvent::Failed { message, .. } => return Err(message),
                }
            }
        }
        Err("the VM is gone".to_string())
    };
    match tokio::time::timeout(GUEST_LIMIT, wait).await {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(failed(format!("no answer in {} s", GUEST_LIMIT.as_secs()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("4G").unwrap(), 4 << 30);
        assert_eq!(parse("10240m").unwrap(), 10240 << 20);
        assert_eq!(parse("1T").unwrap(), 1 << 40);
        assert_eq!(parse("16T").unwrap(), 16 << 40);
        for bad in [
            "4096",
            "4GB",
            "",
            "G",
            "-1G",
            "0G",
            "17T",
            "99999999999999999999G",
        ] {
            let msg = parse(bad).unwrap_err().to_string();
            assert!(
                msg.starts_with("rootfs.size must be a size like \"8G\""),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn virtual_size_of_the_root_drive() {
        let answer = json!([
            { "device": "other", "inserted": { "image": { "virtual-size": 1 } } },
            { "device": "drive0", "inserted": { "image": { "virtual-size": 1234173952u64 } } }
        ]);
        assert_eq!(virtual_size(&answer), Some(1234173952));
        assert_eq!(virtual_size(&json!([])), None);
        assert_eq!(virtual_size(&json!({})), None);
    }
}
