//! `ShadowProvider`: hide paths of a backend (`.env`, keys) from the guest.
//!
//! A predicate decides which paths are shadowed. In `deny` mode a shadowed
//! path does not exist for reads (ENOENT), cannot be written
//! (`deny_write_errno`, EACCES by default) and vanishes from listings. In
//! `tmpfs` mode the guest gets its own private layer for shadowed paths:
//! it can create a `.env` of its own, and the backend's stays untouched.
//! With `deny_symlink_bypass` the predicate also sees where a path really
//! leads, so a symlink to a shadowed file is shadowed too.

use std::sync::Arc;

use async_trait::async_trait;
use gondolin_wire::fs::errno;

use super::memory::MemoryProvider;
use super::path::{join, normalize, parent};
use super::{
    CachePolicy, DirEntry, FileHandle, HookOp, Metadata, OpenOptions, Provider, SetTimes, StatFs,
    VfsError, VfsResult,
};

/// What the predicate is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowContext {
    pub op: HookOp,
    pub path: String,
    pub flags: Option<String>,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
}

#[async_trait]
pub trait ShadowPredicate: Send + Sync {
    async fn should_shadow(&self, ctx: &ShadowContext) -> bool;
}

/// Upstream's `createShadowPathPredicate`: each path and everything below
/// it. Inputs are normalized (`x` → `/x`); `/` is ignored; no globs.
#[derive(Debug, Clone)]
pub struct PathPredicate {
    paths: Vec<String>,
}

