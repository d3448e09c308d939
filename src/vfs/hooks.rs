//! `vfs.hooks`: observe or veto every operation on the served filesystem.
//!
//! [`HookedProvider`] wraps the root provider (so hook paths are guest
//! paths relative to the FUSE root, as upstream) and calls
//! [`VfsHooks::before`] ahead of each operation — an error there aborts it
//! with that errno — and [`VfsHooks::after`] once it succeeded, with a
//! short result. Handle operations (`read`, `write`, `release`, ...) report
//! the path the handle was opened with.
//!
//! Content hooks ([`VfsHooks::on_read`], [`VfsHooks::on_write`]) see the
//! bytes of each read or write request the server handles: the chunk and
//! its offset, never the whole file (a guest reads and writes in pieces of
//! at most 1 MiB, at any offset), and may replace them. With `on_read` the
//! guest keeps no file data across opens, so each open's reads reach it.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    CachePolicy, DirEntry, FileHandle, HookOp, Metadata, OpenOptions, Provider, SetTimes, StatFs,
    VfsError, VfsResult,
};

/// What a hook sees. Fields that do not apply to an op are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookContext {
    pub op: HookOp,
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
    fn at(op: HookOp, path: &str) -> Self {
        HookContext {
            op,
            path: Some(path.to_string()),
            ..Default::default()
        }
    }
}

/// Which content hooks a [`VfsHooks`] has; the others cost nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentHooks {
    pub read: bool,
    pub write: bool,
}

#[async_trait]
pub trait VfsHooks: Send + Sync {
    /// Runs before the operation; an error aborts it with that errno.
    async fn before(&self, ctx: &HookContext) -> VfsResult<()>;
    /// Runs after a successful operation; an error fails it.
    async fn after(&self, ctx: &HookContext) -> VfsResult<()>;
    fn content(&self) -> ContentHooks {
        ContentHooks::default()
    }
    /// The bytes a read request returns (`data`, read at `offset`), or
    /// what replaces them; longer replacements are cut to the request.
    async fn on_read(&self, _path: &str, _offset: u64, data: Vec<u8>) -> VfsResult<Vec<u8>> {
        Ok(data)
    }
    /// What a write request of `data` at `offset` writes instead (`None`:
    /// `data` itself).
    async fn on_write(
        &self,
        _path: &str,
        _offset: u64,
        _data: &[u8],
    ) -> VfsResult<Option<Vec<u8>>> {
        Ok(None)
    }
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
        let mut policy = self.inner.cache_policy(path);
        if self.hooks.content().read {
            // The guest's page cache would answer reads after a reopen
            // without asking us, so without the hook.
            policy.keep_data_cache = false;
        }
        policy
    }
    fn subscribe(&self, sink: super::ChangeSink) {
        self.inner.subscribe(sink)
    }

    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        self.run(
            HookContext::at(HookOp::Stat, path),
            zero,
            self.inner.stat(path),
        )
        .await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.run(
            HookContext::at(HookOp::Lstat, path),
            zero,
            self.inner.lstat(path),
        )
        .await
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        self.run(
            HookContext::at(HookOp::Readdir, path),
            |v: &Vec<DirEntry>| v.len() as u64,
            self.inner.readdir(path),
        )
        .await
    }
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        let ctx = HookContext {
            flags: Some(opts.node_flags().to_string()),
            mode: Some(opts.mode),
            ..HookContext::at(HookOp::Open, path)
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
            ..HookContext::at(HookOp::Mkdir, path)
        };
        self.run(ctx, zero, self.inner.mkdir(path, mode)).await
    }
    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at(HookOp::Rmdir, path),
            zero,
            self.inner.rmdir(path),
        )
        .await
    }
    async fn unlink(&self, path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at(HookOp::Unlink, path),
            zero,
            self.inner.unlink(path),
        )
        .await
    }
    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            op: HookOp::Rename,
            old_path: Some(from.into()),
            new_path: Some(to.into()),
            ..Default::default()
        };
        self.run(ctx, zero, self.inner.rename(from, to)).await
    }
    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            op: HookOp::Link,
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
            ..HookContext::at(HookOp::Symlink, path)
        };
        self.run(ctx, zero, self.inner.symlink(target, path)).await
    }
    async fn readlink(&self, path: &str) -> VfsResult<String> {
        self.run(
            HookContext::at(HookOp::Readlink, path),
            zero,
            self.inner.readlink(path),
        )
        .await
    }
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            size: Some(len),
            ..HookContext::at(HookOp::Truncate, path)
        };
        self.run(ctx, zero, self.inner.truncate(path, len)).await
    }
    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        let ctx = HookContext {
            mode: Some(mode),
            ..HookContext::at(HookOp::Chmod, path)
        };
        self.run(ctx, zero, self.inner.chmod(path, mode)).await
    }
    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at(HookOp::Chown, path),
            zero,
            self.inner.chown(path, uid, gid),
        )
        .await
    }
    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        self.refuse_if_readonly()?;
        self.run(
            HookContext::at(HookOp::Utimes, path),
            zero,
            self.inner.set_times(path, times),
        )
        .await
    }
    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        self.run(
            HookContext::at(HookOp::Statfs, path),
            zero,
            self.inner.statfs(path),
        )
        .await
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        let ctx = HookContext {
            mode: Some(mask as u32),
            ..HookContext::at(HookOp::Access, path)
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
    fn ctx(&self, op: HookOp) -> HookContext {
        HookContext::at(op, &self.path)
    }
}

