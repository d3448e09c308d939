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
        let found = gondolin_wire::ports::find_virtio_port(
            Path::new(gondolin_wire::ports::VIRTIO_PORTS_CLASS),
            PORT_NAME,
        );
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
