//! Root disk files: copy-on-write overlays and their backing chain.

use std::path::Path;

use tokio::process::Command;

use super::checkpoint::CheckpointError;
use super::qemu::DiskFormat;
use super::VmError;

fn format_name(f: DiskFormat) -> &'static str {
    match f {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    }
}

async fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, VmError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmError::QemuImgNotFound,
            _ => VmError::Overlay(e.to_string()),
        })?;
    if !out.status.success() {
        return Err(VmError::Overlay(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(out.stdout)
}

/// Create a qcow2 overlay at `overlay` backed by `base` (an image's raw
/// rootfs, a template's disk or a checkpoint file).
pub async fn create_overlay(
    base: &Path,
    base_format: DiskFormat,
    overlay: &Path,
) -> Result<(), VmError> {
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        format_name(base_format).as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        overlay.as_os_str(),
    ])
    .await
    .map(drop)
}

/// The backing file `overlay` names, if any.
async fn backing_of(overlay: &Path) -> Result<Option<String>, VmError> {
    let out = qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-U".as_ref(),
        overlay.as_os_str(),
    ])
    .await?;
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| VmError::Overlay(e.to_string()))?;
    Ok(v.get("full-backing-filename")
        .or_else(|| v.get("backing-filename"))
        .and_then(|b| b.as_str())
        .map(str::to_string))
}

/// Make `overlay` stand on the raw `rootfs` alone: when it is backed by
/// anything else (a boot template's disk), copy what differs into it
/// (`qemu-img rebase`, safe mode), so a checkpoint holds every change since
/// the image.
pub async fn rebase(overlay: &Path, rootfs: &Path) -> Result<(), VmError> {
    let current = backing_of(overlay).await?;
    if current.as_deref().map(Path::new) == Some(rootfs) {
        return Ok(());
    }
    rebase_onto(overlay, rootfs, "-q").await
}

/// `qemu-img rebase` of the qcow2 `image` onto the raw `rootfs`. `mode` is
/// `-q` (the default safe mode, quietly: what differs from the old backing
/// chain is copied in) or `-u` (unsafe: only the backing name changes).
async fn rebase_onto(image: &Path, rootfs: &Path, mode: &str) -> Result<(), VmError> {
    qemu_img(&[
        "rebase".as_ref(),
        mode.as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        "-b".as_ref(),
        rootfs.as_os_str(),
        image.as_os_str(),
    ])
    .await
    .map(drop)
}

/// Point a checkpoint's qcow2 at this machine's copy of its image (upstream
/// resume: the same `buildId` is the same content, so only the name in the
/// header changes: `qemu-img rebase -u`). A checkpoint backed by itself is
/// refused.
pub async fn point_at_image(checkpoint: &Path, rootfs: &Path) -> Result<(), VmError> {
    let current = backing_of(checkpoint).await?;
    let Some(current) = current else {
        return Ok(());
    };
    let current = Path::new(&current);
    if current == rootfs {
        return Ok(());
    }
    let same_file = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b))
    {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same_file(current, checkpoint) || current == checkpoint {
        return Err(VmError::Checkpoint(CheckpointError::Invalid(format!(
            "checkpoint is corrupt: qcow2 backing file points to itself ({})",
            checkpoint.display()
        ))));
    }
    if same_file(current, rootfs) {
        return Ok(());
    }
    let rebased = rebase_onto(checkpoint, rootfs, "-u").await;
    // Two first resumes at once race for the file's write lock: the loser
    // finds it done.
    match rebased {
        Err(_) if backing_of(checkpoint).await?.as_deref().map(Path::new) == Some(rootfs) => Ok(()),
        r => r,
    }
}
