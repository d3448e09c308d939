//! `MemoryProvider`: a POSIX-ish tree held in host memory.
//!
//! Nodes live in one table keyed by id; directories map names to ids, so
//! hard links are two names for one id and a file unlinked while open lives
//! on until its last handle drops. Writes go in place into the file's
//! buffer, so appending to a large file costs the bytes appended, not the
//! file size.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use gondolin_wire::fs::errno;

use super::path::{file_name, join, normalize, parent};
use super::{
    CachePolicy, DirEntry, FileHandle, FileKind, Metadata, OpenOptions, Provider, SetTimes,
    VfsError, VfsResult,
};

const ROOT: u64 = 1;
const MAX_SYMLINK_HOPS: usize = 40;

enum Body {
    File(Vec<u8>),
    Dir(BTreeMap<String, u64>),
    Symlink(String),
}

struct Node {
    body: Body,
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    open: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    fn new(body: Body, perm: u32) -> Node {
        let now = SystemTime::now();
        let nlink = if matches!(body, Body::Dir(_)) { 2 } else { 1 };
        Node {
            body,
            perm: perm & 0o7777,
            uid: 0,
            gid: 0,
            nlink,
            open: 0,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    fn kind(&self) -> FileKind {
        match self.body {
            Body::File(_) => FileKind::File,
            Body::Dir(_) => FileKind::Dir,
            Body::Symlink(_) => FileKind::Symlink,
        }
    }

    fn size(&self) -> u64 {
        match &self.body {
            Body::File(d) => d.len() as u64,
            Body::Dir(_) => 4096,
            Body::Symlink(t) => t.len() as u64,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next: u64,
    /// Bytes held by file contents, all files together (see
    /// [`DEFAULT_CAPACITY`]).
    bytes: u64,
    capacity: u64,
}

fn enoent() -> VfsError {
    VfsError::noent()
}
fn err(n: i32) -> VfsError {
    VfsError::new(n)
}

impl Tree {
    fn new(capacity: u64) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(Body::Dir(BTreeMap::new()), 0o755));
        Tree {
            nodes,
            next: ROOT + 1,
            bytes: 0,
            capacity,
        }
    }

    /// Set file `id`'s length, zero-filling growth, within the provider's
    /// capacity (ENOSPC) and [`MAX_FILE`] (EFBIG). Every change of a file's
    /// length goes through here, so the byte count stays exact.
    fn set_len(&mut self, id: u64, len: u64) -> VfsResult<()> {
        if len > MAX_FILE {
            return Err(err(errno::EFBIG));
        }
        let (bytes, capacity) = (self.bytes, self.capacity);
        let n = self.node_mut(id)?;
        let d = match &mut n.body {
            Body::File(d) => d,
            Body::Dir(_) => return Err(err(errno::EISDIR)),
            Body::Symlink(_) => return Err(err(errno::EINVAL)),
        };
        let old = d.len() as u64;
        if len > old && bytes - old + len > capacity {
            return Err(err(errno::ENOSPC));
        }
        // Within capacity, so within usize.
        d.resize(len as usize, 0);
        n.touch();
        self.bytes = bytes - old + len;
        Ok(())
    }

    /// Remove node `id`, returning its file bytes to the capacity.
    fn free(&mut self, id: u64) {
        if let Some(Node {
            body: Body::File(d),
            ..
        }) = self.nodes.remove(&id)
        {
            self.bytes -= d.len() as u64;
        }
    }

    fn node(&self, id: u64) -> VfsResult<&Node> {
        self.nodes.get(&id).ok_or_else(enoent)
    }
    fn node_mut(&mut self, id: u64) -> VfsResult<&mut Node> {
        self.nodes.get_mut(&id).ok_or_else(enoent)
    }

    fn children(&self, id: u64) -> VfsResult<&BTreeMap<String, u64>> {
        match &self.node(id)?.body {
            Body::Dir(c) => Ok(c),
            _ => Err(err(errno::ENOTDIR)),
        }
    }
    fn children_mut(&mut self, id: u64) -> VfsResult<&mut BTreeMap<String, u64>> {
        match &mut self.node_mut(id)?.body {
            Body::Dir(c) => Ok(c),
            _ => Err(err(errno::ENOTDIR)),
        }
    }

    /// Resolve a normalized path to a node id, following symlinks in every
    /// component except (unless `follow`) the last.
    fn resolve(&self, path: &str, follow: bool) -> VfsResult<u64> {
        let mut hops = 0;
        self.resolve_from(ROOT, "/", path, follow, &mut hops)
    }

    fn resolve_from(
        &self,
        start: u64,
        start_path: &str,
        path: &str,
        follow: bool,
        hops: &mut usize,
    ) -> VfsResult<u64> {
        let (mut cur, mut cur_path) = if path.starts_with('/') {
            (ROOT, "/".to_string())
        } else {
            (start, start_path.to_string())
        };
        let parts: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        for (i, comp) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *comp == ".." {
                cur_path = parent(&cur_path).to_string();
                cur = self.resolve(&cur_path, true)?;
                continue;
            }
            let child = *self.children(cur)?.get(*comp).ok_or_else(enoent)?;
            if let Body::Symlink(target) = &self.node(child)?.body {
                if !last || follow {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err(err(errno::ELOOP));
                    }
                    let target = target.clone();
                    cur = self.resolve_from(cur, &cur_path, &target, true, hops)?;
                    cur_path = normalize(&if target.starts_with('/') {
                        target
                    } else {
                        join(&cur_path, &target)
                    });
                    continue;
                }
            }
            cur = child;
            cur_path = join(&cur_path, comp);
        }
        Ok(cur)
    }

