//! `/etc/gondolin` as the guest sees it: a native provider over a
//! [`MemoryProvider`] where everything is read-only (the MITM CA under
//! `mitm/`) except the file `listeners`, which the guest may write, truncate
//! and remove, up to [`MAX_LISTENERS_BYTES`]. When a change to it is
//! complete (the handle that wrote is closed, a path truncate, an unlink)
//! the host rereads it ([`Listeners::reload`]); garbage keeps the old
//! routes. No timer: FUSE sends the release when the guest's last
//! descriptor closes, so a shell redirect reloads once, after its writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::vfs::memory::MemoryProvider;
use crate::vfs::{
    CachePolicy, ChangeSink, DirEntry, FileHandle, Metadata, OpenOptions, Provider, SetTimes,
    VfsError, VfsResult,
};

use super::listeners::{Listeners, LISTENERS_PATH};
use super::MAX_LISTENERS_BYTES;

fn too_large() -> VfsError {
    VfsError::with_message(libc::EFBIG, "listeners file too large")
}

/// The `/etc/gondolin` provider.
pub struct EtcProvider {
    mem: Arc<MemoryProvider>,
    listeners: Arc<Listeners>,
    /// Writable opens of `listeners` so far (see [`Provider::truncate`]).
    opens: Arc<AtomicU64>,
}

/// How long a path truncate waits for the open that usually follows it.
const TRUNCATE_GRACE: Duration = Duration::from_millis(200);

impl EtcProvider {
    /// `ca_pem`: the MITM CA served read-only at `mitm/ca.crt` (VMs with a
    /// network). The listeners file starts empty.
    pub async fn new(ca_pem: Option<&[u8]>) -> VfsResult<Self> {
        // Room for the CA and a full listeners file, no more.
        let ca_len = ca_pem.map_or(0, |c| c.len() as u64);
        let mem = Arc::new(MemoryProvider::with_capacity(
            MAX_LISTENERS_BYTES + ca_len + 4096,
        ));
        if let Some(pem) = ca_pem {
            mem.mkdir("/mitm", 0o755).await?;
            let h = mem
                .open("/mitm/ca.crt", OpenOptions::from_linux_flags(0o1101, 0o644))
                .await?;
            h.write(0, pem).await?;
            h.close().await?;
        }
        let listeners = Listeners::new(mem.clone()).await?;
        Ok(EtcProvider {
            mem,
            listeners,
            opens: Arc::default(),
        })
    }

    /// The routing table this provider's file feeds.
    pub fn listeners(&self) -> Arc<Listeners> {
        self.listeners.clone()
    }

    fn writable(path: &str) -> VfsResult<()> {
        if path == LISTENERS_PATH {
            Ok(())
        } else {
            Err(VfsError::rofs())
        }
    }

    async fn reload(&self) {
        // A failure is recorded in the table (reload_error) and the old
        // routes stay; the guest's write itself succeeded.
        let _ = self.listeners.reload().await;
    }
}

#[async_trait]
impl Provider for EtcProvider {
    fn supports_symlinks(&self) -> bool {
        false
    }
    fn cache_policy(&self, path: &str) -> CachePolicy {
        // The host rewrites `listeners` (setIngressRoutes) and says so
        // through `subscribe`; the short policy bounds staleness anyway.
        if path == LISTENERS_PATH {
            CachePolicy::SHORT
        } else {
            CachePolicy::LONG
        }
    }
    fn subscribe(&self, sink: ChangeSink) {
        self.listeners.subscribe(sink);
    }
    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        self.mem.stat(path).await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.mem.lstat(path).await
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        self.mem.readdir(path).await
    }
    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        let writes = opts.write || opts.create || opts.truncate || opts.append;
        if writes {
            Self::writable(path)?;
        }
        let inner = self.mem.open(path, opts).await?;
        if !writes {
            return Ok(inner);
        }
        self.opens.fetch_add(1, Ordering::AcqRel);
        // An O_TRUNC open counts as a write, but the reload waits for the
        // close: the routes must not drop between truncation and writes.
        Ok(Box::new(ListenersHandle {
            inner,
            append: opts.append,
            wrote: AtomicBool::new(opts.truncate),
            listeners: self.listeners.clone(),
        }))
    }
    async fn mkdir(&self, _: &str, _: u32) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn rmdir(&self, _: &str) -> VfsResult<()> {
        Err(VfsError::rofs())
    }
    async fn unlink(&self, path: &str) -> VfsResult<()> {
        Self::writable(path)?;
        self.mem.unlink(path).await?;
        self.reload().await;
        Ok(())
    }
    async fn rename(&self, _: &str, _: &str) -> VfsResult<()> {
        // Editors that save through a temp file + rename cannot create the
        // temp file here either; `listeners` is written in place.
        Err(VfsError::rofs())
    }
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        Self::writable(path)?;
        if len > MAX_LISTENERS_BYTES {
            return Err(too_large());
        }
        self.mem.truncate(path, len).await?;
        // The guest's `> listeners` arrives as this truncate, then an open,
        // writes and the release. Reloading now would drop the routes if
        // what follows is garbage; so reload later, and only if no writer
        // opened the file since (its close reloads).
        let seen = self.opens.load(Ordering::Acquire);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (opens, listeners) = (self.opens.clone(), self.listeners.clone());
                rt.spawn(async move {
                    tokio::time::sleep(TRUNCATE_GRACE).await;
                    if opens.load(Ordering::Acquire) == seen {
                        let _ = listeners.reload().await;
                    }
                });
            }
            Err(_) => self.reload().await,
        }
        Ok(())
    }
    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        Self::writable(path)?;
        self.mem.chmod(path, mode).await
    }
    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        Self::writable(path)?;
        self.mem.set_times(path, times).await
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        self.mem.stat(path).await?;
        if mask & 2 != 0 {
            Self::writable(path)?;
        }
        Ok(())
    }
}

