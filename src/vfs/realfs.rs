//! `RealFSProvider`: a host directory, with no way out of it.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` relative to a descriptor of the root, so `..`,
//! absolute symlinks, symlinks that climb out, chained or dangling ones and
//! symlinked intermediate directories cannot reach outside it (an escape is
//! reported as ENOENT, as upstream). One kind of absolute symlink is
//! followed, as upstream does: one whose target names a host path inside
//! the root (`link -> <root>/real.txt`). When the kernel refuses a path
//! with EXDEV, [`RealFSProvider::resolve_in_root`] walks it component by
//! component, rewrites such targets to root-relative paths (anything else,
//! including `..` above the root, stays ENOENT) and the result is opened
//! with `RESOLVE_BENEATH` again, so a race cannot turn it into an escape.
//! Operations on the final component
//! (`mkdirat`, `unlinkat`, `renameat`, ...) run against a descriptor of its
//! already-resolved parent, so there is no window between check and use.
//! Linux only (openat2 arrived in 5.6).
//!
//! The guest never decides who owns a host file or whether it runs with
//! someone else's rights: setuid and setgid bits (and sticky on files) are
//! stripped from every mode before it reaches the host, and ownership
//! changes fail with EPERM unless the provider was built with
//! [`RealFsOptions::allow_chown`].

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use gondolin_wire::fs::errno;
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};

use super::path::{file_name, parent};
use super::{
    CachePolicy, DirEntry, FileHandle, FileKind, Metadata, OpenOptions, Provider, SetTimes, StatFs,
    VfsError, VfsResult,
};

/// What the guest may do to host files beyond reading and writing them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealFsOptions {
    /// Let the guest change a file's owner or group (`chown`); off by
    /// default, since a guest running as root would hand host files to
    /// other host users.
    pub allow_chown: bool,
}

pub struct RealFSProvider {
    root: PathBuf,
    root_fd: OwnedFd,
    options: RealFsOptions,
    /// Other programs' edits, reported to the VMs mounting us.
    watch: super::watch::DirWatch,
}

/// How [`RealFSProvider::beneath_at`] reports a path the kernel refused
/// to resolve beneath the root (EXDEV from RESOLVE_BENEATH) before it has
/// been retried by hand; the retry reports what is left as ENOENT.
const ESCAPE: i32 = errno::EXDEV;

fn escape_as_enoent(e: VfsError) -> VfsError {
    if e.is(ESCAPE) {
        VfsError::noent()
    } else {
        e
    }
}

fn rel(path: &str) -> &str {
    let r = path.trim_start_matches('/');
    if r.is_empty() {
        "."
    } else {
        r
    }
}

fn cstr(s: &str) -> VfsResult<CString> {
    CString::new(s).map_err(|_| VfsError::invalid("path contains a NUL byte"))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nsecs.clamp(0, 999_999_999) as u32);
    if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(nsecs.max(0) as u64)
    }
}

fn meta(st: &FileStat) -> Metadata {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    Metadata {
        kind,
        perm: st.st_mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        ino: st.st_ino,
    }
}

impl RealFSProvider {
    pub fn new(root: &Path) -> VfsResult<Self> {
        Self::with_options(root, RealFsOptions::default())
    }

