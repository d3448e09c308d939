//! The one shape in which filesystem operations cross between JS and Rust,
//! in both directions: JS calling a native provider (`NativeProvider.call`)
//! and Rust calling a provider written in JS (the dispatcher function built
//! by `js/vfs.cjs`). Keeping a single request/outcome pair means one
//! conversion each way instead of one per method.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::Buffer;
use napi_derive::napi;

use gondolin::vfs::{
    errno_from_name, errno_name, DirEntry, FileKind, Metadata, StatFs, VfsError, VfsResult,
};
use gondolin_wire::fs::errno;

use super::js_callback::boundary_enum;

boundary_enum! {
    /// The filesystem operations, as `FsCall.op` spells them: the one list
    /// (the JS dispatcher in `js/vfs.cjs` checks it covers every one).
    FsOp {
        Stat = "stat",
        Lstat = "lstat",
        Readdir = "readdir",
        Open = "open",
        /// `fh`, `offset`, `length` → `data`.
        Read = "read",
        /// `fh`, `offset`, `data` → `n`.
        Write = "write",
        Fstat = "fstat",
        Ftruncate = "ftruncate",
        Fchmod = "fchmod",
        Fchown = "fchown",
        Futimes = "futimes",
        Fsync = "fsync",
        Close = "close",
        /// Whole file by path (host-side convenience; never sent by a guest).
        ReadFile = "readFile",
        WriteFile = "writeFile",
        Mkdir = "mkdir",
        Rmdir = "rmdir",
        Unlink = "unlink",
        /// `path` → `path2`.
        Rename = "rename",
        /// `path` (existing) → `path2` (new name).
        Link = "link",
        /// A link at `path` pointing to `path2`.
        Symlink = "symlink",
        Readlink = "readlink",
        Realpath = "realpath",
        Truncate = "truncate",
        Chmod = "chmod",
        Chown = "chown",
        Utimes = "utimes",
        Statfs = "statfs",
        /// `mode` is the access mask.
        Access = "access",
        /// The provider is being released (sent to JS providers only).
        CloseProvider = "closeProvider",
    }
}

/// Which paths a successful operation changed, for `FsOutcome.changed`
/// (host-made changes that guests must stop caching, `vfs.hooks` users).
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    None,
    /// `path`.
    Path,
    /// `path` and `path2` (rename, link).
    BothPaths,
    /// The path the handle `fh` was opened with.
    Handle,
}

impl FsOp {
    /// Sent by `JsProvider` to a JS provider's dispatcher: all but the
    /// whole-file conveniences, which only JS sends (to native providers).
    pub fn reaches_js(self) -> bool {
        !matches!(self, FsOp::ReadFile | FsOp::WriteFile)
    }

    pub fn changes(self) -> Changes {
        use FsOp::*;
        match self {
            WriteFile | Mkdir | Rmdir | Unlink | Symlink | Truncate | Chmod | Chown | Utimes => {
                Changes::Path
            }
            Rename | Link => Changes::BothPaths,
            Write | Ftruncate | Fchmod | Fchown | Futimes => Changes::Handle,
            Stat | Lstat | Readdir | Open | Read | Fstat | Fsync | Close | ReadFile | Readlink
            | Realpath | Statfs | Access | CloseProvider => Changes::None,
        }
    }
}

/// A filesystem operation: `op` names it; the other fields are its
/// arguments (see [`FsOp`] for which).
#[napi(object)]
pub struct FsCall {
    pub op: FsOp,
    pub path: Option<String>,
    /// Second path: `rename`/`link` destination, `symlink` target.
    pub path2: Option<String>,
    pub fh: Option<u32>,
    pub offset: Option<f64>,
    pub length: Option<f64>,
    pub mode: Option<u32>,
    pub flags: Option<String>,
    pub data: Option<Buffer>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ms: Option<f64>,
    pub mtime_ms: Option<f64>,
}

