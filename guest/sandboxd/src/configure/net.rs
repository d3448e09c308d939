//! The guest's network, on a `Configure` with `net`: eth0's address, route
//! and resolver, and trust in the host's MITM CA. Both may run again on a
//! guest already configured (a resumed memory snapshot), so each step is
//! idempotent: an existing route is fine, and files are bound over their
//! targets once, not stacked.

use std::io;

use crate::sys;

/// The system CA bundle our merged copy is bound over.
const SYSTEM: &str = "/etc/ssl/certs/ca-certificates.crt";

const GUEST_IP: [u8; 4] = [192, 168, 127, 3];
const NETMASK: [u8; 4] = [255, 255, 255, 0];
const GATEWAY: [u8; 4] = [192, 168, 127, 1];

fn sockaddr(ip: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the
    // kernel ABI passes IPv4 addresses in ifreq/rtentry.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Give eth0 the guest address, a default route via the host's stack and
/// a resolver: static, because the host's DHCP answer is fixed anyway and
/// a DHCP client would cost a process start and a round trip.
pub fn eth0_up() -> io::Result<()> {
    // The NIC registers while virtio_net probes; allow a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !std::path::Path::new("/sys/class/net/eth0").exists() {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other("no eth0 (virtio_net not loaded?)"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: ioctls on zeroed structs we own; names are NUL-terminated.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let check = |r: libc::c_int, what: &str| -> io::Result<()> {
            if r < 0 {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(io::Error::other(format!("{what}: {e}")));
            }
            Ok(())
        };
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"eth0\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        req.ifr_ifru.ifru_addr = sockaddr(GUEST_IP);
        check(
            libc::ioctl(fd, libc::SIOCSIFADDR as _, &req),
            "setting the address",
        )?;
        req.ifr_ifru.ifru_netmask = sockaddr(NETMASK);
        check(
            libc::ioctl(fd, libc::SIOCSIFNETMASK as _, &req),
            "setting the netmask",
        )?;
        // Must match the host stack's MTU (gondolin::net::MTU).
        req.ifr_ifru.ifru_mtu = 65_520;
        check(
            libc::ioctl(fd, libc::SIOCSIFMTU as _, &req),
            "setting the MTU",
        )?;
        check(
            libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req),
            "reading flags",
        )?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req),
            "bringing eth0 up",
        )?;
        let mut rt: libc::rtentry = std::mem::zeroed();
        rt.rt_dst = sockaddr([0, 0, 0, 0]);
        rt.rt_genmask = sockaddr([0, 0, 0, 0]);
        rt.rt_gateway = sockaddr(GATEWAY);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        // A guest configured before keeps its route: EEXIST is success.
        let r = libc::ioctl(fd, libc::SIOCADDRT as _, &rt);
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            check(r, "adding the default route")?;
        }
        libc::close(fd);
    }
    std::fs::create_dir_all("/run/gondolin")?;
    std::fs::write("/run/gondolin/resolv.conf", "nameserver 192.168.127.1\n")?;
    rebind_file("/run/gondolin/resolv.conf", "/etc/resolv.conf")
}

/// The MITM CA the host serves at /etc/gondolin/mitm/ca.crt, merged into
/// the system bundle (bind-mounted over it, so curl, git, python and
/// openssl trust it) plus the environment variables other runtimes read
/// (empty when there is no CA).
pub fn trust_mitm_ca() -> Vec<(String, String)> {
    const CA: &str = "/etc/gondolin/mitm/ca.crt";
    const MERGED: &str = "/run/gondolin/ca-certificates.crt";
    const COPY: &str = "/run/gondolin/mitm-ca.crt";
    let Ok(ca) = std::fs::read_to_string(CA) else {
        return Vec::new();
    };
    if !ca.contains("BEGIN CERTIFICATE") {
        return Vec::new();
    }
    // The system bundle as shipped, not our merged copy bound over it by an
    // earlier configure.
    let _ = sys::umount_detach(SYSTEM);
    let system = std::fs::read_to_string(SYSTEM).unwrap_or_default();
    let merged = format!("{}\n{}", system.trim_end(), ca);
    let _ = std::fs::create_dir_all("/run/gondolin");
    if std::fs::write(MERGED, merged).is_err() || std::fs::write(COPY, &ca).is_err() {
        return Vec::new();
    }
    if std::path::Path::new(SYSTEM).exists() {
        if let Err(e) = rebind_file(MERGED, SYSTEM) {
            eprintln!("sandboxd: trusting the MITM CA: {e}");
        }
    }
    [
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ]
    .iter()
    .map(|k| (k.to_string(), MERGED.to_string()))
    .chain([
        ("NODE_EXTRA_CA_CERTS".to_string(), COPY.to_string()),
        // uv (0.9+) reads the system store, which now holds the MITM CA.
        ("UV_SYSTEM_CERTS".to_string(), "true".to_string()),
    ])
    .collect()
}

/// Undo [`trust_mitm_ca`]'s bind (a guest reconfigured without network).
pub fn forget_mitm_ca() {
    let _ = sys::umount_detach(SYSTEM);
}

/// Bind-mount one file over another (works on a read-only root too),
/// replacing a bind an earlier configure put there.
fn rebind_file(src: &str, dst: &str) -> io::Result<()> {
    // EINVAL: nothing was mounted there yet.
    let _ = sys::umount_detach(dst);
    sys::mount(src, dst, None, libc::MS_BIND, None)
        .map_err(|e| io::Error::other(format!("bind-mounting {src} on {dst}: {e}")))
}
