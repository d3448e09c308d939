//! `MountRouter`: several providers under one root, routed by the longest
//! mount prefix. Parents of mount points that no provider holds appear as
//! synthetic directories, a mount masks a same-named entry of the provider
//! above it, and nothing moves or links across mounts (EXDEV).

use std::sync::Arc;

use async_trait::async_trait;
use gondolin_wire::fs::errno;

use super::path::{check_absolute, is_within, strip_base};
use super::{
    CachePolicy, DirEntry, FileHandle, FileKind, Metadata, OpenOptions, Provider, SetTimes, StatFs,
    VfsError, VfsResult, SYNTHETIC_STATFS,
};

pub struct MountRouter {
    /// Longest mount path first.
    mounts: Vec<(String, Arc<dyn Provider>)>,
}

impl MountRouter {
    pub fn new(mounts: Vec<(String, Arc<dyn Provider>)>) -> VfsResult<Self> {
        let mut out: Vec<(String, Arc<dyn Provider>)> = Vec::with_capacity(mounts.len());
        for (path, p) in mounts {
            let path = check_absolute(&path, "mount path")?;
            if out.iter().any(|(m, _)| *m == path) {
                return Err(VfsError::invalid(format!("duplicate mount path: {path}")));
            }
            out.push((path, p));
        }
        out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(MountRouter { mounts: out })
    }

    /// The mount serving `path`: its mount path, provider and the path
    /// inside the provider.
    pub fn route(&self, path: &str) -> Option<(&str, &Arc<dyn Provider>, String)> {
        self.mounts
            .iter()
            .find(|(m, _)| is_within(path, m))
            .map(|(m, p)| {
                (
                    m.as_str(),
                    p,
                    strip_base(path, m).unwrap_or_else(|| "/".into()),
                )
            })
    }

    fn routed(&self, path: &str) -> VfsResult<(&Arc<dyn Provider>, String)> {
        self.route(path)
            .map(|(_, p, inner)| (p, inner))
            .ok_or_else(VfsError::rofs)
    }

    fn is_mount_point(&self, path: &str) -> bool {
        self.mounts.iter().any(|(m, _)| m == path)
    }

    /// True if some mount lies strictly below `path`.
    fn has_mount_below(&self, path: &str) -> bool {
        self.mounts
            .iter()
            .any(|(m, _)| m != path && is_within(m, path))
    }

    /// Names of mounts (or their synthetic parents) directly inside `dir`.
    fn child_mount_names(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (m, _) in &self.mounts {
            if m == dir || !is_within(m, dir) {
                continue;
            }
            let rest = strip_base(m, dir).unwrap_or_default();
            if let Some(first) = rest.split('/').find(|c| !c.is_empty()) {
                if !names.iter().any(|n| n == first) {
                    names.push(first.to_string());
                }
            }
        }
        names
    }

    /// Both paths must be served by the same mount.
    fn same_mount(&self, a: &str, b: &str) -> VfsResult<(&Arc<dyn Provider>, String, String)> {
        let (ma, pa, ia) = self.route(a).ok_or_else(VfsError::rofs)?;
        let (mb, _, ib) = self.route(b).ok_or_else(VfsError::rofs)?;
        if ma != mb {
            return Err(VfsError::new(errno::EXDEV));
        }
        Ok((pa, ia, ib))
    }

    fn refuse_mount_point(&self, path: &str) -> VfsResult<()> {
        if self.is_mount_point(path) || self.has_mount_below(path) {
            Err(VfsError::new(errno::EBUSY))
        } else {
            Ok(())
        }
    }

    async fn stat_with(&self, path: &str, follow: bool) -> VfsResult<Metadata> {
        let r = match self.route(path) {
            Some((_, p, inner)) if follow => p.stat(&inner).await,
            Some((_, p, inner)) => p.lstat(&inner).await,
            None => Err(VfsError::noent()),
        };
        match r {
            Err(e) if e.is(errno::ENOENT) && self.has_mount_below(path) => {
                Ok(Metadata::synthetic_dir())
            }
            // A mount point always looks like a directory to its parent.
            Ok(m) if m.kind != FileKind::Dir && self.has_mount_below(path) => {
                Ok(Metadata::synthetic_dir())
            }
            r => r,
        }
    }
}

