//! Bring up the loopback interface (127.0.0.1 is configured by the kernel
//! once `lo` is up). eth0 is sandboxd's business (`configure/net.rs`), on
//! the host's `Configure`.

use std::io;

pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own; the name is
    // NUL-terminated and shorter than IFNAMSIZ.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut res = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        if res == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            res = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if res != 0 {
            return Err(err);
        }
    }
    Ok(())
}
