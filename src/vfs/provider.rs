//! The [`Provider`] trait: what a filesystem served to the guest must do.
//!
//! Providers are path-based, like upstream's `VirtualProvider`: every path is
//! absolute and normalized (see [`super::path`]), rooted at the provider's own
//! root (`/` = mount root). Inodes and file handles on the wire belong to the
//! fs RPC server, not to providers. Native providers (memory, realfs,
//! readonly, shadow) and the adapter for providers written in JavaScript all
//! implement this one trait.

use std::time::SystemTime;

use async_trait::async_trait;

use super::{VfsError, VfsResult};

pub use gondolin_wire::fs::{FileKind, StatFs};

/// What `stat`/`lstat` report about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub kind: FileKind,
    /// Permission bits only (`mode & 0o7777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// The provider's own identity for the object, if it has one (realfs: the
    /// host inode; memory: node id). Hard links share it. 0 = none.
    pub ino: u64,
}

impl Metadata {
    /// Attributes of a synthetic directory (mount parents, empty roots).
    pub fn synthetic_dir() -> Self {
        let now = SystemTime::now();
        Metadata {
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            size: 4096,
            atime: now,
            mtime: now,
            ctime: now,
            ino: 0,
        }
    }
}

/// One entry of a directory listing (without `.` and `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
}

/// How to open a file, decoded from Linux `O_*` flags or Node flag strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    /// Every write goes to the end of the file (offsets are ignored).
    pub append: bool,
    pub truncate: bool,
    pub create: bool,
    /// With `create`: fail with EEXIST if the path exists.
    pub exclusive: bool,
    /// Permission bits for a created file.
    pub mode: u32,
}

impl OpenOptions {
    pub const fn read_only() -> Self {
        OpenOptions {
            read: true,
            write: false,
            append: false,
            truncate: false,
            create: false,
            exclusive: false,
            mode: 0o644,
        }
    }

    /// Decode Linux `open(2)` flags (`O_ACCMODE`, `O_APPEND`, `O_TRUNC`,
    /// `O_CREAT`, `O_EXCL`); other bits are ignored.
    pub fn from_linux_flags(flags: i32, mode: u32) -> Self {
        const O_ACCMODE: i32 = 3;
        const O_WRONLY: i32 = 1;
        const O_RDWR: i32 = 2;
        const O_CREAT: i32 = 0o100;
        const O_EXCL: i32 = 0o200;
        const O_TRUNC: i32 = 0o1000;
        const O_APPEND: i32 = 0o2000;
        let acc = flags & O_ACCMODE;
        OpenOptions {
            read: acc != O_WRONLY,
            write: acc == O_WRONLY || acc == O_RDWR,
            append: flags & O_APPEND != 0,
            truncate: flags & O_TRUNC != 0,
            create: flags & O_CREAT != 0,
            exclusive: flags & O_EXCL != 0,
            mode: mode & 0o7777,
        }
    }

    /// Decode a Node flag string: `r`, `r+`, `w`, `w+`, `a`, `a+`, with an
    /// optional `x` (exclusive) and `s` (sync, ignored).
    pub fn from_node_flags(flags: &str, mode: u32) -> VfsResult<Self> {
        let base: String = flags.chars().filter(|c| *c != 's').collect();
        let exclusive = base.contains('x');
        let base = base.replace('x', "");
        let mut o = OpenOptions {
            mode: mode & 0o7777,
            exclusive,
            ..Default::default()
        };
        match base.as_str() {
            "r" => o.read = true,
            "r+" => {
                o.read = true;
                o.write = true;
            }
            "w" | "w+" => {
                o.write = true;
                o.read = base == "w+";
                o.create = true;
                o.truncate = true;
            }
            "a" | "a+" => {
                o.write = true;
                o.read = base == "a+";
                o.create = true;
                o.append = true;
            }
            _ => return Err(VfsError::invalid(format!("invalid open flags {flags:?}"))),
        }
        Ok(o)
    }

    /// The Node flag string closest to these options (what JS providers
    /// get). Node has no flag for "create without truncating"; callers that
    /// need it create the file first.
    pub fn node_flags(&self) -> &'static str {
        let x = self.create && self.exclusive;
        match (self.append, self.truncate, self.write, self.read, x) {
            (true, _, _, true, false) => "a+",
            (true, _, _, false, false) => "a",
            (true, _, _, true, true) => "ax+",
            (true, _, _, false, true) => "ax",
            (false, true, _, true, false) => "w+",
            (false, true, _, false, false) => "w",
            (false, _, true, true, true) => "wx+",
            (false, _, true, false, true) => "wx",
            (false, _, true, _, false) => "r+",
            (false, _, false, _, _) => "r",
        }
    }
}

/// Times to set with [`Provider::set_times`]; `None` leaves a time alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetTimes {
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// How long the guest kernel may cache what this provider reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub attr_ttl_ms: u32,
    pub entry_ttl_ms: u32,
    pub negative_ttl_ms: u32,
    /// Page cache of file data may survive a close/reopen.
    pub keep_data_cache: bool,
}

impl CachePolicy {
    /// For providers that can change behind the server's back (the host edits
    /// files, a JS provider computes content): short TTLs, no kept data.
    pub const SHORT: CachePolicy = CachePolicy {
        attr_ttl_ms: 1000,
        entry_ttl_ms: 1000,
        negative_ttl_ms: 250,
        keep_data_cache: false,
    };
    /// For providers that only change through the server, which invalidates
    /// the guest's caches itself.
    pub const LONG: CachePolicy = CachePolicy {
        attr_ttl_ms: 60_000,
        entry_ttl_ms: 60_000,
        negative_ttl_ms: 10_000,
        keep_data_cache: true,
    };
}