    /// The parent directory id and final name of `path` (parent resolved
    /// following symlinks).
    fn parent_of<'a>(&self, path: &'a str) -> VfsResult<(u64, &'a str)> {
        let name = file_name(path);
        if name.is_empty() {
            return Err(err(errno::EEXIST));
        }
        let dir = self.resolve(parent(path), true)?;
        self.children(dir)?;
        Ok((dir, name))
    }

    fn alloc(&mut self, node: Node) -> u64 {
        let id = self.next;
        self.next += 1;
        self.nodes.insert(id, node);
        id
    }

    /// Insert a new node under `path`; EEXIST if the name is taken.
    fn create(&mut self, path: &str, body: Body, perm: u32) -> VfsResult<u64> {
        let (dir, name) = self.parent_of(path)?;
        if self.children(dir)?.contains_key(name) {
            return Err(err(errno::EEXIST));
        }
        let is_dir = matches!(body, Body::Dir(_));
        let id = self.alloc(Node::new(body, perm));
        let name = name.to_string();
        self.children_mut(dir)?.insert(name, id);
        let d = self.node_mut(dir)?;
        d.touch();
        if is_dir {
            d.nlink += 1;
        }
        Ok(id)
    }

    /// Drop one link to `id`; free it when nothing refers to it any more.
    fn drop_link(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.nlink = n
                .nlink
                .saturating_sub(if matches!(n.body, Body::Dir(_)) { 2 } else { 1 });
            n.ctime = SystemTime::now();
            if n.nlink == 0 && n.open == 0 {
                self.free(id);
            }
        }
    }

    fn release(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.open = n.open.saturating_sub(1);
            if n.nlink == 0 && n.open == 0 {
                self.free(id);
            }
        }
    }

    fn meta(&self, id: u64) -> VfsResult<Metadata> {
        let n = self.node(id)?;
        Ok(Metadata {
            kind: n.kind(),
            perm: n.perm,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            size: n.size(),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            ino: id,
        })
    }

    fn is_ancestor(&self, ancestor: u64, mut id: u64, path_of_id: &str) -> bool {
        // Walk up by path: ids have no parent pointers.
        let mut p = path_of_id.to_string();
        loop {
            if id == ancestor {
                return true;
            }
            if p == "/" {
                return false;
            }
            p = parent(&p).to_string();
            match self.resolve(&p, true) {
                Ok(i) => id = i,
                Err(_) => return false,
            }
        }
    }
}

/// An in-memory filesystem (upstream `MemoryProvider`).
pub struct MemoryProvider {
    tree: Arc<RwLock<Tree>>,
    readonly: AtomicBool,
}

impl Default for MemoryProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryProvider {
    /// An empty tree holding at most [`DEFAULT_CAPACITY`] bytes of file
    /// contents.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// An empty tree holding at most `bytes` bytes of file contents; a
    /// write or truncate past that fails ENOSPC, as on a full disk.
    pub fn with_capacity(bytes: u64) -> Self {
        MemoryProvider {
            tree: Arc::new(RwLock::new(Tree::new(bytes))),
            readonly: AtomicBool::new(false),
        }
    }

    /// Refuse every later mutation with EROFS.
    pub fn set_readonly(&self) {
        self.readonly.store(true, Ordering::Release);
    }

