//! `vfs.hooks`: observe or veto every operation on the served filesystem.
//!
//! [`HookedProvider`] wraps the root provider (so hook paths are guest
//! paths relative to the FUSE root, as upstream) and calls
//! [`VfsHooks::before`] ahead of each operation — an error there aborts it
//! with that errno — and [`VfsHooks::after`] once it succeeded, with a
//! short result. Handle operations (`read`, `write`, `release`, ...) report
//! the path the handle was opened with.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    CachePolicy, DirEntry, FileHandle, Metadata, OpenOptions, Provider, SetTimes, StatFs, VfsError,
    VfsResult,
};

/// What a hook sees. Fields that do not apply to an op are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookContext {
    pub op: &'static str,
    pub path: Option<String>,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    pub flags: Option<String>,
    pub mode: Option<u32>,
    pub fh: Option<u64>,
    pub offset: Option<u64>,
    pub length: Option<u64>,
    pub size: Option<u64>,
    /// Set for `after`: bytes read/written, entries listed, or `0`.
    pub result: Option<u64>,
}

impl HookContext {
    fn at(op: &'static str, path: &str) -> Self {
        HookContext {
            op,
            path: Some(path.to_string()),
            ..Default::default()
        }
    }
}

#[async_trait]
pub trait VfsHooks: Send + Sync {
    /// Runs before the operation; an error aborts it with that errno.
    async fn before(&self, ctx: &HookContext) -> VfsResult<()>;
    /// Runs after a successful operation; an error fails it.
    async fn after(&self, ctx: &HookContext) -> VfsResult<()>;
}

pub struct HookedProvider {
    inner: Arc<dyn Provider>,
    hooks: Arc<dyn VfsHooks>,
}

impl HookedProvider {
    pub fn new(inner: Arc<dyn Provider>, hooks: Arc<dyn VfsHooks>) -> Self {
        HookedProvider { inner, hooks }
    }

    async fn run<T, F>(&self, mut ctx: HookContext, measure: fn(&T) -> u64, f: F) -> VfsResult<T>
    where
        F: Future<Output = VfsResult<T>> + Send,
        T: Send,
    {
        run_hooks(&*self.hooks, &mut ctx, measure, f).await
    }

    /// Mutations on a readonly backend fail before any hook runs (upstream).
    fn refuse_if_readonly(&self) -> VfsResult<()> {
        if self.inner.readonly() {
            Err(VfsError::rofs())
        } else {
            Ok(())
        }
    }
}

async fn run_hooks<T, F>(
    hooks: &dyn VfsHooks,
    ctx: &mut HookContext,
    measure: fn(&T) -> u64,
    f: F,
) -> VfsResult<T>
where
    F: Future<Output = VfsResult<T>> + Send,
{
    hooks.before(ctx).await?;
    let v = f.await?;
    ctx.result = Some(measure(&v));
    hooks.after(ctx).await?;
    Ok(v)
}

fn zero<T>(_: &T) -> u64 {
    0
}

