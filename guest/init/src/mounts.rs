//! Mounts, module loading and the switch from the initramfs to the root disk.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::say;

const NEWROOT: &str = "/newroot";
/// Where init finds sandboxd in the initramfs, and where it runs from.
const SANDBOXD_SRC: &str = "/bin/sandboxd";
pub const SANDBOXD: &str = "/run/gondolin/bin/sandboxd";
/// The same for the FUSE daemon (optional in the initramfs).
const SANDBOXFS_SRC: &str = "/bin/sandboxfs";
pub const SANDBOXFS: &str = "/run/gondolin/bin/sandboxfs";
/// How long to wait for the root disk's device node.
const DISK_WAIT: Duration = Duration::from_secs(10);

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    let _ = fs::DirBuilder::new().recursive(true).create(target);
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(io::Error::other(format!("mount {fstype} on {target}: {e}"))),
    }
}

/// /proc, /sys, /dev in the initramfs.
pub fn early() -> io::Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    Ok(())
}

/// Load the modules listed in /lib/modules/load-order (dependencies first,
/// as the image builder wrote them). Failures are reported, not fatal: a
/// module may be built in on another kernel.
pub fn load_modules() {
    let Ok(order) = fs::read_to_string("/lib/modules/load-order") else {
        return;
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/lib/modules/{name}");
        let res = fs::File::open(&path)
            .map_err(Errno::from_raw_os_error_io)
            .and_then(|f| {
                nix::kmod::finit_module(
                    &f,
                    &CString::default(),
                    nix::kmod::ModuleInitFlags::empty(),
                )
            });
        match res {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => say!("loading {name} failed: {e}"),
        }
    }
}

trait FromIo {
    fn from_raw_os_error_io(e: io::Error) -> Errno;
}
impl FromIo for Errno {
    fn from_raw_os_error_io(e: io::Error) -> Errno {
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

fn wait_for(path: &str, limit: Duration) -> io::Result<()> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > limit {
            return Err(io::Error::other(format!(
                "{path} did not appear within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Mount /dev/vda, put sandboxd on a tmpfs inside it, and make it `/`.
pub fn switch_root(readonly: bool) -> io::Result<()> {
    wait_for("/dev/vda", DISK_WAIT)?;
    let mut flags = MsFlags::MS_NOATIME;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    mnt("/dev/vda", NEWROOT, "ext4", flags, None)?;
    mnt(
        "tmpfs",
        &format!("{NEWROOT}/run"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    for (src, dst) in [(SANDBOXD_SRC, SANDBOXD), (SANDBOXFS_SRC, SANDBOXFS)] {
        if src == SANDBOXFS_SRC && !Path::new(src).exists() {
            continue;
        }
        let dst = format!("{NEWROOT}{dst}");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(Path::new(&dst).parent().unwrap())?;
        fs::copy(src, &dst)
            .map_err(|e| io::Error::other(format!("copying {src} into the root disk: {e}")))?;
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
    }

    for m in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEWROOT}{m}");
        let _ = fs::create_dir_all(&target);
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("moving {m}: {e}")))?;
    }
    // Free the initramfs copies we no longer need (it is RAM).
    let _ = fs::remove_dir_all("/lib/modules");
    let _ = fs::remove_file(SANDBOXD_SRC);
    let _ = fs::remove_file(SANDBOXFS_SRC);

    std::env::set_current_dir(NEWROOT)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| io::Error::other(format!("moving the new root onto /: {e}")))?;
    nix::unistd::chroot(".").map_err(|e| io::Error::other(format!("chroot: {e}")))?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Writable scratch space and pseudo-terminals in the new root.
pub fn late() -> io::Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    )?;
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    mnt("tmpfs", "/dev/shm", "tmpfs", nodev, Some("mode=1777"))?;
    mnt("tmpfs", "/tmp", "tmpfs", nodev, Some("mode=1777"))?;
    mnt("tmpfs", "/root", "tmpfs", nodev, Some("mode=0700"))?;
    mnt("tmpfs", "/var/tmp", "tmpfs", nodev, Some("mode=1777"))?;
    mnt("tmpfs", "/var/cache", "tmpfs", nodev, Some("mode=0755"))?;
    mnt("tmpfs", "/var/log", "tmpfs", nodev, Some("mode=0755"))?;
    for d in [
        "/tmp/.cache",
        "/tmp/.config",
        "/tmp/.local/share",
        "/run/lock",
    ] {
        let _ = fs::create_dir_all(d);
    }
    // stdio links some programs expect (normally made by udev/systemd).
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(link).exists() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    Ok(())
}

/// Bind-mount one file over another (works on a read-only root too).
pub fn bind_file(src: &str, dst: &str) -> io::Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| io::Error::other(format!("bind-mounting {src} on {dst}: {e}")))
}
