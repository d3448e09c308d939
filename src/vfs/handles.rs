//! The open-file table of the fs RPC server: each file handle the guest
//! holds, with the inode and path it was opened at.
//!
//! The inode is what keeps an open file usable once its name is gone
//! (unlinked, renamed over): `fstat`, `fchmod` and friends arrive as
//! requests on the inode, and are served through a handle open on it. The
//! path follows renames, so a write is recognised as the guest's own
//! change when the provider reports it.

use std::collections::HashMap;
use std::sync::Arc;

use gondolin_wire::fs::errno;

use super::{FileHandle, VfsError, VfsResult};

/// Open handles per VM before `open` fails with ENFILE.
const MAX_HANDLES: usize = 65_536;
const ENFILE: i32 = 23;

struct OpenFile {
    handle: Arc<dyn FileHandle>,
    ino: u64,
    path: String,
}

#[derive(Default)]
pub(super) struct OpenFiles {
    by_fh: HashMap<u64, OpenFile>,
    next: u64,
}

impl OpenFiles {
    pub(super) fn add(&mut self, h: Box<dyn FileHandle>, ino: u64, path: &str) -> VfsResult<u64> {
        if self.by_fh.len() >= MAX_HANDLES {
            return Err(VfsError::with_message(
                ENFILE,
                "too many open files in the VFS",
            ));
        }
        self.next += 1;
        let fh = self.next;
        self.by_fh.insert(
            fh,
            OpenFile {
                handle: Arc::from(h),
                ino,
                path: path.to_string(),
            },
        );
        Ok(fh)
    }

    /// The inode a handle is open on, once it is known (`create` learns it
    /// after opening).
    pub(super) fn set_ino(&mut self, fh: u64, ino: u64) {
        if let Some(f) = self.by_fh.get_mut(&fh) {
            f.ino = ino;
        }
    }

    pub(super) fn get(&self, fh: u64) -> VfsResult<Arc<dyn FileHandle>> {
        self.by_fh
            .get(&fh)
            .map(|f| f.handle.clone())
            .ok_or_else(|| VfsError::new(errno::EBADF))
    }

    pub(super) fn path(&self, fh: u64) -> Option<String> {
        self.by_fh.get(&fh).map(|f| f.path.clone())
    }

    /// A handle open on `ino`: `fh` if it is one, else any.
    pub(super) fn on_inode(&self, ino: u64, fh: Option<u64>) -> Option<Arc<dyn FileHandle>> {
        if let Some(f) = fh.and_then(|fh| self.by_fh.get(&fh)) {
            if f.ino == ino {
                return Some(f.handle.clone());
            }
        }
        self.by_fh
            .values()
            .find(|f| f.ino == ino)
            .map(|f| f.handle.clone())
    }

    /// `from` (and everything below it) is now at `to`.
    pub(super) fn rename(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        for f in self.by_fh.values_mut() {
            if f.path == from || f.path.starts_with(&prefix) {
                f.path = format!("{to}{}", &f.path[from.len()..]);
            }
        }
    }

    pub(super) fn remove(&mut self, fh: u64) -> Option<Arc<dyn FileHandle>> {
        self.by_fh.remove(&fh).map(|f| f.handle)
    }

    pub(super) fn drain(&mut self) -> Vec<Arc<dyn FileHandle>> {
        self.by_fh.drain().map(|(_, f)| f.handle).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::memory::MemoryProvider;
    use crate::vfs::{OpenOptions, Provider};

    async fn handle() -> Box<dyn FileHandle> {
        let p = MemoryProvider::new();
        let mut o = OpenOptions::from_linux_flags(2, 0o644);
        o.create = true;
        p.open("/f", o).await.unwrap()
    }

    #[tokio::test]
    async fn a_handle_is_found_by_its_inode_and_follows_renames() {
        let mut t = OpenFiles::default();
        let a = t.add(handle().await, 0, "/d/f").unwrap();
        t.set_ino(a, 7);
        let b = t.add(handle().await, 8, "/g").unwrap();
        assert!(t.on_inode(7, None).is_some());
        assert!(
            t.on_inode(7, Some(b)).is_some(),
            "fh of another inode ignored"
        );
        assert!(t.on_inode(9, None).is_none());
        t.rename("/d", "/e");
        assert_eq!(t.path(a).as_deref(), Some("/e/f"));
        assert_eq!(t.path(b).as_deref(), Some("/g"));
        assert!(t.remove(a).is_some());
        assert!(t.on_inode(7, None).is_none());
        assert_eq!(t.get(a).err().unwrap().errno, errno::EBADF);
    }
}
