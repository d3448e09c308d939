//! Pseudo-terminals for `Exec::pty`. The parent keeps only the master; the
//! child opens the slave by path itself, after `setsid`, so the open makes it
//! the child's controlling terminal (what `TIOCSCTTY` would do, but possible
//! as a posix_spawn file action, which keeps pty execs on the vfork path).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys::{self, cvt};

pub struct Pty {
    pub master: OwnedFd,
    /// `/dev/pts/N`, for the child to open.
    pub slave_path: CString,
}

pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    let master = sys::open(c"/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)?;
    let fd = master.as_raw_fd();
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt take a pty master fd; ptsname_r writes a
    // NUL-terminated name into `name`, bounded by its length.
    unsafe {
        cvt(libc::grantpt(fd))?;
        cvt(libc::unlockpt(fd))?;
        let r = libc::ptsname_r(fd, name.as_mut_ptr(), name.len());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let slave_path = unsafe { CStr::from_ptr(name.as_ptr()) }.to_owned();
    set_size(master.as_fd(), rows, cols)?;
    Ok(Pty { master, slave_path })
}

/// TIOCSWINSZ on the master; the kernel sends SIGWINCH to the foreground group.
pub fn set_size(master: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer we pass.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}