/// A writable handle on `listeners`: size-capped; reloads on close.
struct ListenersHandle {
    inner: Box<dyn FileHandle>,
    append: bool,
    wrote: AtomicBool,
    listeners: Arc<Listeners>,
}

#[async_trait]
impl FileHandle for ListenersHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        self.inner.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        let at = if self.append {
            self.inner.stat().await?.size
        } else {
            offset
        };
        if at.saturating_add(data.len() as u64) > MAX_LISTENERS_BYTES {
            return Err(too_large());
        }
        self.wrote.store(true, Ordering::Release);
        self.inner.write(offset, data).await
    }
    async fn stat(&self) -> VfsResult<Metadata> {
        self.inner.stat().await
    }
    async fn truncate(&self, len: u64) -> VfsResult<()> {
        if len > MAX_LISTENERS_BYTES {
            return Err(too_large());
        }
        self.wrote.store(true, Ordering::Release);
        self.inner.truncate(len).await
    }
    async fn chmod(&self, mode: u32) -> VfsResult<()> {
        self.inner.chmod(mode).await
    }
    async fn set_times(&self, times: SetTimes) -> VfsResult<()> {
        self.inner.set_times(times).await
    }
    async fn close(&self) -> VfsResult<()> {
        let r = self.inner.close().await;
        if self.wrote.swap(false, Ordering::AcqRel) {
            let _ = self.listeners.reload().await;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wflags() -> OpenOptions {
        OpenOptions::from_linux_flags(0o1101, 0o644) // O_WRONLY|O_CREAT|O_TRUNC
    }

    #[tokio::test]
    async fn only_listeners_is_writable_and_capped_and_reloads_on_close() {
        let etc = EtcProvider::new(Some(b"PEM\n")).await.unwrap();
        let l = etc.listeners();
        let rofs = VfsError::rofs().errno;
        assert_eq!(
            etc.open("/mitm/ca.crt", wflags())
                .await
                .err()
                .unwrap()
                .errno,
            rofs
        );
        assert_eq!(
            etc.open("/other", wflags()).await.err().unwrap().errno,
            rofs
        );
        assert_eq!(etc.unlink("/mitm/ca.crt").await.unwrap_err().errno, rofs);
        assert_eq!(etc.mkdir("/d", 0o755).await.unwrap_err().errno, rofs);
        let ca = etc
            .open("/mitm/ca.crt", OpenOptions::read_only())
            .await
            .unwrap();
        assert_eq!(ca.read(0, 100).await.unwrap(), b"PEM\n");

        let h = etc.open(LISTENERS_PATH, wflags()).await.unwrap();
        h.write(0, b"/api :8000\n").await.unwrap();
        assert!(l.routes().is_empty(), "no reload before close");
        h.close().await.unwrap();
        assert_eq!(l.routes()[0].port, 8000);

        let h = etc.open(LISTENERS_PATH, wflags()).await.unwrap();
        let e = h.write(65_000, &[b'#'; 1000]).await.unwrap_err();
        assert_eq!(
            (e.errno, e.message.as_deref()),
            (libc::EFBIG, Some("listeners file too large"))
        );
        assert_eq!(
            h.truncate(MAX_LISTENERS_BYTES + 1).await.unwrap_err().errno,
            libc::EFBIG
        );
        h.write(0, b"garbage\n").await.unwrap();
        h.close().await.unwrap();
        assert_eq!(l.routes()[0].port, 8000, "garbage keeps the old routes");
        assert!(l.reload_error().is_some());

        // `> listeners` with garbage: truncate, open, write, close.
        etc.truncate(LISTENERS_PATH, 0).await.unwrap();
        let h = etc
            .open(LISTENERS_PATH, OpenOptions::from_linux_flags(1, 0))
            .await
            .unwrap();
        h.write(0, b"more garbage\n").await.unwrap();
        h.close().await.unwrap();
        tokio::time::sleep(TRUNCATE_GRACE * 2).await;
        assert_eq!(
            l.routes()[0].port,
            8000,
            "the truncate did not drop the routes"
        );
        // A truncate alone empties the table, a moment later.
        etc.truncate(LISTENERS_PATH, 0).await.unwrap();
        tokio::time::sleep(TRUNCATE_GRACE * 2).await;
        assert!(l.routes().is_empty());

        etc.unlink(LISTENERS_PATH).await.unwrap();
        assert!(l.routes().is_empty());
    }
}