    pub fn with_options(root: &Path, options: RealFsOptions) -> VfsResult<Self> {
        if root.as_os_str().is_empty() {
            return Err(VfsError::invalid("RealFSProvider root path is empty"));
        }
        let root = std::fs::canonicalize(root).map_err(|e| {
            VfsError::with_message(
                e.raw_os_error().unwrap_or(errno::ENOENT),
                format!("{}: {e}", root.display()),
            )
        })?;
        let fd = nix::fcntl::open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| VfsError::with_message(e as i32, format!("{}: {e}", root.display())))?;
        // SAFETY: `open` returned a fresh descriptor that we now own.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let watch = super::watch::DirWatch::new(root.clone());
        Ok(RealFSProvider {
            root,
            root_fd,
            options,
            watch,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Open `path` beneath the root. `follow` = follow a final symlink.
    fn beneath(&self, path: &str, flags: OFlag, mode: u32, follow: bool) -> VfsResult<OwnedFd> {
        let first = self.beneath_at(self.root_fd.as_raw_fd(), rel(path), flags, mode, follow);
        self.or_in_root(first, path, flags, mode, follow)
    }

    /// `first` (an open of `path`), or when the kernel refused it as an
    /// escape, the same open of `path` resolved by [`Self::resolve_in_root`].
    fn or_in_root(
        &self,
        first: VfsResult<OwnedFd>,
        path: &str,
        flags: OFlag,
        mode: u32,
        follow: bool,
    ) -> VfsResult<OwnedFd> {
        match first {
            Err(e) if e.is(ESCAPE) => {
                let root = self.root_fd.as_raw_fd();
                self.resolve_in_root(path, follow)
                    .and_then(|r| self.beneath_at(root, &r, flags, mode, follow))
                    .map_err(escape_as_enoent)
            }
            r => r,
        }
    }

    /// `path` with every symlink on it replaced by what it points to, as a
    /// root-relative path, when each one stays inside the root: relative
    /// targets that do not climb above it, and absolute targets that name a
    /// host path inside it. The final component is left alone when
    /// `!follow`, and may be missing (a dangling link's target, to create).
    /// Anything else is ENOENT, as every escape.
    fn resolve_in_root(&self, path: &str, follow: bool) -> VfsResult<String> {
        const MAX_LINKS: usize = 40; // Linux's MAXSYMLINKS
        let mut done: Vec<String> = Vec::new();
        let mut todo: std::collections::VecDeque<String> =
            path.split('/').map(str::to_string).collect();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    // Every resolved prefix is a real directory (its links
                    // were expanded), so `..` is its parent.
                    done.pop().ok_or_else(VfsError::noent)?;
                    continue;
                }
                _ => {}
            }
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            done.push(c);
            let here = done.join("/");
            let fd = match self.beneath_at(self.root_fd.as_raw_fd(), &here, OFlag::O_PATH, 0, false)
            {
                Err(e) if last && e.is(errno::ENOENT) => break,
                r => r?,
            };
            let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK || (last && !follow) {
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(VfsError::new(errno::ELOOP));
            }
            let target = nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "")?;
            let target = Path::new(&target);
            done.pop();
            let rest = if target.is_absolute() {
                done.clear();
                target
                    .strip_prefix(&self.root)
                    .map_err(|_| VfsError::noent())?
            } else {
                target
            };
            for part in rest.to_string_lossy().rsplit('/') {
                todo.push_front(part.to_string());
            }
        }
        Ok(if done.is_empty() {
            ".".into()
        } else {
            done.join("/")
        })
    }

    fn beneath_at(
        &self,
        dir: RawFd,
        rel: &str,
        flags: OFlag,
        mode: u32,
        follow: bool,
    ) -> VfsResult<OwnedFd> {
        let mut flags = flags | OFlag::O_CLOEXEC;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let how = OpenHow::new()
            .flags(flags)
            .mode(Mode::from_bits_truncate(mode & 0o7777))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = loop {
            match openat2(dir, rel, how) {
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                r => break r?,
            }
        };
        // SAFETY: openat2 returned a fresh descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The parent directory of `path` (resolved, beneath the root) and the
    /// final name.
    fn parent_dir<'a>(&self, path: &'a str) -> VfsResult<(OwnedFd, &'a str)> {
        let name = file_name(path);
        if name.is_empty() {
            return Err(VfsError::new(errno::EBUSY));
        }
        let fd = self.beneath(parent(path), OFlag::O_PATH | OFlag::O_DIRECTORY, 0, true)?;
        Ok((fd, name))
    }

    fn path_fd(&self, path: &str, follow: bool) -> VfsResult<OwnedFd> {
        self.beneath(path, OFlag::O_PATH, 0, follow)
    }
}

/// The permission bits the host may get for a guest-chosen `mode`: never
/// setuid or setgid (a host process running as root would otherwise run
/// guest-planted programs as root), sticky only on directories (where it
/// restricts deletion; on files it means nothing good).
pub fn host_mode(mode: u32, dir: bool) -> u32 {
    if dir {
        mode & 0o1777
    } else {
        mode & 0o777
    }
}