impl PathPredicate {
    pub fn new(paths: &[String]) -> Self {
        PathPredicate {
            paths: paths
                .iter()
                .map(|p| normalize(p))
                .filter(|p| p != "/")
                .collect(),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        let p = normalize(path);
        self.paths.iter().any(|s| super::path::is_within(&p, s))
    }
}

#[async_trait]
impl ShadowPredicate for PathPredicate {
    async fn should_shadow(&self, ctx: &ShadowContext) -> bool {
        [
            Some(&ctx.path),
            ctx.old_path.as_ref(),
            ctx.new_path.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|p| self.matches(p))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowWriteMode {
    Deny,
    Tmpfs,
}

pub struct ShadowOptions {
    pub predicate: Arc<dyn ShadowPredicate>,
    pub write_mode: ShadowWriteMode,
    /// Upper layer for `Tmpfs` mode (default: a new MemoryProvider).
    pub tmpfs: Option<Arc<dyn Provider>>,
    pub deny_symlink_bypass: bool,
    pub deny_write_errno: i32,
}

pub struct ShadowProvider {
    inner: Arc<dyn Provider>,
    predicate: Arc<dyn ShadowPredicate>,
    mode: ShadowWriteMode,
    tmpfs: Arc<dyn Provider>,
    bypass_check: bool,
    deny_errno: i32,
}

impl ShadowProvider {
    pub fn new(inner: Arc<dyn Provider>, o: ShadowOptions) -> Self {
        ShadowProvider {
            inner,
            predicate: o.predicate,
            mode: o.write_mode,
            tmpfs: o.tmpfs.unwrap_or_else(|| Arc::new(MemoryProvider::new())),
            bypass_check: o.deny_symlink_bypass,
            deny_errno: o.deny_write_errno,
        }
    }

    async fn shadowed(&self, op: HookOp, path: &str) -> bool {
        let ctx = ShadowContext {
            op,
            path: path.to_string(),
            flags: None,
            old_path: None,
            new_path: None,
        };
        if self.predicate.should_shadow(&ctx).await {
            return true;
        }
        if self.bypass_check {
            if let Ok(real) = self.inner.realpath(path).await {
                if real != path {
                    let ctx = ShadowContext { path: real, ..ctx };
                    return self.predicate.should_shadow(&ctx).await;
                }
            }
        }
        false
    }

    /// Where a read of a shadowed path goes: the private layer, or nowhere.
    fn read_layer(&self) -> VfsResult<&Arc<dyn Provider>> {
        match self.mode {
            ShadowWriteMode::Tmpfs => Ok(&self.tmpfs),
            ShadowWriteMode::Deny => Err(VfsError::noent()),
        }
    }

    /// Where a write to a shadowed path goes; creates the private layer's
    /// parent directories on the way.
    async fn write_layer(&self, path: &str) -> VfsResult<&Arc<dyn Provider>> {
        match self.mode {
            ShadowWriteMode::Deny => Err(VfsError::new(self.deny_errno)),
            ShadowWriteMode::Tmpfs => {
                let mut dir = String::from("/");
                for c in parent(path).split('/').filter(|c| !c.is_empty()) {
                    dir = join(&dir, c);
                    match self.tmpfs.mkdir(&dir, 0o755).await {
                        Ok(()) => {}
                        Err(e) if e.is(errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(&self.tmpfs)
            }
        }
    }

    /// The provider a read of `path` goes to.
    async fn for_read(&self, op: HookOp, path: &str) -> VfsResult<&Arc<dyn Provider>> {
        if self.shadowed(op, path).await {
            self.read_layer()
        } else {
            Ok(&self.inner)
        }
    }

    /// The provider a write to `path` goes to.
    async fn for_write(&self, op: HookOp, path: &str) -> VfsResult<&Arc<dyn Provider>> {
        if self.shadowed(op, path).await {
            self.write_layer(path).await
        } else {
            Ok(&self.inner)
        }
    }
}

#[async_trait]
impl Provider for ShadowProvider {
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
        self.for_read(HookOp::Stat, path).await?.stat(path).await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.for_read(HookOp::Lstat, path).await?.lstat(path).await
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        if self.shadowed(HookOp::Readdir, path).await {
            return self.read_layer()?.readdir(path).await;
        }
        let mut out = Vec::new();
        for e in self.inner.readdir(path).await? {
            if !self.shadowed(HookOp::Readdir, &join(path, &e.name)).await {
                out.push(e);
            }
        }
        if self.mode == ShadowWriteMode::Tmpfs {
            if let Ok(private) = self.tmpfs.readdir(path).await {
                for e in private {
                    let shadowed = self.shadowed(HookOp::Readdir, &join(path, &e.name)).await;
                    if shadowed && !out.iter().any(|o| o.name == e.name) {
                        out.push(e);
                    }
                }
            }
        }
        Ok(out)
    }
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        let writes = opts.write || opts.create || opts.truncate || opts.append;
        let layer = if writes {
            self.for_write(HookOp::Open, path).await?
        } else {
            self.for_read(HookOp::Open, path).await?
        };
        layer.open(path, opts).await
    }
    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.for_write(HookOp::Mkdir, path)
            .await?
            .mkdir(path, mode)
            .await
    }
    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        self.for_write(HookOp::Rmdir, path).await?.rmdir(path).await
    }
    async fn unlink(&self, path: &str) -> VfsResult<()> {
        self.for_write(HookOp::Unlink, path)
            .await?
            .unlink(path)
            .await
    }
    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        let (a, b) = (
            self.shadowed(HookOp::Rename, from).await,
            self.shadowed(HookOp::Rename, to).await,
        );
        match (a, b) {
            (false, false) => self.inner.rename(from, to).await,
            (true, true) if self.mode == ShadowWriteMode::Tmpfs => {
                self.write_layer(to).await?.rename(from, to).await
            }
            _ => Err(VfsError::new(errno::EXDEV)),
        }
    }
    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        let (a, b) = (
            self.shadowed(HookOp::Link, existing).await,
            self.shadowed(HookOp::Link, new_path).await,
        );
        match (a, b) {
            (false, false) => self.inner.link(existing, new_path).await,
            (true, true) if self.mode == ShadowWriteMode::Tmpfs => {
                self.write_layer(new_path)
                    .await?
                    .link(existing, new_path)
                    .await
            }
            (_, true) if self.mode == ShadowWriteMode::Deny => Err(VfsError::new(self.deny_errno)),
            _ => Err(VfsError::new(errno::EXDEV)),
        }
    }
    async fn symlink(&self, target: &str, path: &str) -> VfsResult<()> {
        self.for_write(HookOp::Symlink, path)
            .await?
            .symlink(target, path)
            .await
    }
    async fn readlink(&self, path: &str) -> VfsResult<String> {
        self.for_read(HookOp::Readlink, path)
            .await?
            .readlink(path)
            .await
    }
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        self.for_write(HookOp::Truncate, path)
            .await?
            .truncate(path, len)
            .await
    }
    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.for_write(HookOp::Chmod, path)
            .await?
            .chmod(path, mode)
            .await
    }
    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        self.for_write(HookOp::Chown, path)
            .await?
            .chown(path, uid, gid)
            .await
    }
    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        self.for_write(HookOp::Utimes, path)
            .await?
            .set_times(path, times)
            .await
    }
    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        self.inner.statfs(path).await
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        self.for_read(HookOp::Access, path)
            .await?
            .access(path, mask)
            .await
    }
    async fn realpath(&self, path: &str) -> VfsResult<String> {
        self.for_read(HookOp::Realpath, path)
            .await?
            .realpath(path)
            .await
    }
    async fn close(&self) -> VfsResult<()> {
        self.inner.close().await
    }
}