#[async_trait]
impl Provider for HookedProvider {
    fn readonly(&self) -> bool {
        self.inner.readonly()
    }
    fn supports_symlinks(&self) -> bool {
        self.inner.supports_symlinks()
    }
    fn cache_policy(&self, path: &str) -> CachePolicy {
        self.inner.cache_policy(path)
    }
    fn subscribe(&self, sink: super::ChangeSink) {
        self.inner.subscribe(sink)
    }

    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        self.run(HookContext::at("stat", path), zero, self.inner.stat(path))
            .await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.run(HookContext::at("lstat", path), zero, self.inner.lstat(path))
            .await
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        self.run(
            HookContext::at("readdir", path),
            |v: &Vec<DirEntry>| v.len() as u64,
            self.inner.readdir(path),
        )
        .await
    }
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        let ctx = HookContext {
            flags: Some(opts.node_flags().to_string()),
            mode: Some(opts.mode),
            ..HookContext::at("open", path)
        };
        let h = self.run(ctx, zero, self.inner.open(path, opts)).await?;
        Ok(Box::new(HookedHandle {
            inner: h,
            hooks: self.hooks.clone(),
            path: path.to_string(),
        }))
    }
    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            mode: Some(mode),
            ..HookContext::at("mkdir", path)
        };
        self.run(ctx, zero, self.inner.mkdir(path, mode)).await
    }
    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(HookContext::at("rmdir", path), zero, self.inner.rmdir(path))
            .await
    }
    async fn unlink(&self, path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at("unlink", path),
            zero,
            self.inner.unlink(path),
        )
        .await
    }
    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            op: "rename",
            old_path: Some(from.into()),
            new_path: Some(to.into()),
            ..Default::default()
        };
        self.run(ctx, zero, self.inner.rename(from, to)).await
    }
    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            op: "link",
            old_path: Some(existing.into()),
            new_path: Some(new_path.into()),
            ..Default::default()
        };
        self.run(ctx, zero, self.inner.link(existing, new_path))
            .await
    }
    async fn symlink(&self, target: &str, path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            old_path: Some(target.into()),
            ..HookContext::at("symlink", path)
        };
        self.run(ctx, zero, self.inner.symlink(target, path)).await
    }
    async fn readlink(&self, path: &str) -> VfsResult<String> {
        self.run(
            HookContext::at("readlink", path),
            zero,
            self.inner.readlink(path),
        )
        .await
    }
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            size: Some(len),
            ..HookContext::at("truncate", path)
        };
        self.run(ctx, zero, self.inner.truncate(path, len)).await
    }
    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            mode: Some(mode),
            ..HookContext::at("chmod", path)
        };
        self.run(ctx, zero, self.inner.chmod(path, mode)).await
    }
    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at("chown", path),
            zero,
            self.inner.chown(path, uid, gid),
        )
        .await
    }
    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at("utimes", path),
            zero,
            self.inner.set_times(path, times),
        )
        .await
    }
    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        self.run(
            HookContext::at("statfs", path),
            zero,
            self.inner.statfs(path),
        )
        .await
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        let ctx = HookContext {
            mode: Some(mask as u32),
            ..HookContext::at("access", path)
        };
        self.run(ctx, zero, self.inner.access(path, mask)).await
    }
    async fn realpath(&self, path: &str) -> VfsResult<String> {
        self.inner.realpath(path).await
    }
    async fn close(&self) -> VfsResult<()> {
        self.inner.close().await
    }
}

struct HookedHandle {
    inner: Box<dyn FileHandle>,
    hooks: Arc<dyn VfsHooks>,
    path: String,
}

impl HookedHandle {
    fn ctx(&self, op: &'static str) -> HookContext {
        HookContext::at(op, &self.path)
    }
}

#[async_trait]
impl FileHandle for HookedHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        let mut ctx = HookContext {
            offset: Some(offset),
            length: Some(len as u64),
            ..self.ctx("read")
        };
        run_hooks(
            &*self.hooks,
            &mut ctx,
            |v: &Vec<u8>| v.len() as u64,
            self.inner.read(offset, len),
        )
        .await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        let mut ctx = HookContext {
            offset: Some(offset),
            length: Some(data.len() as u64),
            ..self.ctx("write")
        };
        run_hooks(
            &*self.hooks,
            &mut ctx,
            |n: &usize| *n as u64,
            self.inner.write(offset, data),
        )
        .await
    }
    async fn stat(&self) -> VfsResult<Metadata> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx("fstat"),
            zero,
            self.inner.stat(),
        )
        .await
    }
    async fn truncate(&self, len: u64) -> VfsResult<()> {
        let mut ctx = HookContext {
            size: Some(len),
            ..self.ctx("truncate")
        };
        run_hooks(&*self.hooks, &mut ctx, zero, self.inner.truncate(len)).await
    }
    async fn chmod(&self, mode: u32) -> VfsResult<()> {
        let mut ctx = HookContext {
            mode: Some(mode),
            ..self.ctx("chmod")
        };
        run_hooks(&*self.hooks, &mut ctx, zero, self.inner.chmod(mode)).await
    }
    async fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx("chown"),
            zero,
            self.inner.chown(uid, gid),
        )
        .await
    }
    async fn set_times(&self, times: SetTimes) -> VfsResult<()> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx("utimes"),
            zero,
            self.inner.set_times(times),
        )
        .await
    }
    async fn sync(&self) -> VfsResult<()> {
        self.inner.sync().await
    }
    async fn close(&self) -> VfsResult<()> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx("release"),
            zero,
            self.inner.close(),
        )
        .await
    }
}
