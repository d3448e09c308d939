//! The byte stream to the host: the `gondolin.control` virtio-serial port in
//! the VM, or a unix socket (`--connect PATH`) when testing on the host.
//!
//! A virtio port outlives host connections: while nothing is connected on
//! the host side, reads return 0 and poll reports POLLHUP. So "end of file"
//! means "the host went away" and we wait for POLLHUP to clear rather than
//! exit. A unix socket connection is one host session: its end is ours.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

pub const PORT_NAME: &str = "gondolin.control";
const RETRY: Duration = Duration::from_millis(10);
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Target {
    Virtio,
    Unix(PathBuf),
}

pub struct Port {
    fd: OwnedFd,
    pub reconnects: bool,
}

impl Port {
    pub fn open(target: &Target) -> io::Result<Port> {
        match target {
            Target::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_nonblocking(true)?;
                Ok(Port {
                    fd: s.into(),
                    reconnects: false,
                })
            }
            Target::Virtio => {
                let fd = open_virtio()?;
                let port = Port {
                    fd,
                    reconnects: true,
                };
                port.wait_for_host();
                Ok(port)
            }
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Block until a host is connected to the virtio port. Poll cannot wait
    /// for this (POLLHUP is level-triggered while disconnected), so sleep.
    pub fn wait_for_host(&self) {
        loop {
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            match sys::poll(std::slice::from_mut(&mut p), 0) {
                Ok(_) if p.revents & libc::POLLHUP == 0 => return,
                _ => std::thread::sleep(RETRY),
            }
        }
    }
}

/// Find `/dev/vportNpM` whose sysfs name is ours and open it, retrying while
/// the driver probes (udev does not run in our guest, so there is no
/// `/dev/virtio-ports/` symlink to rely on).
fn open_virtio() -> io::Result<OwnedFd> {
    let start = Instant::now();
    loop {
        let found = find_port(Path::new("/sys/class/virtio-ports"));
        if let Some(dev) = &found {
            let path =
                CString::new(format!("/dev/{dev}")).map_err(|_| io::ErrorKind::InvalidData)?;
            match sys::open(&path, libc::O_RDWR | libc::O_NONBLOCK) {
                Ok(fd) => return Ok(fd),
                Err(e) if start.elapsed() >= OPEN_TIMEOUT => return Err(e),
                Err(_) => {}
            }
        }
        if start.elapsed() >= OPEN_TIMEOUT {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("virtio port {PORT_NAME} not found"),
            ));
        }
        std::thread::sleep(RETRY);
    }
}

fn find_port(class: &Path) -> Option<String> {
    for entry in std::fs::read_dir(class).ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim_end() == PORT_NAME {
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
        let dir = std::env::temp_dir().join(format!("sandboxd-port-{}", std::process::id()));
        for (dev, name) in [
            ("vport0p1", "gondolin.fs\n"),
            ("vport0p2", "gondolin.control\n"),
        ] {
            std::fs::create_dir_all(dir.join(dev)).unwrap();
            std::fs::write(dir.join(dev).join("name"), name).unwrap();
        }
        assert_eq!(find_port(&dir).as_deref(), Some("vport0p2"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(find_port(&dir), None);
    }
}
