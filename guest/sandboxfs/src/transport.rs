//! The byte stream to the host: the `gondolin.fs` virtio-serial port, or a
//! unix socket (`--connect PATH`) when testing on the host. Blocking I/O:
//! one reader thread, writers serialized by a mutex.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use gondolin_wire::ports::{find_virtio_port, VIRTIO_PORTS_CLASS};

const RETRY: Duration = Duration::from_millis(10);
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Target {
    Port(String),
    Unix(String),
}

/// A connected stream, as two handles (reader, writer).
pub struct Transport {
    pub reader: File,
    pub writer: File,
    /// A virtio port outlives host connections; a socket does not.
    pub reconnects: bool,
}

pub fn open(target: &Target) -> io::Result<Transport> {
    match target {
        Target::Unix(path) => {
            let s = UnixStream::connect(path)?;
            let w = s.try_clone()?;
            Ok(Transport {
                reader: File::from(std::os::fd::OwnedFd::from(s)),
                writer: File::from(std::os::fd::OwnedFd::from(w)),
                reconnects: false,
            })
        }
        Target::Port(name) => {
            let f = open_port(name)?;
            Ok(Transport {
                writer: f.try_clone()?,
                reader: f,
                reconnects: true,
            })
        }
    }
}

/// Find `/dev/vportNpM` whose sysfs name is `name` (no udev in the guest,
/// so no `/dev/virtio-ports/` links), retrying while the driver probes.
fn open_port(name: &str) -> io::Result<File> {
    let start = Instant::now();
    loop {
        if let Some(dev) = find_virtio_port(Path::new(VIRTIO_PORTS_CLASS), name) {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/dev/{dev}"))
            {
                Ok(f) => return Ok(f),
                Err(e) if start.elapsed() >= OPEN_TIMEOUT => return Err(e),
                Err(_) => {}
            }
        }
        if start.elapsed() >= OPEN_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("virtio port {name} not found"),
            ));
        }
        std::thread::sleep(RETRY);
    }
}