    fn writable(&self) -> VfsResult<()> {
        if self.readonly.load(Ordering::Acquire) {
            Err(VfsError::rofs())
        } else {
            Ok(())
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Tree) -> VfsResult<T>) -> VfsResult<T> {
        f(&self.tree.read().unwrap())
    }
    fn write<T>(&self, f: impl FnOnce(&mut Tree) -> VfsResult<T>) -> VfsResult<T> {
        self.writable()?;
        f(&mut self.tree.write().unwrap())
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn readonly(&self) -> bool {
        self.readonly.load(Ordering::Acquire)
    }
    fn supports_symlinks(&self) -> bool {
        true
    }
    /// Only this process changes a MemoryProvider: through the fs server
    /// (which keeps the guest's caches right) or through its JS object (which
    /// invalidates the guests it is mounted in), so the guest may cache long.
    fn cache_policy(&self, _path: &str) -> CachePolicy {
        CachePolicy::LONG
    }

    async fn stat(&self, path: &str) -> VfsResult<Metadata> {
        self.read(|t| t.meta(t.resolve(path, true)?))
    }
    async fn lstat(&self, path: &str) -> VfsResult<Metadata> {
        self.read(|t| t.meta(t.resolve(path, false)?))
    }
    async fn readdir(&self, path: &str) -> VfsResult<Vec<DirEntry>> {
        self.read(|t| {
            let dir = t.resolve(path, true)?;
            t.children(dir)?
                .iter()
                .map(|(name, id)| {
                    Ok(DirEntry {
                        name: name.clone(),
                        kind: t.node(*id)?.kind(),
                    })
                })
                .collect()
        })
    }

    async fn open(&self, path: &str, opts: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        if opts.write || opts.create || opts.truncate {
            self.writable()?;
        }
        let mut t = self.tree.write().unwrap();
        let id = match t.resolve(path, true) {
            Ok(_) if opts.create && opts.exclusive => return Err(err(errno::EEXIST)),
            Ok(id) => id,
            Err(e) if e.is(errno::ENOENT) && opts.create => {
                // A dangling final symlink creates its target, as open(2) does.
                let target = match t
                    .resolve(path, false)
                    .ok()
                    .map(|id| t.node(id).map(|n| &n.body))
                {
                    Some(Ok(Body::Symlink(s))) => {
                        let s = s.clone();
                        normalize(&if s.starts_with('/') {
                            s
                        } else {
                            join(parent(path), &s)
                        })
                    }
                    _ => path.to_string(),
                };
                t.create(&target, Body::File(Vec::new()), opts.mode)?
            }
            Err(e) => return Err(e),
        };
        match &t.node(id)?.body {
            Body::Dir(_) if opts.write => return Err(err(errno::EISDIR)),
            Body::File(_) if opts.truncate && opts.write => t.set_len(id, 0)?,
            _ => {}
        }
        t.node_mut(id)?.open += 1;
        Ok(Box::new(MemHandle {
            tree: self.tree.clone(),
            id,
            opts,
            readonly: self.readonly(),
        }))
    }

    async fn mkdir(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.write(|t| t.create(path, Body::Dir(BTreeMap::new()), mode).map(|_| ()))
    }

    async fn rmdir(&self, path: &str) -> VfsResult<()> {
        self.write(|t| {
            if path == "/" {
                return Err(err(errno::EBUSY));
            }
            let (dir, name) = t.parent_of(path)?;
            let id = *t.children(dir)?.get(name).ok_or_else(enoent)?;
            match &t.node(id)?.body {
                Body::Dir(c) if !c.is_empty() => return Err(err(errno::ENOTEMPTY)),
                Body::Dir(_) => {}
                _ => return Err(err(errno::ENOTDIR)),
            }
            t.children_mut(dir)?.remove(name);
            let d = t.node_mut(dir)?;
            d.nlink -= 1;
            d.touch();
            t.drop_link(id);
            Ok(())
        })
    }

    async fn unlink(&self, path: &str) -> VfsResult<()> {
        self.write(|t| {
            let (dir, name) = t.parent_of(path)?;
            let id = *t.children(dir)?.get(name).ok_or_else(enoent)?;
            if matches!(t.node(id)?.body, Body::Dir(_)) {
                return Err(err(errno::EISDIR));
            }
            t.children_mut(dir)?.remove(name);
            t.node_mut(dir)?.touch();
            t.drop_link(id);
            Ok(())
        })
    }

    async fn rename(&self, from: &str, to: &str) -> VfsResult<()> {
        self.write(|t| {
            let (sdir, sname) = t.parent_of(from)?;
            let id = *t.children(sdir)?.get(sname).ok_or_else(enoent)?;
            let (ddir, dname) = t.parent_of(to)?;
            let moving_dir = matches!(t.node(id)?.body, Body::Dir(_));
            if moving_dir && t.is_ancestor(id, ddir, parent(to)) {
                return Err(err(errno::EINVAL));
            }
            if let Some(&old) = t.children(ddir)?.get(dname) {
                if old == id {
                    return Ok(());
                }
                match (&t.node(old)?.body, moving_dir) {
                    (Body::Dir(c), true) if !c.is_empty() => return Err(err(errno::ENOTEMPTY)),
                    (Body::Dir(_), false) => return Err(err(errno::EISDIR)),
                    (Body::Dir(_), true) => {}
                    (_, true) => return Err(err(errno::ENOTDIR)),
                    _ => {}
                }
                t.children_mut(ddir)?.remove(dname);
                if moving_dir {
                    t.node_mut(ddir)?.nlink -= 1;
                }
                t.drop_link(old);
            }
            t.children_mut(sdir)?.remove(sname);
            t.children_mut(ddir)?.insert(dname.to_string(), id);
            if moving_dir && sdir != ddir {
                t.node_mut(sdir)?.nlink -= 1;
                t.node_mut(ddir)?.nlink += 1;
            }
            t.node_mut(sdir)?.touch();
            t.node_mut(ddir)?.touch();
            t.node_mut(id)?.ctime = SystemTime::now();
            Ok(())
        })
    }

    async fn link(&self, existing: &str, new_path: &str) -> VfsResult<()> {
        self.write(|t| {
            let id = t.resolve(existing, false)?;
            if matches!(t.node(id)?.body, Body::Dir(_)) {
                return Err(err(errno::EPERM));
            }
            let (dir, name) = t.parent_of(new_path)?;
            if t.children(dir)?.contains_key(name) {
                return Err(err(errno::EEXIST));
            }
            t.children_mut(dir)?.insert(name.to_string(), id);
            t.node_mut(dir)?.touch();
            let n = t.node_mut(id)?;
            n.nlink += 1;
            n.ctime = SystemTime::now();
            Ok(())
        })
    }

    async fn symlink(&self, target: &str, path: &str) -> VfsResult<()> {
        self.write(|t| {
            t.create(path, Body::Symlink(target.to_string()), 0o777)
                .map(|_| ())
        })
    }

    async fn readlink(&self, path: &str) -> VfsResult<String> {
        self.read(|t| match &t.node(t.resolve(path, false)?)?.body {
            Body::Symlink(s) => Ok(s.clone()),
            _ => Err(err(errno::EINVAL)),
        })
    }

    async fn truncate(&self, path: &str, len: u64) -> VfsResult<()> {
        self.write(|t| {
            let id = t.resolve(path, true)?;
            t.set_len(id, len)
        })
    }

    async fn chmod(&self, path: &str, mode: u32) -> VfsResult<()> {
        self.write(|t| {
            chmod(t.node_mut(t.resolve(path, true)?)?, mode);
            Ok(())
        })
    }

    async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        self.write(|t| {
            chown(t.node_mut(t.resolve(path, true)?)?, uid, gid);
            Ok(())
        })
    }