fn is_dir(fd: &impl AsRawFd) -> VfsResult<bool> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// `chmod` on `fd` (an O_PATH descriptor works) with the bits stripped.
fn chmod_fd(fd: &impl AsRawFd, mode: u32) -> VfsResult<()> {
    let mode = host_mode(mode, is_dir(fd)?);
    nix::sys::stat::fchmodat(
        None,
        proc_fd(fd).as_str(),
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?;
    Ok(())
}

/// `chown` on `fd`: EPERM for an actual change unless `allowed` (setting
/// the owner it already has changes nothing and is fine: `cp -p`, `tar`).
fn chown_fd(fd: &impl AsRawFd, uid: Option<u32>, gid: Option<u32>, allowed: bool) -> VfsResult<()> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    let changes = uid.is_some_and(|u| u != st.st_uid) || gid.is_some_and(|g| g != st.st_gid);
    if !changes {
        return Ok(());
    }
    if !allowed {
        return Err(VfsError::with_message(
            errno::EPERM,
            "ownership changes are off for this RealFSProvider (allowChown)",
        ));
    }
    let c = cstr("")?;
    // SAFETY: valid fd and NUL-terminated empty path with AT_EMPTY_PATH.
    let r = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH,
        )
    };
    Errno::result(r)?;
    Ok(())
}

/// `utimensat` on `fd` through its /proc name.
fn set_times_fd(fd: &impl AsRawFd, times: SetTimes) -> VfsResult<()> {
    let ts = |t: Option<SystemTime>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(_) => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        },
    };
    let spec = [ts(times.atime), ts(times.mtime)];
    let p = cstr(&proc_fd(fd))?;
    // SAFETY: valid path and a two-element timespec array.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), spec.as_ptr(), 0) };
    Errno::result(r)?;
    Ok(())
}

fn fstat(fd: &OwnedFd) -> VfsResult<Metadata> {
    Ok(meta(&nix::sys::stat::fstat(fd.as_raw_fd())?))
}

