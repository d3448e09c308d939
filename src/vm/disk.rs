//! Root disk preparation for the copy-on-write mode.

use std::path::Path;

use tokio::process::Command;

use super::VmError;

/// Create a qcow2 overlay at `overlay` backed by the raw image `base`.
pub async fn create_overlay(base: &Path, overlay: &Path) -> Result<(), VmError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
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
    Ok(())
}
