//! `vm.fs` on guest paths (outside the VFS): typed calls to sandboxd, one
//! per method. A failed syscall is data, not an exception: the outcome
//! carries the guest's errno number and its name, and `js/fs.cjs` builds the
//! Node-style error (`code`, negative `errno`) from them. Only a lost
//! connection or a protocol violation rejects.

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;

use super::error::{spawn_coded, JsFailure};
use super::vm::NativeVm;
use gondolin::control::{errno_name, DirEntry, EntryKind, FsStat, GuestFsError, Time};
use gondolin::error::ErrorCode;

/// What kind of object a directory entry is.
#[napi(string_enum = "camelCase")]
pub enum GuestEntryKind {
    File,
    Dir,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
    Unknown,
}

/// `struct stat` of a guest path; times in milliseconds since the epoch.
#[napi(object)]
pub struct GuestStat {
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub dev: f64,
    pub ino: f64,
    pub nlink: f64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: f64,
    /// Bytes.
    pub size: f64,
    pub blksize: f64,
    /// 512-byte blocks.
    pub blocks: f64,
    pub atime_ms: f64,
    pub mtime_ms: f64,
    pub ctime_ms: f64,
}

#[napi(object)]
pub struct GuestDirent {
    /// The name; bytes that are not UTF-8 become U+FFFD.
    pub name: String,
    pub kind: GuestEntryKind,
}

/// The result of one guest fs call: `errno` set (with `code`, e.g.
/// `"ENOENT"`, or `"UNKNOWN"`) when the guest's syscall failed, else the
/// data the call returns (`stat` for `guestStat`, `entries` for
/// `guestReadDir`, nothing for the others).
#[napi(object)]
#[derive(Default)]
pub struct GuestFsOutcome {
    /// The Linux errno, positive.
    pub errno: Option<i32>,
    pub code: Option<String>,
    pub stat: Option<GuestStat>,
    pub entries: Option<Vec<GuestDirent>>,
}

/// The name of a Linux errno number (`2` → `"ENOENT"`), `null` if Linux
/// defines none. For the status of the file execs behind `vm.fs.readFile`
/// / `writeFile`, which is the errno on failure.
#[napi]
pub fn guest_errno_name(errno: i32) -> Option<String> {
    errno_name(errno).map(str::to_string)
}

fn ms(t: Time) -> f64 {
    t.sec as f64 * 1000.0 + f64::from(t.nsec) / 1e6
}

fn stat_js(s: FsStat) -> GuestStat {
    GuestStat {
        mode: s.mode,
        dev: s.dev as f64,
        ino: s.ino as f64,
        nlink: s.nlink as f64,
        uid: s.uid,
        gid: s.gid,
        rdev: s.rdev as f64,
        size: s.size as f64,
        blksize: s.blksize as f64,
        blocks: s.blocks as f64,
        atime_ms: ms(s.atime),
        mtime_ms: ms(s.mtime),
        ctime_ms: ms(s.ctime),
    }
}

fn dirent_js(e: DirEntry) -> GuestDirent {
    let kind = match e.kind {
        EntryKind::File => GuestEntryKind::File,
        EntryKind::Dir => GuestEntryKind::Dir,
        EntryKind::Symlink => GuestEntryKind::Symlink,
        EntryKind::BlockDevice => GuestEntryKind::BlockDevice,
        EntryKind::CharDevice => GuestEntryKind::CharDevice,
        EntryKind::Fifo => GuestEntryKind::Fifo,
        EntryKind::Socket => GuestEntryKind::Socket,
        EntryKind::Unknown => GuestEntryKind::Unknown,
    };
    GuestDirent {
        name: String::from_utf8_lossy(&e.name).into_owned(),
        kind,
    }
}

