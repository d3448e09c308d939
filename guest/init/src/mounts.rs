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

/// One scratch tmpfs: where, and its mount data (`mode=..[,size=..]`).
#[derive(Debug, PartialEq, Eq)]
pub struct Scratch {
    pub path: String,
    pub data: String,
}

/// The built-in scratch set, used when the host sends no `gondolin.tmpfs=`.
const DEFAULT_SCRATCH: [(&str, &str); 5] = [
    ("/tmp", "mode=1777"),
    ("/root", "mode=0700"),
    ("/var/tmp", "mode=1777"),
    ("/var/cache", "mode=0755"),
    ("/var/log", "mode=0755"),
];

fn valid_size(v: &str) -> bool {
    let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    v.len() - digits.len() <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

fn valid_mode(v: &str) -> bool {
    (3..=4).contains(&v.len()) && v.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

/// One `path[:size=S][:mode=M]` item of `gondolin.tmpfs=`; None if malformed.
fn scratch_item(item: &str) -> Option<Scratch> {
    let mut parts = item.split(':');
    let path = parts.next()?;
    let reserved = ["/proc", "/sys", "/dev", "/run"]
        .iter()
        .any(|r| path == *r || path.starts_with(&format!("{r}/")));
    if !path.starts_with('/') || path == "/" || path.split('/').any(|c| c == "..") || reserved {
        return None;
    }
    let (mut mode, mut size) = ("1777", None);
    for opt in parts {
        match opt.split_once('=')? {
            ("mode", v) if valid_mode(v) => mode = v,
            ("size", v) if valid_size(v) => size = Some(v),
            _ => return None,
        }
    }
    let data = match size {
        Some(s) => format!("mode={mode},size={s}"),
        None => format!("mode={mode}"),
    };
    Some(Scratch {
        path: path.to_string(),
        data,
    })
}

/// The scratch tmpfs mounts from the kernel command line (`gondolin.tmpfs=`,
/// `none` for no scratch mounts), parents first. Malformed items are
/// reported and skipped: the path then stays on the root disk.
pub fn scratch_plan(words: &[&str]) -> Vec<Scratch> {
    let Some(list) = words.iter().find_map(|w| w.strip_prefix("gondolin.tmpfs=")) else {
        return DEFAULT_SCRATCH
            .iter()
            .map(|(p, d)| Scratch {
                path: p.to_string(),
                data: d.to_string(),
            })
            .collect();
    };
    if list == "none" {
        return Vec::new();
    }
    let mut plan: Vec<Scratch> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            let s = scratch_item(item);
            if s.is_none() {
                say!("ignoring tmpfs entry {item:?}");
            }
            s
        })
        .collect();
    plan.sort_by(|a, b| a.path.cmp(&b.path));
    plan
}

/// Writable scratch space and pseudo-terminals in the new root.
pub fn late(scratch: &[Scratch]) -> io::Result<()> {
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
    for s in scratch {
        mnt("tmpfs", &s.path, "tmpfs", nodev, Some(&s.data))?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(line: &str) -> Vec<(String, String)> {
        let words: Vec<&str> = line.split_whitespace().collect();
        scratch_plan(&words)
            .into_iter()
            .map(|s| (s.path, s.data))
            .collect()
    }

    #[test]
    fn default_set_without_the_word() {
        let p = plan("console=ttyS0");
        assert_eq!(p.len(), 5);
        assert!(p.contains(&("/root".into(), "mode=0700".into())));
    }

    #[test]
    fn parses_sizes_modes_and_none() {
        assert_eq!(
            plan("gondolin.tmpfs=/var/tmp:size=25%,/tmp:size=1048576:mode=1777"),
            vec![
                ("/tmp".into(), "mode=1777,size=1048576".into()),
                ("/var/tmp".into(), "mode=1777,size=25%".into()),
            ]
        );
        assert!(plan("gondolin.tmpfs=none").is_empty());
    }

    #[test]
    fn skips_malformed_and_reserved_items() {
        for bad in [
            "rel",
            "/",
            "/proc",
            "/dev/shm",
            "/a/../b",
            "/x:size=0",
            "/x:size=1x",
            "/x:mode=rwx",
            "/x:opt=1",
            "/x:size=5%%",
        ] {
            assert!(plan(&format!("gondolin.tmpfs={bad}")).is_empty(), "{bad}");
        }
    }
}
