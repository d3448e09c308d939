//! Providers and hooks written in JavaScript, seen from Rust as ordinary
//! [`Provider`] / [`VfsHooks`] implementations.
//!
//! Each call goes through a [`JsCallback`] to one JS dispatcher (built by
//! `js/vfs.cjs`) that always returns a Promise of an [`FsOutcome`]: tokio
//! awaits it without blocking any thread, so a JS provider that itself uses
//! `fs.promises` cannot deadlock Node's threadpool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use napi::bindgen_prelude::{Buffer, Promise};
use napi_derive::napi;

use super::js_callback::{boundary_enum, Component, JsCallback};
use super::vfs_call::{
    kind_from_name, missing, stat_from_js, statfs_from_js, FsCall, FsOp, FsOutcome,
};
use gondolin::vfs::hooks::{ContentHooks, HookContext, VfsHooks};
use gondolin::vfs::HookOp;
use gondolin::vfs::{
    DirEntry, FileHandle, Metadata, OpenOptions, Provider, SetTimes, StatFs, VfsError, VfsResult,
};
use gondolin_wire::fs::errno;

/// `(call) => Promise<FsOutcome>`.
pub type Dispatch = JsCallback<FsCall, Promise<FsOutcome>>;

async fn call_js(dispatch: &Dispatch, call: FsCall) -> VfsResult<FsOutcome> {
    dispatch
        .call(Component::Vfs, call.op.as_str(), call)
        .await
        .map_err(|e| VfsError::with_message(errno::EIO, format!("JS provider {e}")))?
        .into_result()
}

/// `call` carrying `times` as JS milliseconds (absent = leave alone).
fn with_times(call: FsCall, times: SetTimes) -> FsCall {
    let ms = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    FsCall {
        atime_ms: ms(times.atime),
        mtime_ms: ms(times.mtime),
        ..call
    }
}

/// A provider implemented by a JS object.
pub struct JsProvider {
    dispatch: Arc<Dispatch>,
    readonly: bool,
    symlinks: bool,
}

impl JsProvider {
    pub fn new(dispatch: Dispatch, readonly: bool, symlinks: bool) -> Self {
        JsProvider {
            dispatch: Arc::new(dispatch),
            readonly,
            symlinks,
        }
    }

    async fn call(&self, call: FsCall) -> VfsResult<FsOutcome> {
        call_js(&self.dispatch, call).await
    }

    /// One JS `open`, run to its end even when our caller stops waiting
    /// (the request deadline drops its future): a handle that arrives
    /// after that is closed, not left in the dispatcher's table forever.
    async fn open_call(&self, call: FsCall) -> VfsResult<FsOutcome> {
        let dispatch = self.dispatch.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let r = call_js(&dispatch, call).await;
            if let Err(Ok(FsOutcome { fh: Some(fh), .. })) = tx.send(r) {
                let _ = call_js(&dispatch, FsCall::on(FsOp::Close, fh)).await;
            }
        });
        rx.await
            .map_err(|_| VfsError::with_message(errno::EIO, "JS provider open was abandoned"))?
    }

    async fn unit(&self, call: FsCall) -> VfsResult<()> {
        self.call(call).await.map(|_| ())
    }

    async fn stat_op(&self, op: FsOp, path: &str) -> VfsResult<Metadata> {
        let o = self.call(FsCall::at(op, path)).await?;
        o.stat.map(stat_from_js).ok_or_else(|| missing(op, "stat"))
    }
}

