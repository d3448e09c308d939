//! `ReadonlyProvider`: any provider, with every mutation refused (EROFS).

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    CachePolicy, DirEntry, FileHandle, Metadata, OpenOptions, Provider, SetTimes, StatFs, VfsError,
    VfsResult,
};

pub struct ReadonlyProvider {
    inner: Arc<dyn Provider>,
}

impl ReadonlyProvider {
    pub fn new(inner: Arc<dyn Provider>) -> Self {
        ReadonlyProvider { inner }
    }
}

#[async_trait]
impl Provider for ReadonlyProvider {
    fn readonly(&self) -> bool {
        true
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
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.inner.lstat(path).await
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        self.inner.readdir(path).await
    }
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        if opts.write || opts.create || opts.truncate || opts.append {
            return Err(VfsError::rofs());
        }
        self.inner.open(path, opts).await
    }
    async fn mkdir(&self, _: &str, _: u32) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn rmdir(&self, _: &str) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn unlink(&self, _: &str) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn rename(&self, _: &str, _: &str) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn link(&self, _: &str, _: &str) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn symlink(&self, _: &str, _: &str) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn readlink(&self, path: &str) -> VfsResult<String> {
        self.inner.readlink(path).await
    }
    async fn truncate(&self, _: &str, _: u64) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn chmod(&self, _: &str, _: u32) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn chown(&self, _: &str, _: Option<u32>, _: Option<u32>) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn set_times(&self, _: &str, _: SetTimes) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        self.inner.statfs(path).await
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        if mask & 2 != 0 {
            self.inner.stat(path).await?;
            return Err(VfsError::rofs());
        }
        self.inner.access(path, mask).await
    }
    async fn realpath(&self, path: &str) -> VfsResult<String> {
        self.inner.realpath(path).await
    }
    async fn close(&self) -> VfsResult<()> {
        self.inner.close().await
    }
}