/// `/proc/self/fd/N`: the kernel's name for an O_PATH descriptor, for the
/// calls that cannot take one directly (chmod, utimensat).
fn proc_fd(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn kind_of(t: Option<nix::dir::Type>) -> Option<FileKind> {
    use nix::dir::Type;
    match t? {
        Type::File => Some(FileKind::File),
        Type::Directory => Some(FileKind::Dir),
        Type::Symlink => Some(FileKind::Symlink),
        _ => Some(FileKind::Other),
    }
}

#[async_trait]
impl Provider for RealFSProvider {
    fn supports_symlinks(&self) -> bool {
        true
    }
    /// Other host processes edit these files: the watch reports their
    /// edits at once, and short TTLs bound how long the guest can see a
    /// stale view if it misses one (or cannot be set up).
    fn cache_policy(&self, _path: &str) -> CachePolicy {
        CachePolicy::SHORT
    }
    fn subscribe(&self, sink: super::ChangeSink) {
        self.watch.subscribe(sink)
    }

    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        fstat(&self.path_fd(path, true)?)
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        fstat(&self.path_fd(path, false)?)
    }

    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        let fd = self.beneath(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0, true)?;
        let raw = fd.as_raw_fd();
        let mut dir = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match kind_of(e.file_type()) {
                Some(k) => k,
                None => {
                    nix::sys::stat::fstatat(Some(raw), e.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map(|st| meta(&st).kind)
                        .unwrap_or(FileKind::Other)
                }
            };
            out.push(DirEntry { name, kind });
        }
        Ok(out)
    }

    async fn open(&self, path: &str, o: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        // O_NONBLOCK: opening a FIFO (or a device) in the host directory
        // would otherwise block a runtime thread until a peer appears, and a
        // few such opens would stall every VM of the process. Such files are
        // then refused below; for files and directories the flag is inert.
        let mut flags = OFlag::O_NONBLOCK
            | match (o.read, o.write) {
                (_, false) => OFlag::O_RDONLY,
                (false, true) => OFlag::O_WRONLY,
                (true, true) => OFlag::O_RDWR,
            };
        if o.append {
            flags |= OFlag::O_APPEND;
        }
        if o.truncate && o.write {
            flags |= OFlag::O_TRUNC;
        }
        let fd = if o.create {
            flags |= OFlag::O_CREAT;
            if o.exclusive {
                flags |= OFlag::O_EXCL;
            }
            let (dir, name) = self.parent_dir(path)?;
            let mode = host_mode(o.mode, false);
            let follow = !o.exclusive;
            let first = self.beneath_at(dir.as_raw_fd(), name, flags, mode, follow);
            self.or_in_root(first, path, flags, mode, follow)?
        } else {
            self.beneath(path, flags, 0, true)?
        };
        let file = File::from(fd);
        let kind = file.metadata().map_err(VfsError::from)?.file_type();
        if o.write && kind.is_dir() {
            return Err(VfsError::new(errno::EISDIR));
        }
        if !kind.is_file() && !kind.is_dir() {
            return Err(VfsError::with_message(
                libc::ENXIO,
                format!("{path}: only regular files and directories are served"),
            ));
        }
        Ok(Box::new(RealHandle {
            file,
            allow_chown: self.options.allow_chown,
        }))
    }

    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()> {
        let (dir, name) = self.parent_dir(path)?;
        nix::sys::stat::mkdirat(
            Some(dir.as_raw_fd()),
            name,
            Mode::from_bits_truncate(host_mode(mode, true)),
        )?;
        Ok(())
    }

    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        let (dir, name) = self.parent_dir(path)?;
        nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )?;
        Ok(())
    }

    async fn unlink(&self, path: &str) -> VfsResult<()> {
        let (dir, name) = self.parent_dir(path)?;
        nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )?;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        let (a, an) = self.parent_dir(from)?;
        let (b, bn) = self.parent_dir(to)?;
        nix::fcntl::renameat(Some(a.as_raw_fd()), an, Some(b.as_raw_fd()), bn)?;
        Ok(())
    }

    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        let (a, an) = self.parent_dir(existing)?;
        let (b, bn) = self.parent_dir(new_path)?;
        nix::unistd::linkat(
            Some(a.as_raw_fd()),
            an,
            Some(b.as_raw_fd()),
            bn,
            AtFlags::empty(),
        )?;
        Ok(())
    }

    async fn symlink(&self, target: &str, path: &str) -> VfsResult<()> {
        let (dir, name) = self.parent_dir(path)?;
        nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name)?;
        Ok(())
    }

    async fn readlink(&self, path: &str) -> VfsResult<String> {
        let (dir, name) = self.parent_dir(path)?;
        let t = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name)?;
        Ok(t.to_string_lossy().into_owned())
    }

    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        // O_NONBLOCK: a FIFO must not block the thread (see `open`).
        let fd = self.beneath(path, OFlag::O_WRONLY | OFlag::O_NONBLOCK, 0, true)?;
        nix::unistd::ftruncate(fd, len as i64)?;
        Ok(())
    }

    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        chmod_fd(&self.path_fd(path, true)?, mode)
    }

    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        chown_fd(
            &self.path_fd(path, true)?,
            uid,
            gid,
            self.options.allow_chown,
        )
    }

    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        set_times_fd(&self.path_fd(path, true)?, times)
    }

    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        let fd = self.path_fd(path, true)?;
        let s = nix::sys::statvfs::fstatvfs(fd.as_fd())?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }

    /// Only whether `path` resolves (inside the root): permission bits are
    /// checked by the caller against its own credentials (the guest
    /// caller's in the server, the host process's for `access()` from JS),
    /// never against this process's, which may be root.
    async fn access(&self, path: &str, _mask: i32) -> VfsResult<()> {
        self.path_fd(path, true)?;
        Err(VfsError::nosys("access"))
    }

    async fn realpath(&self, path: &str) -> VfsResult<String> {
        let fd = self.path_fd(path, true)?;
        let host = std::fs::read_link(proc_fd(&fd))?;
        let inner = host
            .strip_prefix(&self.root)
            .map_err(|_| VfsError::noent())?;
        Ok(format!("/{}", inner.to_string_lossy()).replace("//", "/"))
    }
}

struct RealHandle {
    file: File,
    allow_chown: bool,
}

#[async_trait]
impl FileHandle for RealHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }
    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        // With O_APPEND, Linux pwrite appends whatever the offset.
        loop {
            match self.file.write_at(data, offset) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => return Ok(r?),
            }
        }
    }
    async fn stat(&self) -> VfsResult<Metadata> {
        Ok(meta(&nix::sys::stat::fstat(self.file.as_raw_fd())?))
    }
    async fn truncate(&self, len: u64) -> VfsResult<()> {
        Ok(self.file.set_len(len)?)
    }
    async fn chmod(&self, mode: u32) -> VfsResult<()> {
        chmod_fd(&self.file, mode)
    }
    async fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        chown_fd(&self.file, uid, gid, self.allow_chown)
    }
    async fn set_times(&self, times: SetTimes) -> VfsResult<()> {
        set_times_fd(&self.file, times)
    }
    async fn sync(&self) -> VfsResult<()> {
        Ok(self.file.sync_data()?)
    }
}

#[cfg(test)]
#[path = "realfs_tests.rs"]
mod tests;