#[async_trait]
impl Provider for JsProvider {
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn supports_symlinks(&self) -> bool {
        self.symlinks
    }

    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        self.stat_op(FsOp::Stat, path).await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.stat_op(FsOp::Lstat, path).await
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        let o = self.call(FsCall::at(FsOp::Readdir, path)).await?;
        let entries = o.entries.ok_or_else(|| missing(FsOp::Readdir, "entries"))?;
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                name: e.name,
                kind: kind_from_name(&e.kind),
            })
            .collect())
    }
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        let open = |flags: &str| FsCall {
            flags: Some(flags.into()),
            mode: Some(opts.mode),
            ..FsCall::at(FsOp::Open, path)
        };
        let flags = opts.node_flags();
        // Node has no flag for O_CREAT without O_TRUNC ("r+" does not
        // create): open the file if it is there, else create it
        // exclusively; losing that race to another creator means it is
        // there now.
        let plain_create = opts.create && !opts.exclusive && !opts.truncate && !opts.append;
        let o = match self.open_call(open(flags)).await {
            Err(e) if plain_create && e.is(errno::ENOENT) => {
                match self
                    .open_call(open(if opts.read { "wx+" } else { "wx" }))
                    .await
                {
                    Err(e) if e.is(errno::EEXIST) => self.open_call(open(flags)).await?,
                    r => r?,
                }
            }
            r => r?,
        };
        let fh = o.fh.ok_or_else(|| missing(FsOp::Open, "handle"))?;
        Ok(Box::new(JsFileHandle {
            dispatch: self.dispatch.clone(),
            fh,
            closed: AtomicBool::new(false),
        }))
    }
    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.unit(FsCall {
            mode: Some(mode),
            ..FsCall::at(FsOp::Mkdir, path)
        })
        .await
    }
    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        self.unit(FsCall::at(FsOp::Rmdir, path)).await
    }
    async fn unlink(&self, path: &str) -> VfsResult<()> {
        self.unit(FsCall::at(FsOp::Unlink, path)).await
    }
    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        self.unit(FsCall {
            path2: Some(to.into()),
            ..FsCall::at(FsOp::Rename, from)
        })
        .await
    }
    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        self.unit(FsCall {
            path2: Some(new_path.into()),
            ..FsCall::at(FsOp::Link, existing)
        })
        .await
    }
    async fn symlink(&self, target: &str, path: &str) -> VfsResult<()> {
        self.unit(FsCall {
            path2: Some(target.into()),
            ..FsCall::at(FsOp::Symlink, path)
        })
        .await
    }
    async fn readlink(&self, path: &str) -> VfsResult<String> {
        let o = self.call(FsCall::at(FsOp::Readlink, path)).await?;
        o.target.ok_or_else(|| missing(FsOp::Readlink, "target"))
    }
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        self.unit(FsCall {
            length: Some(len as f64),
            ..FsCall::at(FsOp::Truncate, path)
        })
        .await
    }
    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.unit(FsCall {
            mode: Some(mode),
            ..FsCall::at(FsOp::Chmod, path)
        })
        .await
    }
    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        self.unit(FsCall {
            uid,
            gid,
            ..FsCall::at(FsOp::Chown, path)
        })
        .await
    }
    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        self.unit(with_times(FsCall::at(FsOp::Utimes, path), times))
            .await
    }
    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        match self.call(FsCall::at(FsOp::Statfs, path)).await {
            Ok(o) => Ok(o
                .statfs
                .map(statfs_from_js)
                .unwrap_or(gondolin::vfs::SYNTHETIC_STATFS)),
            Err(e) if e.is(errno::ENOSYS) => Ok(gondolin::vfs::SYNTHETIC_STATFS),
            Err(e) => Err(e),
        }
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        self.unit(FsCall {
            mode: Some(mask as u32),
            ..FsCall::at(FsOp::Access, path)
        })
        .await
    }
    async fn realpath(&self, path: &str) -> VfsResult<String> {
        match self.call(FsCall::at(FsOp::Realpath, path)).await {
            Ok(o) => Ok(o.target.unwrap_or_else(|| path.to_string())),
            Err(e) if e.is(errno::ENOSYS) => {
                self.lstat(path).await?;
                Ok(path.to_string())
            }
            Err(e) => Err(e),
        }
    }
    async fn close(&self) -> VfsResult<()> {
        self.unit(FsCall::new(FsOp::CloseProvider)).await.or(Ok(()))
    }
}

/// A handle in the JS dispatcher's handle table. Dropped without `close`
/// (the server's table was full, a hook failed after the open, a deadline
/// passed), it closes itself, so the guest cannot grow the JS table.
struct JsFileHandle {
    dispatch: Arc<Dispatch>,
    fh: u32,
    closed: AtomicBool,
}