#[async_trait]
impl Provider for MountRouter {
    fn readonly(&self) -> bool {
        !self.mounts.is_empty() && self.mounts.iter().all(|(_, p)| p.readonly())
    }
    fn supports_symlinks(&self) -> bool {
        self.mounts.iter().any(|(_, p)| p.supports_symlinks())
    }
    fn cache_policy(&self, path: &str) -> CachePolicy {
        match self.route(path) {
            Some((_, p, inner)) => p.cache_policy(&inner),
            // Synthetic parents only change with the mount table: never.
            None => CachePolicy::LONG,
        }
    }
    fn subscribe(&self, sink: super::ChangeSink) {
        for (mount, p) in &self.mounts {
            let mount = mount.clone();
            let sink = sink.clone();
            p.subscribe(std::sync::Arc::new(move |inner: &str| match inner {
                "/" => sink(&mount),
                _ => sink(&super::path::join(&mount, inner.trim_start_matches('/'))),
            }));
        }
    }

    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        self.stat_with(path, true).await
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.stat_with(path, false).await
    }

    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        let masks = self.child_mount_names(path);
        let mut entries = match self.route(path) {
            Some((_, p, inner)) => match p.readdir(&inner).await {
                Ok(v) => v,
                Err(e) if e.is(errno::ENOENT) && !masks.is_empty() => Vec::new(),
                Err(e) => return Err(e),
            },
            None if !masks.is_empty() => Vec::new(),
            None => return Err(VfsError::noent()),
        };
        entries.retain(|e| !masks.contains(&e.name));
        entries.extend(masks.into_iter().map(|name| DirEntry {
            name,
            kind: FileKind::Dir,
        }));
        Ok(entries)
    }

    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        if self.has_mount_below(path) {
            return Err(VfsError::new(errno::EISDIR));
        }
        let (p, inner) = self.routed(path)?;
        p.open(&inner, opts).await
    }
    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()> {
        if self.is_mount_point(path) || self.has_mount_below(path) {
            return Err(VfsError::new(errno::EEXIST));
        }
        let (p, inner) = self.routed(path)?;
        p.mkdir(&inner, mode).await
    }
    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        self.refuse_mount_point(path)?;
        let (p, inner) = self.routed(path)?;
        p.rmdir(&inner).await
    }
    async fn unlink(&self, path: &str) -> VfsResult<()> {
        self.refuse_mount_point(path)?;
        let (p, inner) = self.routed(path)?;
        p.unlink(&inner).await
    }
    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        self.refuse_mount_point(from)?;
        self.refuse_mount_point(to)?;
        let (p, a, b) = self.same_mount(from, to)?;
        p.rename(&a, &b).await
    }
    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        let (p, a, b) = self.same_mount(existing, new_path)?;
        p.link(&a, &b).await
    }
    async fn symlink(&self, target: &str, path: &str) -> VfsResult<()> {
        if self.is_mount_point(path) || self.has_mount_below(path) {
            return Err(VfsError::new(errno::EEXIST));
        }
        let (p, inner) = self.routed(path)?;
        p.symlink(target, &inner).await
    }
    async fn readlink(&self, path: &str) -> VfsResult<String> {
        let (p, inner) = self.routed(path)?;
        p.readlink(&inner).await
    }
    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        let (p, inner) = self.routed(path)?;
        p.truncate(&inner, len).await
    }
    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        let (p, inner) = self.routed(path)?;
        p.chmod(&inner, mode).await
    }
    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        let (p, inner) = self.routed(path)?;
        p.chown(&inner, uid, gid).await
    }
    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        let (p, inner) = self.routed(path)?;
        p.set_times(&inner, times).await
    }
    async fn statfs(&self, path: &str) -> VfsResult<StatFs> {
        match self.route(path) {
            Some((_, p, inner)) => match p.statfs(&inner).await {
                Err(e) if e.is(errno::ENOENT) && self.has_mount_below(path) => Ok(SYNTHETIC_STATFS),
                r => r,
            },
            None => Ok(SYNTHETIC_STATFS),
        }
    }
    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        match self.route(path) {
            Some((_, p, inner)) => match p.access(&inner, mask).await {
                Err(e) if e.is(errno::ENOENT) && self.has_mount_below(path) => Ok(()),
                r => r,
            },
            None if self.has_mount_below(path) => Ok(()),
            None => Err(VfsError::noent()),
        }
    }
    async fn realpath(&self, path: &str) -> VfsResult<String> {
        match self.route(path) {
            Some((m, p, inner)) => {
                let r = p.realpath(&inner).await?;
                Ok(if m == "/" {
                    r
                } else if r == "/" {
                    m.to_string()
                } else {
                    format!("{m}{r}")
                })
            }
            None if self.has_mount_below(path) => Ok(path.to_string()),
            None => Err(VfsError::noent()),
        }
    }
    async fn close(&self) -> VfsResult<()> {
        for (_, p) in &self.mounts {
            p.close().await.ok();
        }
        Ok(())
    }
}
