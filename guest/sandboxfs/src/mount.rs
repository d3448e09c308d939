//! Mount the FUSE filesystem ourselves: open /dev/fuse, mount(2) with its
//! descriptor, and hand the descriptor to fuser. No fusermount binary, no
//! libfuse.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::mount::{mount, MsFlags};

pub fn mount_fuse(target: &str) -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd = OwnedFd::from(dev);
    // No `default_permissions`: the host checks permissions itself, which
    // spares a GETATTR of the directory before each create/unlink.
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        fd.as_raw_fd()
    );
    mount(
        Some("sandboxfs"),
        target,
        Some("fuse.sandboxfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting FUSE on {target}: {e}")))?;
    Ok(fd)
}
