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
        // The handle refuses mutations itself: the server reaches files
        // through handles when their names are gone, and must not find a
        // writable one behind a read-only provider.
        let inner = self.inner.open(path, opts).await?;
        Ok(Box::new(ReadonlyHandle(inner)))
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

/// A handle of a read-only provider: reads pass through, every mutation is
/// EROFS.
struct ReadonlyHandle(Box<dyn FileHandle>);

#[async_trait]
impl FileHandle for ReadonlyHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        self.0.read(offset, len).await
    }
    async fn write(&self, _: u64, _: &[u8]) -> VfsResult<usize> {
        Err(VfsError::rofs())
    }
    async fn stat(&self) -> VfsResult<Metadata> {
        self.0.stat().await
    }
    async fn truncate(&self, _: u64) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn chmod(&self, _: u32) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn chown(&self, _: Option<u32>, _: Option<u32>) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn set_times(&self, _: SetTimes) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn close(&self) -> VfsResult<()> {
        self.0.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::memory::MemoryProvider;

    #[tokio::test]
    async fn handles_refuse_every_mutation() {
        let mem = Arc::new(MemoryProvider::new());
        let w = mem
            .open("/f", OpenOptions::from_linux_flags(0o1102, 0o644))
            .await
            .unwrap();
        w.write(0, b"kept").await.unwrap();
        let ro = ReadonlyProvider::new(mem.clone());
        let h = ro.open("/f", OpenOptions::read_only()).await.unwrap();
        assert_eq!(h.read(0, 16).await.unwrap(), b"kept");
        let rofs = VfsError::rofs().errno;
        assert_eq!(h.write(0, b"x").await.unwrap_err().errno, rofs);
        assert_eq!(h.truncate(0).await.unwrap_err().errno, rofs);
        assert_eq!(h.chmod(0o777).await.unwrap_err().errno, rofs);
        assert_eq!(h.chown(Some(1), None).await.unwrap_err().errno, rofs);
        assert_eq!(mem.stat("/f").await.unwrap().perm & 0o777, 0o644);
    }
}