    async fn set_times(&self, path: &str, times: SetTimes) -> VfsResult<()> {
        self.write(|t| {
            set_times(t.node_mut(t.resolve(path, true)?)?, times);
            Ok(())
        })
    }

    async fn access(&self, path: &str, mask: i32) -> VfsResult<()> {
        self.read(|t| t.resolve(path, true).map(|_| ()))?;
        if mask & 2 != 0 {
            self.writable()?;
        }
        // Permission bits are checked by the server from stat.
        Err(VfsError::nosys("access"))
    }

    async fn realpath(&self, path: &str) -> VfsResult<String> {
        // Rebuild the path by resolving each prefix without following the
        // last component, expanding symlinks textually.
        let mut out = "/".to_string();
        let t = self.tree.read().unwrap();
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        pending.reverse();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    out = parent(&out).to_string();
                    continue;
                }
                _ => {}
            }
            let candidate = join(&out, &c);
            let id = t.resolve(&candidate, false)?;
            if let Body::Symlink(target) = &t.node(id)?.body {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(err(errno::ELOOP));
                }
                if target.starts_with('/') {
                    out = "/".into();
                }
                for part in target.split('/').filter(|c| !c.is_empty()).rev() {
                    pending.push(part.to_string());
                }
            } else {
                out = candidate;
            }
        }
        Ok(out)
    }
}