impl FsCall {
    /// `op` with no arguments yet.
    pub fn new(op: FsOp) -> Self {
        FsCall {
            op,
            path: None,
            path2: None,
            fh: None,
            offset: None,
            length: None,
            mode: None,
            flags: None,
            data: None,
            uid: None,
            gid: None,
            atime_ms: None,
            mtime_ms: None,
        }
    }
    pub fn at(op: FsOp, path: &str) -> Self {
        FsCall {
            path: Some(path.into()),
            ..FsCall::new(op)
        }
    }
    pub fn on(op: FsOp, fh: u32) -> Self {
        FsCall {
            fh: Some(fh),
            ..FsCall::new(op)
        }
    }
    pub fn path(&self) -> VfsResult<&str> {
        self.path
            .as_deref()
            .ok_or_else(|| VfsError::invalid(format!("{}: missing path", self.op.as_str())))
    }
    pub fn path2(&self) -> VfsResult<&str> {
        self.path2
            .as_deref()
            .ok_or_else(|| VfsError::invalid(format!("{}: missing second path", self.op.as_str())))
    }
    pub fn fh(&self) -> VfsResult<u32> {
        self.fh
            .ok_or_else(|| VfsError::invalid(format!("{}: missing handle", self.op.as_str())))
    }
    pub fn u64_arg(v: Option<f64>, what: &str) -> VfsResult<u64> {
        match v {
            Some(x) if (0.0..=9_007_199_254_740_991.0).contains(&x) => Ok(x as u64),
            _ => Err(VfsError::invalid(format!(
                "{what} must be a non-negative integer"
            ))),
        }
    }
}

#[napi(object)]
pub struct FsStat {
    /// "file", "dir", "symlink" or "other".
    pub kind: String,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: f64,
    pub atime_ms: f64,
    pub mtime_ms: f64,
    pub ctime_ms: f64,
    pub ino: f64,
}

#[napi(object)]
pub struct FsDirent {
    pub name: String,
    pub kind: String,
}

#[napi(object)]
pub struct FsStatfs {
    pub blocks: f64,
    pub bfree: f64,
    pub bavail: f64,
    pub files: f64,
    pub ffree: f64,
    pub bsize: u32,
    pub frsize: u32,
    pub namelen: u32,
}

/// The result of an [`FsCall`]: `errno`/`code` set on failure, else the
/// field the op produces.
#[napi(object)]
#[derive(Default)]
pub struct FsOutcome {
    pub errno: Option<i32>,
    /// Node-style code (`ENOENT`); used when `errno` is absent.
    pub code: Option<String>,
    pub message: Option<String>,
    pub stat: Option<FsStat>,
    pub entries: Option<Vec<FsDirent>>,
    pub data: Option<Buffer>,
    pub fh: Option<u32>,
    pub n: Option<f64>,
    pub target: Option<String>,
    pub statfs: Option<FsStatfs>,
    /// Paths (as the call named them) this operation changed; set by
    /// native providers on success (see [`FsOp::changes`]).
    pub changed: Option<Vec<String>>,
}

impl FsOutcome {
    pub fn err(e: &VfsError) -> Self {
        FsOutcome {
            errno: Some(e.errno),
            code: Some(errno_name(e.errno).to_string()),
            message: e.message.clone(),
            ..Default::default()
        }
    }

    /// The error this outcome carries, if any.
    pub fn error(&self) -> Option<VfsError> {
        let n = match (self.errno, self.code.as_deref()) {
            (Some(n), _) if n > 0 => n,
            (Some(n), _) if n < 0 => -n,
            (_, Some(code)) => errno_from_name(code),
            _ => return None,
        };
        Some(VfsError {
            errno: n,
            message: self.message.clone(),
        })
    }

