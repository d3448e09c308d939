//! Finding a virtio-serial port by name inside the guest. There is no udev
//! in our guest, so no `/dev/virtio-ports/<name>` links: the name is read
//! from sysfs instead.

use std::path::Path;

/// Where the kernel lists virtio-serial ports.
pub const VIRTIO_PORTS_CLASS: &str = "/sys/class/virtio-ports";

/// The device name (`vport0p2`) of the port called `wanted` under `class`.
pub fn find_virtio_port(class: &Path, wanted: &str) -> Option<String> {
    for entry in std::fs::read_dir(class).ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim_end() == wanted {
            return entry.file_name().into_string().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_sysfs_name() {
        let dir = std::env::temp_dir().join(format!("wire-ports-{}", std::process::id()));
        for (dev, name) in [
            ("vport0p1", "gondolin.fs\n"),
            ("vport0p2", "gondolin.control\n"),
        ] {
            std::fs::create_dir_all(dir.join(dev)).unwrap();
            std::fs::write(dir.join(dev).join("name"), name).unwrap();
        }
        assert_eq!(
            find_virtio_port(&dir, "gondolin.control").as_deref(),
            Some("vport0p2")
        );
        assert_eq!(
            find_virtio_port(&dir, "gondolin.fs").as_deref(),
            Some("vport0p1")
        );
        assert_eq!(find_virtio_port(&dir, "other"), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(find_virtio_port(&dir, "gondolin.fs"), None);
    }
}
