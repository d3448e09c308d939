//! Attributes of inodes, read and set (included from `server.rs`): through
//! the provider by path, or, for a file the guest holds open whose name is
//! gone, through a handle open on it.

use gondolin_wire::fs::{errno, Attr, SetAttr};

use super::{attr, to_system_time, FsServer};
use crate::vfs::{SetTimes, VfsError, VfsResult};

impl FsServer {
    /// The attributes of `ino`. A file the guest holds open whose name is
    /// gone (unlinked or renamed over by the guest, deleted on the host)
    /// answers through its open handle, with no links left.
    pub(super) async fn attr_of(&self, ino: u64) -> VfsResult<(Attr, u32)> {
        let path = self.path_of(ino);
        let err = match &path {
            Ok(path) => match self.provider.lstat(path).await {
                Ok(m) => return Ok((attr(ino, &m), self.policy(path).attr_ttl_ms)),
                Err(e) => e,
            },
            Err(e) => e.clone(),
        };
        if !err.is(errno::ENOENT) {
            return Err(err);
        }
        let h = self.handles.lock().unwrap().on_inode(ino, None);
        let Some(h) = h else { return Err(err) };
        let mut a = attr(ino, &h.stat().await?);
        a.nlink = 0;
        Ok((a, 0))
    }

    /// `setattr` on a file whose name the guest removed: through a handle
    /// open on it. (Only then: a name deleted behind the server's back may
    /// belong to a read-only provider, and handles do not know.)
    pub(super) async fn set_attr_unlinked(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: &SetAttr,
    ) -> VfsResult<()> {
        let h = self.handles.lock().unwrap().on_inode(ino, fh);
        let h =
            h.ok_or_else(|| VfsError::with_message(errno::ENOENT, format!("stale inode {ino}")))?;
        if let Some(size) = set.size {
            h.truncate(size).await?;
        }
        if let Some(mode) = set.mode {
            h.chmod(mode & 0o7777).await?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            h.chown(set.uid, set.gid).await?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            h.set_times(set_times(set)).await?;
        }
        Ok(())
    }

    pub(super) async fn set_attr_at(
        &self,
        path: &str,
        fh: Option<u64>,
        set: &SetAttr,
    ) -> VfsResult<()> {
        let p = &self.provider;
        if let Some(size) = set.size {
            match fh.map(|fh| self.handle(fh)).transpose()? {
                Some(h) => h.truncate(size).await?,
                None => p.truncate(path, size).await?,
            }
        }
        if let Some(mode) = set.mode {
            p.chmod(path, mode & 0o7777).await?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            p.chown(path, set.uid, set.gid).await?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            p.set_times(path, set_times(set)).await?;
        }
        Ok(())
    }
}

fn set_times(set: &SetAttr) -> SetTimes {
    SetTimes {
        atime: set.atime.map(to_system_time),
        mtime: set.mtime.map(to_system_time),
    }
}