    pub fn into_result(self) -> VfsResult<Self> {
        match self.error() {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

pub fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

pub fn kind_from_name(s: &str) -> FileKind {
    match s {
        "file" => FileKind::File,
        "dir" | "directory" => FileKind::Dir,
        "symlink" => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn ms(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

pub fn time_from_ms(v: f64) -> SystemTime {
    if !v.is_finite() {
        return UNIX_EPOCH;
    }
    let d = Duration::from_secs_f64(v.abs().min(1e15) / 1000.0);
    if v >= 0.0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

pub fn stat_to_js(m: &Metadata) -> FsStat {
    FsStat {
        kind: kind_name(m.kind).into(),
        mode: m.perm,
        nlink: m.nlink,
        uid: m.uid,
        gid: m.gid,
        size: m.size as f64,
        atime_ms: ms(m.atime),
        mtime_ms: ms(m.mtime),
        ctime_ms: ms(m.ctime),
        ino: m.ino as f64,
    }
}

pub fn stat_from_js(s: FsStat) -> Metadata {
    // JS may hand us a full st_mode (type bits included); keep permissions.
    Metadata {
        kind: kind_from_name(&s.kind),
        perm: s.mode & 0o7777,
        nlink: s.nlink.max(1),
        uid: s.uid,
        gid: s.gid,
        size: if s.size.is_finite() && s.size > 0.0 {
            s.size as u64
        } else {
            0
        },
        atime: time_from_ms(s.atime_ms),
        mtime: time_from_ms(s.mtime_ms),
        ctime: time_from_ms(s.ctime_ms),
        ino: if s.ino.is_finite() && s.ino > 0.0 {
            s.ino as u64
        } else {
            0
        },
    }
}

pub fn dirents_to_js(v: Vec<DirEntry>) -> Vec<FsDirent> {
    v.into_iter()
        .map(|e| FsDirent {
            name: e.name,
            kind: kind_name(e.kind).into(),
        })
        .collect()
}

pub fn statfs_to_js(s: &StatFs) -> FsStatfs {
    FsStatfs {
        blocks: s.blocks as f64,
        bfree: s.bfree as f64,
        bavail: s.bavail as f64,
        files: s.files as f64,
        ffree: s.ffree as f64,
        bsize: s.bsize,
        frsize: s.frsize,
        namelen: s.namelen,
    }
}

/// Provider-supplied statfs values, clamped to sane numbers.
pub fn statfs_from_js(s: FsStatfs) -> StatFs {
    let n = |v: f64| {
        if v.is_finite() && v >= 0.0 {
            v as u64
        } else {
            0
        }
    };
    let bsize = if s.bsize == 0 { 4096 } else { s.bsize };
    StatFs {
        blocks: n(s.blocks),
        bfree: n(s.bfree).min(n(s.blocks)),
        bavail: n(s.bavail).min(n(s.blocks)),
        files: n(s.files),
        ffree: n(s.ffree).min(n(s.files)),
        bsize,
        namelen: if s.namelen == 0 {
            255
        } else {
            s.namelen.min(255)
        },
        frsize: if s.frsize == 0 { bsize } else { s.frsize },
    }
}

/// An outcome that must carry `what`, else the JS provider broke the contract.
pub fn missing(op: FsOp, what: &str) -> VfsError {
    VfsError::with_message(
        errno::EIO,
        format!("provider {} returned no {what}", op.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_one_distinct_js_spelling() {
        let mut names: Vec<&str> = FsOp::ALL.iter().map(|op| op.as_str()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(FsOp::ReadFile.as_str(), "readFile");
        assert_eq!(FsOp::CloseProvider.as_str(), "closeProvider");
    }

    #[test]
    fn mutations_report_their_paths_and_reads_none() {
        use Changes::*;
        let expect = [
            (FsOp::Stat, None),
            (FsOp::Read, None),
            (FsOp::Open, None),
            (FsOp::WriteFile, Path),
            (FsOp::Symlink, Path),
            (FsOp::Rename, BothPaths),
            (FsOp::Link, BothPaths),
            (FsOp::Write, Handle),
            (FsOp::Futimes, Handle),
        ];
        for (op, changes) in expect {
            assert_eq!(op.changes(), changes, "{op:?}");
        }
    }

    #[test]
    fn only_host_side_whole_file_ops_stay_out_of_js_providers() {
        let kept: Vec<FsOp> = FsOp::ALL
            .iter()
            .copied()
            .filter(|op| !op.reaches_js())
            .collect();
        assert_eq!(kept, [FsOp::ReadFile, FsOp::WriteFile]);
    }
}
