//! The byte stream to the host: the `gondolin.fs` virtio-serial port, or a
//! unix socket (`--connect PATH`) when testing on the host. Blocking I/O:
//! one reader thread, writers serialized by a mutex.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::net::UnixStream;

use gondolin_wire::ports::open_virtio_port;

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
            let mut opts = OpenOptions::new();
            opts.read(true).write(true);
            let f = open_virtio_port(name, &opts)?;
            Ok(Transport {
                writer: f.try_clone()?,
                reader: f,
                reconnects: true,
            })
        }
    }
}