#[async_trait]
impl FileHandle for HookedHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        let mut ctx = HookContext {
            offset: Some(offset),
            length: Some(len as u64),
            ..self.ctx(HookOp::Read)
        };
        let read = async {
            let data = self.inner.read(offset, len).await?;
            if !self.hooks.content().read {
                return Ok(data);
            }
            let mut data = self.hooks.on_read(&self.path, offset, data).await?;
            data.truncate(len);
            Ok(data)
        };
        run_hooks(&*self.hooks, &mut ctx, |v: &Vec<u8>| v.len() as u64, read).await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        let mut ctx = HookContext {
            offset: Some(offset),
            length: Some(data.len() as u64),
            ..self.ctx(HookOp::Write)
        };
        let write = async {
            if !self.hooks.content().write {
                return self.inner.write(offset, data).await;
            }
            let Some(new) = self.hooks.on_write(&self.path, offset, data).await? else {
                return self.inner.write(offset, data).await;
            };
            // The guest asked for `data` to be written: all of it counts
            // as written once all of the replacement is.
            let n = self.inner.write(offset, &new).await?;
            Ok(if n >= new.len() {
                data.len()
            } else {
                n.min(data.len())
            })
        };
        run_hooks(&*self.hooks, &mut ctx, |n: &usize| *n as u64, write).await
    }
    async fn stat(&self) -> VfsResult<Metadata> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx(HookOp::Fstat),
            zero,
            self.inner.stat(),
        )
        .await
    }
    async fn truncate(&self, len: u64) -> VfsResult<()> {
        let mut ctx = HookContext {
            size: Some(len),
            ..self.ctx(HookOp::Truncate)
        };
        run_hooks(&*self.hooks, &mut ctx, zero, self.inner.truncate(len)).await
    }
    async fn chmod(&self, mode: u32) -> VfsResult<()> {
        let mut ctx = HookContext {
            mode: Some(mode),
            ..self.ctx(HookOp::Chmod)
        };
        run_hooks(&*self.hooks, &mut ctx, zero, self.inner.chmod(mode)).await
    }
    async fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx(HookOp::Chown),
            zero,
            self.inner.chown(uid, gid),
        )
        .await
    }
    async fn set_times(&self, times: SetTimes) -> VfsResult<()> {
        run_hooks(
            &*self.hooks,
            &mut self.ctx(HookOp::Utimes),
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
            &mut self.ctx(HookOp::Release),
            zero,
            self.inner.close(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::memory::MemoryProvider;

    /// Upper-cases what is read, doubles nothing, and writes "X" for every
    /// "x" written.
    struct Upper;

    #[async_trait]
    impl VfsHooks for Upper {
        async fn before(&self, _: &HookContext) -> VfsResult<()> {
            Ok(())
        }
        async fn after(&self, _: &HookContext) -> VfsResult<()> {
            Ok(())
        }
        fn content(&self) -> ContentHooks {
            ContentHooks {
                read: true,
                write: true,
            }
        }
        async fn on_read(&self, path: &str, offset: u64, data: Vec<u8>) -> VfsResult<Vec<u8>> {
            if path == "/fail" {
                return Err(VfsError::new(gondolin_wire::fs::errno::EACCES));
            }
            // A too-long answer is cut to the request.
            let mut d = data.to_ascii_uppercase();
            d.extend_from_slice(format!("@{offset}").as_bytes());
            Ok(d)
        }
        async fn on_write(&self, _: &str, _: u64, data: &[u8]) -> VfsResult<Option<Vec<u8>>> {
            Ok((data == b"keep").then_some(b"kept!".to_vec()).or_else(|| {
                Some(
                    data.iter()
                        .map(|&b| if b == b'x' { b'X' } else { b })
                        .collect(),
                )
            }))
        }
    }

    #[tokio::test]
    async fn content_hooks_see_each_chunk_and_replace_it() {
        let mem: Arc<dyn Provider> = Arc::new(MemoryProvider::new());
        let p = HookedProvider::new(mem.clone(), Arc::new(Upper));
        assert!(!p.cache_policy("/f").keep_data_cache);
        let w = OpenOptions::from_node_flags("w+", 0o644).unwrap();
        let h = p.open("/f", w).await.unwrap();
        // The guest is told its whole chunk was written.
        assert_eq!(h.write(0, b"axbx").await.unwrap(), 4);
        assert_eq!(h.write(4, b"keep").await.unwrap(), 4);
        h.close().await.unwrap();
        let raw = mem.open("/f", OpenOptions::read_only()).await.unwrap();
        assert_eq!(raw.read(0, 100).await.unwrap(), b"aXbXkept!");

        let h = p.open("/f", OpenOptions::read_only()).await.unwrap();
        assert_eq!(h.read(0, 4).await.unwrap(), b"AXBX");
        assert_eq!(h.read(4, 100).await.unwrap(), b"KEPT!@4");
        h.close().await.unwrap();

        let w = OpenOptions::from_node_flags("w", 0o644).unwrap();
        p.open("/fail", w).await.unwrap().close().await.unwrap();
        let h = p.open("/fail", OpenOptions::read_only()).await.unwrap();
        assert_eq!(h.read(0, 4).await.unwrap_err().errno, 13);
    }
}
