//! The byte stream to the host: the `gondolin.control` virtio-serial port in
//! the VM, or a unix socket (`--connect PATH`) when testing on the host.
//!
//! A virtio port outlives host connections: while nothing is connected on
//! the host side, reads return 0 and poll reports POLLHUP. So "end of file"
//! means "the host went away" and we wait for POLLHUP to clear rather than
//! exit. A unix socket connection is one host session: its end is ours.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::sys;

pub const PORT_NAME: &str = "gondolin.control";
/// Pause between checks while no host is connected.
const RETRY: Duration = Duration::from_millis(10);

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

/// Open our port (see `gondolin_wire::ports::open_virtio_port`),
/// non-blocking: the daemon polls it with everything else.
fn open_virtio() -> io::Result<OwnedFd> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).custom_flags(libc::O_NONBLOCK);
    gondolin_wire::ports::open_virtio_port(PORT_NAME, &opts).map(OwnedFd::from)
}