/// An errno becomes an outcome; anything else rejects with its code.
fn outcome<T>(
    r: Result<T, GuestFsError>,
    fill: impl FnOnce(T, &mut GuestFsOutcome),
) -> Result<GuestFsOutcome, JsFailure> {
    let mut out = GuestFsOutcome::default();
    match r {
        Ok(v) => fill(v, &mut out),
        Err(e @ GuestFsError::Errno(n)) => {
            out.errno = Some(n);
            out.code = Some(e.code().to_string());
        }
        Err(GuestFsError::Control(e)) => return Err(JsFailure::from_core(&e)),
        Err(e @ GuestFsError::BadReply(_)) => {
            return Err(JsFailure::new(ErrorCode::ProtocolError, e))
        }
    }
    Ok(out)
}

#[napi]
impl NativeVm {
    /// `stat(2)` (`follow`) or `lstat(2)` of an absolute guest path.
    #[napi(ts_return_type = "Promise<GuestFsOutcome>")]
    pub fn guest_stat<'e>(
        &self,
        env: &'e Env,
        path: String,
        follow: bool,
    ) -> napi::Result<PromiseRaw<'e, GuestFsOutcome>> {
        let control = self.vm.control().clone();
        spawn_coded(env, async move {
            let r = control.fs_stat(&path, follow).await;
            outcome(r, |s, o| o.stat = Some(stat_js(s)))
        })
    }

    /// Every entry of a guest directory, unsorted, without `.` and `..`.
    #[napi(ts_return_type = "Promise<GuestFsOutcome>")]
    pub fn guest_read_dir<'e>(
        &self,
        env: &'e Env,
        path: String,
    ) -> napi::Result<PromiseRaw<'e, GuestFsOutcome>> {
        let control = self.vm.control().clone();
        spawn_coded(env, async move {
            let r = control.fs_read_dir(&path).await;
            outcome(r, |es, o| {
                o.entries = Some(es.into_iter().map(dirent_js).collect())
            })
        })
    }

    /// `mkdir [-p] [-m mode]`: `mode` (0..=0o7777) is applied exactly.
    #[napi(ts_return_type = "Promise<GuestFsOutcome>")]
    pub fn guest_mkdir<'e>(
        &self,
        env: &'e Env,
        path: String,
        mode: Option<u32>,
        recursive: bool,
    ) -> napi::Result<PromiseRaw<'e, GuestFsOutcome>> {
        let control = self.vm.control().clone();
        spawn_coded(env, async move {
            let r = control.fs_mkdir(&path, mode, recursive).await;
            outcome(r, |(), _| {})
        })
    }

    /// `rename(2)`; `EXDEV` between file systems.
    #[napi(ts_return_type = "Promise<GuestFsOutcome>")]
    pub fn guest_rename<'e>(
        &self,
        env: &'e Env,
        from: String,
        to: String,
    ) -> napi::Result<PromiseRaw<'e, GuestFsOutcome>> {
        let control = self.vm.control().clone();
        spawn_coded(env, async move {
            let r = control.fs_rename(&from, &to).await;
            outcome(r, |(), _| {})
        })
    }

    /// `rm [-r] [-f]`; symlinks are removed, never followed.
    #[napi(ts_return_type = "Promise<GuestFsOutcome>")]
    pub fn guest_remove<'e>(
        &self,
        env: &'e Env,
        path: String,
        recursive: bool,
        force: bool,
    ) -> napi::Result<PromiseRaw<'e, GuestFsOutcome>> {
        let control = self.vm.control().clone();
        spawn_coded(env, async move {
            let r = control.fs_remove(&path, recursive, force).await;
            outcome(r, |(), _| {})
        })
    }

    /// `access(2)` with `mode` from `fs.constants` `F_OK`/`R_OK`/`W_OK`/`X_OK`.
    #[napi(ts_return_type = "Promise<GuestFsOutcome>")]
    pub fn guest_access<'e>(
        &self,
        env: &'e Env,
        path: String,
        mode: u32,
    ) -> napi::Result<PromiseRaw<'e, GuestFsOutcome>> {
        let control = self.vm.control().clone();
        spawn_coded(env, async move {
            let r = control.fs_access(&path, mode).await;
            outcome(r, |(), _| {})
        })
    }
}