impl Drop for JsFileHandle {
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (dispatch, fh) = (self.dispatch.clone(), self.fh);
        rt.spawn(async move {
            let _ = call_js(&dispatch, FsCall::on(FsOp::Close, fh)).await;
        });
    }
}

#[async_trait]
impl FileHandle for JsFileHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        let call = FsCall {
            offset: Some(offset as f64),
            length: Some(len as f64),
            ..FsCall::on(FsOp::Read, self.fh)
        };
        let o = call_js(&self.dispatch, call).await?;
        let mut data = o.data.map(|b| b.to_vec()).unwrap_or_default();
        data.truncate(len);
        Ok(data)
    }
    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        let call = FsCall {
            offset: Some(offset as f64),
            data: Some(Buffer::from(data.to_vec())),
            ..FsCall::on(FsOp::Write, self.fh)
        };
        let o = call_js(&self.dispatch, call).await?;
        let n = o.n.ok_or_else(|| missing(FsOp::Write, "byte count"))?;
        if !(n.is_finite() && n >= 0.0) {
            return Err(missing(FsOp::Write, "valid byte count"));
        }
        Ok((n as usize).min(data.len()))
    }
    async fn stat(&self) -> VfsResult<Metadata> {
        let o = call_js(&self.dispatch, FsCall::on(FsOp::Fstat, self.fh)).await?;
        o.stat
            .map(stat_from_js)
            .ok_or_else(|| missing(FsOp::Fstat, "stat"))
    }
    async fn truncate(&self, len: u64) -> VfsResult<()> {
        let call = FsCall {
            length: Some(len as f64),
            ..FsCall::on(FsOp::Ftruncate, self.fh)
        };
        call_js(&self.dispatch, call).await.map(|_| ())
    }
    async fn chmod(&self, mode: u32) -> VfsResult<()> {
        let call = FsCall {
            mode: Some(mode),
            ..FsCall::on(FsOp::Fchmod, self.fh)
        };
        call_js(&self.dispatch, call).await.map(|_| ())
    }
    async fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        let call = FsCall {
            uid,
            gid,
            ..FsCall::on(FsOp::Fchown, self.fh)
        };
        call_js(&self.dispatch, call).await.map(|_| ())
    }
    async fn set_times(&self, times: SetTimes) -> VfsResult<()> {
        let call = with_times(FsCall::on(FsOp::Futimes, self.fh), times);
        call_js(&self.dispatch, call).await.map(|_| ())
    }
    async fn sync(&self) -> VfsResult<()> {
        match call_js(&self.dispatch, FsCall::on(FsOp::Fsync, self.fh)).await {
            Err(e) if e.is(errno::ENOSYS) => Ok(()),
            r => r.map(|_| ()),
        }
    }
    async fn close(&self) -> VfsResult<()> {
        self.closed.store(true, Ordering::Release);
        call_js(&self.dispatch, FsCall::on(FsOp::Close, self.fh))
            .await
            .map(|_| ())
    }
}

boundary_enum! {
    /// Which `vfs.hooks` member a [`HookCall`] is for.
    HookPhase {
        /// Before the operation; throwing refuses it with the error's errno.
        Before = "before",
        /// After it, with its `result`.
        After = "after",
        /// A chunk read by the guest (may be replaced).
        OnRead = "onRead",
        /// A chunk the guest writes (may be replaced).
        OnWrite = "onWrite",
    }
}

/// The names `ctx.op` can take (the core's [`HookOp`], the one list), for
/// the test that keeps `index.d.ts`'s `VfsHookOp` union equal to it.
#[napi]
pub fn vfs_hook_ops() -> Vec<&'static str> {
    HookOp::ALL.iter().map(|op| op.as_str()).collect()
}

/// What a JS hook gets: the [`HookContext`] plus the phase (`op`: upstream's
/// `ctx.op`).
#[napi(object)]
pub struct HookCall {
    pub phase: HookPhase,
    /// A [`HookOp`] name (typed as `VfsHookOp` in index.d.ts).
    pub op: String,
    pub path: Option<String>,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    pub flags: Option<String>,
    pub mode: Option<u32>,
    pub fh: Option<f64>,
    pub offset: Option<f64>,
    pub length: Option<f64>,
    pub size: Option<f64>,
    pub result: Option<f64>,
    /// onRead / onWrite: the chunk read or to be written (at `offset`).
    pub data: Option<Buffer>,
}

