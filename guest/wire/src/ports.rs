//! Finding and opening a virtio-serial port by name inside the guest (both
//! guest daemons do). There is no udev in our guest, so no
//! `/dev/virtio-ports/<name>` links: the name is read from sysfs instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the kernel lists virtio-serial ports.
pub const VIRTIO_PORTS_CLASS: &str = "/sys/class/virtio-ports";
/// How long to wait for the driver to probe a port before giving up.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while waiting.
const RETRY: Duration = Duration::from_millis(10);

/// Open `/dev/<vportNpM>` for the port called `name` with `opts`,
/// retrying for up to [`OPEN_TIMEOUT`] while the driver probes (the port
/// may not be listed yet, or listed before its device node can be opened).
/// Fails with `NotFound` if it never appears, or with the last open error.
pub fn open_virtio_port(name: &str, opts: &OpenOptions) -> io::Result<File> {
    open_port_in(
        Path::new(VIRTIO_PORTS_CLASS),
        Path::new("/dev"),
        name,
        opts,
        OPEN_TIMEOUT,
    )
}

fn open_port_in(
    class: &Path,
    dev_dir: &Path,
    name: &str,
    opts: &OpenOptions,
    timeout: Duration,
) -> io::Result<File> {
    let start = Instant::now();
    loop {
        if let Some(dev) = find_virtio_port(class, name) {
            match opts.open(dev_dir.join(dev)) {
                Ok(f) => return Ok(f),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => {}
            }
        }
        if start.elapsed() >= timeout {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("virtio port {name} not found"),
            ));
        }
        std::thread::sleep(RETRY);
    }
}

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

    #[test]
    fn opening_waits_for_the_port_to_appear_then_gives_up_with_not_found() {
        let root = std::env::temp_dir().join(format!("wire-open-{}", std::process::id()));
        let (class, dev) = (root.join("class"), root.join("dev"));
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        let start = Instant::now();
        let err = open_port_in(
            &class,
            &dev,
            "gondolin.fs",
            &opts,
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(start.elapsed() >= Duration::from_millis(50), "it retried");
        // The driver lists the port and its node a little later.
        let (c, d) = (class.clone(), dev.clone());
        let probe = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            std::fs::create_dir_all(c.join("vport1p1")).unwrap();
            std::fs::write(d.join("vport1p1"), b"").unwrap();
            std::fs::write(c.join("vport1p1").join("name"), "gondolin.fs\n").unwrap();
        });
        let f = open_port_in(&class, &dev, "gondolin.fs", &opts, Duration::from_secs(5));
        probe.join().unwrap();
        assert!(f.is_ok(), "{f:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