/// Synthetic `statfs` for providers without a real backing filesystem.
pub const SYNTHETIC_STATFS: StatFs = StatFs {
    blocks: 16_777_216,
    bfree: 16_777_216,
    bavail: 16_777_216,
    files: 16_777_216,
    ffree: 16_777_216,
    bsize: 4096,
    namelen: 255,
    frsize: 4096,
};

/// An open file. Dropping a handle without `close` must not leak anything.
#[async_trait]
pub trait FileHandle: Send + Sync {
    /// Read up to `len` bytes at `offset`; fewer (or none) at end of file.
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>>;
    /// Write `data` at `offset` (at the end for append handles); returns the
    /// bytes written.
    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize>;
    async fn stat(&self) -> VfsResult<Metadata>;
    async fn truncate(&self, len: u64) -> VfsResult<()>;
    /// `fchmod`, `fchown`, `futimens`: what the server uses for a file the
    /// guest still holds open after its name is gone (unlinked, or renamed
    /// over). Same rules as the provider's path-based calls.
    async fn chmod(&self, _mode: u32) -> VfsResult<()> {
        Err(VfsError::nosys("fchmod"))
    }
    async fn chown(&self, _uid: Option<u32>, _gid: Option<u32>) -> VfsResult<()> {
        Err(VfsError::nosys("fchown"))
    }
    async fn set_times(&self, _times: SetTimes) -> VfsResult<()> {
        Err(VfsError::nosys("futimens"))
    }
    async fn sync(&self) -> VfsResult<()> {
        Ok(())
    }
    async fn close(&self) -> VfsResult<()> {
        Ok(())
    }
}

/// A filesystem served to the guest. Methods a provider does not support
/// keep their default, which fails with `ENOSYS` (the server and the
/// wrappers treat `ENOSYS` as "not supported" and fall back where the spec
/// says so).
/// Where a provider reports paths changed behind the server's back; it
/// returns false once its subscriber is gone.
pub type ChangeSink = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[async_trait]
pub trait Provider: Send + Sync {
    /// True if every mutation fails with EROFS.
    fn readonly(&self) -> bool {
        false
    }
    fn supports_symlinks(&self) -> bool {
        false
    }
    /// How long the guest may cache what it learns about `path`.
    fn cache_policy(&self, _path: &str) -> CachePolicy {
        CachePolicy::SHORT
    }
    /// Hear about changes made behind the server's back (another program
    /// editing a host directory): `sink(path)` for every changed path, for
    /// as long as it returns true. Providers that cannot tell ignore this;
    /// their cache policy alone bounds how stale the guest's view gets.
    fn subscribe(&self, _sink: ChangeSink) {}

    /// Follows symlinks.
    async fn stat(&self, path: &str) -> VfsResult<Metadata>;
    /// Does not follow a final symlink.
    async fn lstat(&self, path: &str) -> VfsResult<Metadata>;
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>>;
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>>;
    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()>;
    async fn rmdir(&self, path: &str) -> VfsResult<()>;
    async fn unlink(&self, path: &str) -> VfsResult<()>;
    /// Replaces an existing `to` as `rename(2)` does.
    async fn rename(&self, from: &str, to: &str) -> VfsResult<()>;

    async fn link(&self, _existing: &str, _new_path: &str) -> VfsResult<()> {
        Err(VfsError::nosys("link"))
    }
    async fn symlink(&self, _target: &str, _path: &str) -> VfsResult<()> {
        Err(VfsError::nosys("symlink"))
    }
    async fn readlink(&self, _path: &str) -> VfsResult<String> {
        Err(VfsError::nosys("readlink"))
    }
    /// Truncate or extend the file at `path` (follows symlinks).
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        let h = self
            .open(
                path,
                OpenOptions {
                    write: true,
                    ..OpenOptions::read_only()
                },
            )
            .await?;
        let r = h.truncate(len).await;
        h.close().await?;
        r
    }
    async fn chmod(&self, _path: &str, _mode: u32) -> VfsResult<()> {
        Err(VfsError::nosys("chmod"))
    }
    async fn chown(&self, _path: &str, _uid: Option<u32>, _gid: Option<u32>) -> VfsResult<()> {
        Err(VfsError::nosys("chown"))
    }
    async fn set_times(&self, _path: &str, _times: SetTimes) -> VfsResult<()> {
        Err(VfsError::nosys("utimes"))
    }
    async fn statfs(&self, _path: &str) -> VfsResult<StatFs> {
        Ok(SYNTHETIC_STATFS)
    }
    /// `mask` as `access(2)`; ENOSYS lets the server check permission bits.
    async fn access(&self, _path: &str, _mask: i32) -> VfsResult<()> {
        Err(VfsError::nosys("access"))
    }
    /// Resolve symlinks to a provider path (used to stop symlink bypass of
    /// shadowed paths). Providers without symlinks return the path.
    async fn realpath(&self, path: &str) -> VfsResult<String> {
        self.stat(path).await?;
        Ok(path.to_string())
    }
    /// Release resources when the VM closes.
    async fn close(&self) -> VfsResult<()> {
        Ok(())
    }
}
