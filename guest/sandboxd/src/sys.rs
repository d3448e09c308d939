//! Thin safe wrappers over the libc calls sandboxd needs. Every `unsafe`
//! block of the daemon that is not about `posix_spawn` or the network
//! interface ioctls (`configure/net.rs`) lives here, so the rest of the
//! code deals in `OwnedFd`s and `io::Result`s.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turn a `-1` libc return into the current `errno`.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Take ownership of a freshly created descriptor.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: only called with descriptors this process just created and
    // that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A close-on-exec pipe, `(read end, write end)`. Both ends are blocking: the
/// child's end must be, and the caller makes its own end non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((own(fds[0]), own(fds[1])))
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we borrow; no memory involved.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        ))?;
    }
    Ok(())
}

pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a borrowed descriptor returns a new one.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    Ok(own(new))
}

pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the mode argument is unused without O_CREAT.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    Ok(own(fd))
}

/// `access(2)`: may the caller use `path` as `mode` (`F_OK`, `R_OK`...)?
pub fn access(path: &CStr, mode: libc::c_int) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; access reads nothing else.
    cvt(unsafe { libc::access(path.as_ptr(), mode) }).map(drop)
}

/// `read(2)` into possibly uninitialised memory; retries on EINTR.
pub fn read_uninit(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`; it
        // never reads it, so uninitialised memory is fine.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `&mut [u8]` and `&mut [MaybeUninit<u8>]` have the same layout,
    // and read_uninit only ever writes initialised bytes into it.
    let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    read_uninit(fd, buf)
}

/// `write(2)`; retries on EINTR.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `poll(2)`; an EINTR counts as "nothing ready" so the caller just loops.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Ignore SIGPIPE (a child closing its stdin must surface as EPIPE, not kill
/// us) and block SIGCHLD (it is consumed through a signalfd instead).
/// Must run before any thread exists; sandboxd has none.
pub fn setup_signals() -> io::Result<OwnedFd> {
    // SAFETY: plain signal-disposition and mask calls on initialised sets.
    unsafe {
        if libc::signal(libc::SIGPIPE, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD);
        let set = set.assume_init();
        cvt(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))?;
        Ok(own(fd))
    }
}

/// Empty a non-blocking signalfd; the signals themselves carry nothing we use.
pub fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 128 * 8];
    while matches!(read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Make sure descriptors 0, 1 and 2 are open (on /dev/null if need be), so
/// that no pipe we create later lands on them: posix_spawn's dup2 onto an
/// fd equal to its source would keep that fd close-on-exec.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: open with a static NUL-terminated path. Not CLOEXEC on
            // purpose: it fills the lowest free slot, which is `fd`.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Outcome of a non-blocking `waitpid` on one of our own children.
pub fn try_wait(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid writes only `status`.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        0 => None,
        r if r == pid => Some(status),
        // ECHILD: someone else reaped it (cannot happen for our own children
        // unless SIGCHLD were ignored); report a generic failure status.
        _ => Some(1 << 8),
    }
}

/// `(exit_code, signal)` as the wire reports them: 128+N when killed by N.
pub fn decode_status(status: libc::c_int) -> (i32, Option<i32>) {
    if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        (128 + sig, Some(sig))
    } else {
        (1, None)
    }
}

/// Signal a whole process group; a group that is already gone is not an error.
pub fn kill_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid > 0 {
        // SAFETY: kill has no memory effects; a negative pid names the group.
        unsafe { libc::kill(-pgid, signal) };
    }
}

fn c_path(p: &str) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `mount(2)`; `data` is the filesystem's option string.
pub fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let (src, target) = (c_path(src)?, c_path(target)?);
    let fstype = fstype.map(c_path).transpose()?;
    let data = data.map(c_path).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NUL-terminated or null, as mount(2) takes them.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
    .map(drop)
}

/// `umount2(path, MNT_DETACH)`: gone from the namespace at once, whatever
/// still uses it (never waits on a filesystem).
pub fn umount_detach(path: &str) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is NUL-terminated.
    cvt(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// Set CLOCK_REALTIME to `ns` nanoseconds since the Unix epoch.
pub fn set_realtime(ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec we pass.
    cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// `RNDADDENTROPY` (`_IOW('R', 0x03, int[2])`) and `RNDRESEEDCRNG`
/// (`_IO('R', 0x07)`) from linux/random.h; libc does not define them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mix `seed` into the kernel's input pool, credited as entropy, then make
/// the CRNG reseed from it now rather than at its next scheduled reseed:
/// two guests resumed from one memory image diverge at once.
pub fn add_entropy_and_reseed(seed: &[u8]) -> io::Result<()> {
    let fd = open(c"/dev/urandom", libc::O_WRONLY)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = seed.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = (seed.len() * 8) as u32;
    info[1] = seed.len() as u32;
    for (i, chunk) in seed.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: `info` is a rand_pool_info whose buf_size matches the bytes
    // that follow the header; the kernel only reads it.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), RNDRESEEDCRNG as _) }).map(drop)
}

/// Wait until process `pid` has exited (zombie or reaped), at most
/// `timeout_ms`; `Ok(false)` if it is still running. Works for processes
/// that are not our children (pidfd_open, Linux 5.3+).
pub fn wait_gone(pid: libc::pid_t, timeout_ms: libc::c_int) -> io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // EINVAL (for a pid > 0): the pid is still known but its process
            // is gone, exited and reaped (by its watcher) a moment ago.
            Some(libc::ESRCH) => Ok(true),
            Some(libc::EINVAL) if pid > 0 => Ok(true),
            _ => Err(e),
        };
    }
    let fd = own(fd as RawFd);
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if poll(&mut p, left.as_millis() as libc::c_int)? > 0 {
            return Ok(true);
        }
        if left.is_zero() {
            return Ok(false);
        }
    }
}

/// The text of an errno without std's " (os error N)" suffix.
pub fn errno_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_drops_the_suffix() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(errno_text(&e), "No such file or directory");
    }

    #[test]
    fn status_decoding() {
        assert_eq!(decode_status(7 << 8), (7, None));
        assert_eq!(decode_status(9), (137, Some(9)));
    }
}