/// Which of `vfs.hooks` the user gave: absent ones are never called.
#[napi(object)]
#[derive(Default, Clone, Copy)]
pub struct HookKinds {
    pub before: bool,
    pub after: bool,
    pub on_read: bool,
    pub on_write: bool,
}

/// `(call) => Promise<FsOutcome>` for `vfs.hooks`.
pub type HookDispatch = JsCallback<HookCall, Promise<FsOutcome>>;

pub struct JsHooks {
    dispatch: HookDispatch,
    kinds: HookKinds,
}

impl JsHooks {
    pub fn new(dispatch: HookDispatch, kinds: HookKinds) -> Self {
        JsHooks { dispatch, kinds }
    }

    async fn send(&self, call: HookCall) -> VfsResult<FsOutcome> {
        let name = match call.phase {
            HookPhase::Before => "vfs.hooks.before",
            HookPhase::After => "vfs.hooks.after",
            HookPhase::OnRead => "vfs.hooks.onRead",
            HookPhase::OnWrite => "vfs.hooks.onWrite",
        };
        self.dispatch
            .call(Component::Vfs, name, call)
            .await
            .map_err(|e| VfsError::with_message(errno::EIO, e.to_string()))?
            .into_result()
    }

    /// A content hook: the data it returned, or `None` to keep the chunk.
    async fn content_call(
        &self,
        phase: HookPhase,
        path: &str,
        offset: u64,
        data: &[u8],
    ) -> VfsResult<Option<Vec<u8>>> {
        let op = if phase == HookPhase::OnRead {
            HookOp::Read
        } else {
            HookOp::Write
        };
        let call = HookCall {
            path: Some(path.into()),
            offset: Some(offset as f64),
            length: Some(data.len() as f64),
            data: Some(Buffer::from(data.to_vec())),
            ..HookCall::empty(phase, op)
        };
        Ok(self.send(call).await?.data.map(|b| b.to_vec()))
    }

    async fn call(&self, phase: HookPhase, c: &HookContext) -> VfsResult<()> {
        let f = |v: Option<u64>| v.map(|x| x as f64);
        let call = HookCall {
            phase,
            op: c.op.as_str().into(),
            path: c.path.clone(),
            old_path: c.old_path.clone(),
            new_path: c.new_path.clone(),
            flags: c.flags.clone(),
            mode: c.mode,
            fh: f(c.fh),
            offset: f(c.offset),
            length: f(c.length),
            size: f(c.size),
            result: f(c.result),
            data: None,
        };
        self.send(call).await.map(|_| ())
    }
}

impl HookCall {
    fn empty(phase: HookPhase, op: HookOp) -> Self {
        HookCall {
            phase,
            op: op.as_str().into(),
            path: None,
            old_path: None,
            new_path: None,
            flags: None,
            mode: None,
            fh: None,
            offset: None,
            length: None,
            size: None,
            result: None,
            data: None,
        }
    }
}

#[async_trait]
impl VfsHooks for JsHooks {
    async fn before(&self, ctx: &HookContext) -> VfsResult<()> {
        if !self.kinds.before {
            return Ok(());
        }
        self.call(HookPhase::Before, ctx).await
    }
    async fn after(&self, ctx: &HookContext) -> VfsResult<()> {
        if !self.kinds.after {
            return Ok(());
        }
        self.call(HookPhase::After, ctx).await
    }
    fn content(&self) -> ContentHooks {
        ContentHooks {
            read: self.kinds.on_read,
            write: self.kinds.on_write,
        }
    }
    async fn on_read(&self, path: &str, offset: u64, data: Vec<u8>) -> VfsResult<Vec<u8>> {
        Ok(self
            .content_call(HookPhase::OnRead, path, offset, &data)
            .await?
            .unwrap_or(data))
    }
    async fn on_write(&self, path: &str, offset: u64, data: &[u8]) -> VfsResult<Option<Vec<u8>>> {
        self.content_call(HookPhase::OnWrite, path, offset, data)
            .await
    }
}