fn chmod(n: &mut Node, mode: u32) {
    n.perm = mode & 0o7777;
    n.ctime = SystemTime::now();
}

fn chown(n: &mut Node, uid: Option<u32>, gid: Option<u32>) {
    if let Some(u) = uid {
        n.uid = u;
    }
    if let Some(g) = gid {
        n.gid = g;
    }
    n.ctime = SystemTime::now();
}

fn set_times(n: &mut Node, times: SetTimes) {
    if let Some(a) = times.atime {
        n.atime = a;
    }
    if let Some(m) = times.mtime {
        n.mtime = m;
    }
    n.ctime = SystemTime::now();
}

/// Largest single file (EFBIG past it).
const MAX_FILE: u64 = 64 << 30;

/// File bytes a [`MemoryProvider`] holds, all files together, unless built
/// [`with_capacity`](MemoryProvider::with_capacity): they live in the host's
/// memory, and files are not sparse, so without a bound one guest write at
/// a far offset (or a truncate to a huge length) would allocate that much
/// host memory at once (found by the `vfs_requests` fuzz target) and a
/// failed allocation aborts the host process. Past it: ENOSPC.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;

struct MemHandle {
    tree: Arc<RwLock<Tree>>,
    id: u64,
    opts: OpenOptions,
    readonly: bool,
}

impl Drop for MemHandle {
    fn drop(&mut self) {
        if let Ok(mut t) = self.tree.write() {
            t.release(self.id);
        }
    }
}

#[async_trait]
impl FileHandle for MemHandle {
    async fn read(&self, offset: u64, len: usize) -> VfsResult<Vec<u8>> {
        if !self.opts.read {
            return Err(err(errno::EBADF));
        }
        let mut t = self.tree.write().unwrap();
        let n = t.node_mut(self.id)?;
        n.atime = SystemTime::now();
        match &n.body {
            Body::File(d) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(d.len());
                let end = start.saturating_add(len).min(d.len());
                Ok(d[start..end].to_vec())
            }
            Body::Dir(_) => Err(err(errno::EISDIR)),
            Body::Symlink(_) => Err(err(errno::EINVAL)),
        }
    }

    async fn write(&self, offset: u64, data: &[u8]) -> VfsResult<usize> {
        if !self.opts.write {
            return Err(err(errno::EBADF));
        }
        if self.readonly {
            return Err(VfsError::rofs());
        }
        let mut t = self.tree.write().unwrap();
        let Body::File(d) = &t.node(self.id)?.body else {
            return Err(err(errno::EISDIR));
        };
        let len = d.len() as u64;
        let at = if self.opts.append { len } else { offset };
        let end = at
            .checked_add(data.len() as u64)
            .ok_or_else(|| err(errno::EFBIG))?;
        if end > len {
            t.set_len(self.id, end)?;
        }
        let n = t.node_mut(self.id)?;
        if let Body::File(d) = &mut n.body {
            // `end` is within the file now, so within usize.
            d[at as usize..end as usize].copy_from_slice(data);
        }
        n.touch();
        Ok(data.len())
    }

    async fn stat(&self) -> VfsResult<Metadata> {
        self.tree.read().unwrap().meta(self.id)
    }

    async fn truncate(&self, len: u64) -> VfsResult<()> {
        if !self.opts.write {
            return Err(err(errno::EBADF));
        }
        self.tree.write().unwrap().set_len(self.id, len)
    }

    async fn chmod(&self, mode: u32) -> VfsResult<()> {
        self.change(|n| chmod(n, mode))
    }

    async fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> VfsResult<()> {
        self.change(|n| chown(n, uid, gid))
    }

    async fn set_times(&self, times: SetTimes) -> VfsResult<()> {
        self.change(|n| set_times(n, times))
    }
}

impl MemHandle {
    /// A metadata change through the handle (the node may have no name).
    fn change(&self, f: impl FnOnce(&mut Node)) -> VfsResult<()> {
        if self.readonly {
            return Err(VfsError::rofs());
        }
        f(self.tree.write().unwrap().node_mut(self.id)?);
        Ok(())
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
