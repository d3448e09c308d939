//! Finding a virtio-serial port by name inside the guest. There is no udev
//! in our guest, so no `/dev/virtio-ports/<name>` links: the name is read
//! from sysfs instead.

use std::path::Path;

/// TCP ports on the host side of the NIC (the gateway address) where the
/// host serves the guest's own daemons when the VM has a network: a 64 KiB
/// MTU link moves bulk data several times faster than virtio-serial, whose
/// host→guest path goes 4 KiB at a time. Each lane takes one connection.
pub const LANE_FS: u16 = 9001;
/// The control protocol (exec, vm.fs) on its lane.
pub const LANE_CONTROL: u16 = 9002;
/// The lane range: flows to other ports here are reset, never bridged.
pub const LANES: std::ops::RangeInclusive<u16> = 9000..=9009;
/// The gateway as the guest dials it.
pub const LANE_HOST: [u8; 4] = [192, 168, 127, 1];

/// `HOST:PORT` of a lane, as the guest daemons take it on their command line.
pub fn lane_addr(port: u16) -> String {
    let [a, b, c, d] = LANE_HOST;
    format!("{a}.{b}.{c}.{d}:{port}")
}

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
