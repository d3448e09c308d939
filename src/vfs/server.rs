//! The fs RPC server: turns the guest's inode-based FUSE requests into
//! path-based [`Provider`] calls.
//!
//! Inode numbers and file handles are ours: an inode is a path the guest has
//! looked up (kept until the kernel forgets it), a handle is an open
//! [`FileHandle`]. Every request runs as its own task, so a slow provider
//! call (a JS provider, a big read) never holds up the others; the wire
//! side (framing, how many run at once) is [`super::serve`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gondolin_wire::fs::{
    errno, Attr, Caller, DirEntry as WireDirEntry, Entry, FileKind, FsHostMsg, FsOp, FsReply,
    FsRequest, FsResponse, SetTime, Timestamp, MAX_READDIR_ENTRIES, ROOT_INO,
};
use tokio::sync::mpsc;

use super::deadline::{bounded, configured_timeout};
use super::handles::OpenFiles;
use super::inodes::Inodes;
use super::path::{file_name, join, parent};
use super::{CachePolicy, FileHandle, Metadata, OpenOptions, Provider, VfsError, VfsResult};

/// Directory listings kept for paged `readdir` continuations.
const DIR_CACHE_TTL: Duration = Duration::from_secs(5);
const DIR_CACHE_MAX: usize = 128;
const RENAME_NOREPLACE: u32 = 1;

struct DirListing {
    at: Instant,
    entries: Arc<Vec<(String, FileKind)>>,
}

/// Counters for benchmarks and debugging.
#[derive(Debug, Default)]
pub struct FsMetrics {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// One VM's filesystem service.
pub struct FsServer {
    provider: Arc<dyn Provider>,
    inodes: Mutex<Inodes>,
    handles: Mutex<OpenFiles>,
    dirs: Mutex<HashMap<u64, DirListing>>,
    notify: Mutex<Option<mpsc::UnboundedSender<FsHostMsg>>>,
    /// Paths the guest changed lately, with when: the provider's own change
    /// reports for them are echoes of the guest's work, not news.
    guest_touched: Mutex<HashMap<String, Instant>>,
    /// How long one request may run before it is answered EIO.
    timeout: Mutex<Duration>,
    pub metrics: FsMetrics,
}

/// How long after a guest change to a path a provider's report of a change
/// there is taken for the echo of it. A host edit inside this window is
/// seen once the guest's cache TTL runs out instead of at once.
const ECHO_WINDOW: Duration = Duration::from_millis(300);
/// Past this many remembered paths, the stale ones are dropped.
const TOUCHED_MAX: usize = 4096;

impl std::fmt::Debug for FsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsServer")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

fn ts(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                Timestamp {
                    secs: -(d.as_secs() as i64),
                    nanos: 0,
                }
            } else {
                Timestamp {
                    secs: -(d.as_secs() as i64) - 1,
                    nanos: 1_000_000_000 - d.subsec_nanos(),
                }
            }
        }
    }
}

fn to_system_time(t: SetTime) -> SystemTime {
    match t {
        SetTime::Now => SystemTime::now(),
        SetTime::At(Timestamp { secs, nanos }) => {
            if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nanos.min(999_999_999))
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                    + Duration::from_nanos(u64::from(nanos.min(999_999_999)))
            }
        }
    }
}

fn attr(ino: u64, m: &Metadata) -> Attr {
    Attr {
        ino,
        kind: m.kind,
        perm: m.perm & 0o7777,
        nlink: m.nlink.max(1),
        uid: m.uid,
        gid: m.gid,
        size: m.size,
        blocks: m.size.div_ceil(512),
        atime: ts(m.atime),
        mtime: ts(m.mtime),
        ctime: ts(m.ctime),
    }
}

/// A d_ino for a listed child the guest has not looked up: stable per path,
/// never 0 (some programs skip 0), never one of ours (high bit set).
fn listing_ino(path: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish() | (1 << 63)
}

impl FsServer {
    pub fn new(provider: Arc<dyn Provider>) -> Arc<Self> {
        let server = Arc::new(FsServer {
            provider,
            inodes: Mutex::new(Inodes::new()),
            handles: Mutex::default(),
            dirs: Mutex::new(HashMap::new()),
            notify: Mutex::new(None),
            guest_touched: Mutex::new(HashMap::new()),
            timeout: Mutex::new(configured_timeout()),
            metrics: FsMetrics::default(),
        });
        // Changes other programs make (a RealFS directory edited on the
        // host) reach the guest's caches at once; the provider drops the
        // subscription once this server is gone.
        let weak = Arc::downgrade(&server);
        server
            .provider
            .subscribe(Arc::new(move |path: &str| match weak.upgrade() {
                Some(s) => {
                    s.provider_changed(path);
                    true
                }
                None => false,
            }));
        server
    }

    /// The provider reports `path` changed: invalidate it in the guest
    /// unless the change is the guest's own.
    fn provider_changed(&self, path: &str) {
        let echo = self
            .guest_touched
            .lock()
            .unwrap()
            .get(path)
            .is_some_and(|t| t.elapsed() < ECHO_WINDOW);
        if !echo {
            self.invalidate(path);
        }
    }

    /// Remember which paths `op` changes, to tell echoes from news.
    fn note_guest_change(&self, op: &FsOp) {
        let mut paths = Vec::new();
        match op {
            FsOp::Create { parent, name, .. }
            | FsOp::Mkdir { parent, name, .. }
            | FsOp::Symlink { parent, name, .. }
            | FsOp::Unlink { parent, name }
            | FsOp::Rmdir { parent, name } => paths.extend(self.child_of(*parent, name).ok()),
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                paths.extend(self.child_of(*parent, name).ok());
                paths.extend(self.child_of(*new_parent, new_name).ok());
            }
            FsOp::Link {
                ino,
                new_parent,
                new_name,
            } => {
                paths.extend(self.path_of(*ino).ok());
                paths.extend(self.child_of(*new_parent, new_name).ok());
            }
            FsOp::SetAttr { ino, .. } => paths.extend(self.path_of(*ino).ok()),
            FsOp::Write { fh, .. } => paths.extend(self.handles.lock().unwrap().path(*fh)),
            _ => return,
        }
        let now = Instant::now();
        let mut t = self.guest_touched.lock().unwrap();
        if t.len() >= TOUCHED_MAX {
            t.retain(|_, at| now.duration_since(*at) < ECHO_WINDOW);
        }
        for p in paths {
            t.insert(p, now);
        }
    }

    /// Where invalidations go while a guest connection is served.
    pub(super) fn set_notifier(&self, tx: Option<mpsc::UnboundedSender<FsHostMsg>>) {
        *self.notify.lock().unwrap() = tx;
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// The host changed `path` behind the guest's back (e.g. `vm.fs` on a
    /// VFS path): drop the guest kernel's cached attributes, data and lookup.
    pub fn invalidate(&self, path: &str) {
        let (ino, parent_ino) = {
            let t = self.inodes.lock().unwrap();
            (t.peek(path), t.peek(parent(path)))
        };
        if let Some(p) = parent_ino {
            self.forget_listing(p);
        }
        let Some(tx) = self.notify.lock().unwrap().clone() else {
            return;
        };
        if let Some(ino) = ino {
            let _ = tx.send(FsHostMsg::InvalidateInode { ino });
        }
        if let (Some(p), name) = (parent_ino, file_name(path)) {
            if !name.is_empty() {
                let _ = tx.send(FsHostMsg::InvalidateEntry {
                    parent: p,
                    name: name.to_string(),
                });
            }
        }
    }

    fn path_of(&self, ino: u64) -> VfsResult<String> {
        self.inodes.lock().unwrap().path(ino)
    }

    fn child_of(&self, parent_ino: u64, name: &str) -> VfsResult<String> {
        Ok(join(&self.path_of(parent_ino)?, name))
    }

    fn handle(&self, fh: u64) -> VfsResult<Arc<dyn FileHandle>> {
        self.handles.lock().unwrap().get(fh)
    }

    /// Bound every request to `limit` (default 30 s, or
    /// `GONDOLIN_VFS_TIMEOUT_MS`).
    pub fn set_request_timeout(&self, limit: Duration) {
        *self.timeout.lock().unwrap() = limit;
    }

    fn policy(&self, path: &str) -> CachePolicy {
        self.provider.cache_policy(path)
    }

    fn entry(&self, path: &str, m: &Metadata) -> Entry {
        let ino = self.inodes.lock().unwrap().remember(path);
        let policy = self.policy(path);
        Entry {
            attr: attr(ino, m),
            attr_ttl_ms: policy.attr_ttl_ms,
            entry_ttl_ms: policy.entry_ttl_ms,
        }
    }

    fn forget_listing(&self, dir_ino: u64) {
        self.dirs.lock().unwrap().remove(&dir_ino);
    }

    fn changed_dir_of(&self, path: &str) {
        let p = self.inodes.lock().unwrap().peek(parent(path));
        if let Some(p) = p {
            self.forget_listing(p);
        }
    }

    async fn entry_after(&self, path: &str) -> VfsResult<FsReply> {
        self.changed_dir_of(path);
        let m = self.provider.lstat(path).await?;
        Ok(FsReply::Entry(self.entry(path, &m)))
    }

    /// Serve one request. Never panics on guest input; every failure is an
    /// errno, and a request that runs past the deadline is answered EIO.
    pub async fn handle_request(&self, req: FsRequest) -> FsResponse {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let result = match req.op.validate() {
            Err(e) => Err(VfsError::invalid(e.to_string())),
            Ok(()) => {
                self.note_guest_change(&req.op);
                let limit = *self.timeout.lock().unwrap();
                let name = req.op.name();
                bounded(
                    limit,
                    || format!("{name} #{}", req.id),
                    self.dispatch(req.op, req.caller),
                )
                .await
            }
        };
        let result = result.map_err(|e| {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(target: "gondolin::vfs", id = req.id, error = %e, "fs request failed");
            if e.errno <= 0 || e.errno > 4095 {
                errno::EIO
            } else {
                e.errno
            }
        });
        FsResponse { id: req.id, result }
    }

    /// POSIX permission checks for non-root callers. The guest mounts
    /// without `default_permissions`, which would make its kernel fetch a
    /// directory's attributes before every create or unlink in it (one more
    /// round trip each); the same rules are applied here instead, against
    /// the provider's own metadata. Root passes, as in the kernel (the
    /// kernel itself still requires an x bit to exec a file).
    async fn authorize(&self, op: &FsOp, caller: Caller) -> VfsResult<()> {
        const R: i32 = 4;
        const W: i32 = 2;
        const X: i32 = 1;
        if caller.uid == 0 {
            return Ok(());
        }
        let need = |ino: u64, mask: i32| (ino, mask);
        let checks: Vec<(u64, i32)> = match op {
            FsOp::Lookup { parent, .. } => vec![need(*parent, X)],
            FsOp::Open { ino, flags } => {
                let o = OpenOptions::from_linux_flags(*flags, 0);
                let mut m = 0;
                if o.read {
                    m |= R;
                }
                if o.write || o.truncate {
                    m |= W;
                }
                vec![need(*ino, m)]
            }
            FsOp::ReadDir { ino, .. } => vec![need(*ino, R)],
            FsOp::Create { parent, .. }
            | FsOp::Mkdir { parent, .. }
            | FsOp::Symlink { parent, .. }
            | FsOp::Unlink { parent, .. }
            | FsOp::Rmdir { parent, .. } => vec![need(*parent, W | X)],
            FsOp::Link { new_parent, .. } => vec![need(*new_parent, W | X)],
            FsOp::Rename {
                parent, new_parent, ..
            } => vec![need(*parent, W | X), need(*new_parent, W | X)],
            FsOp::SetAttr { ino, set, .. } => {
                let m = match self.path_of(*ino) {
                    Ok(path) => self.provider.stat(&path).await?,
                    Err(e) => {
                        let h = self.handles.lock().unwrap().on_inode(*ino, None);
                        h.ok_or(e)?.stat().await?
                    }
                };
                let owner_only = set.mode.is_some() || set.uid.is_some() || set.gid.is_some();
                if owner_only && m.uid != caller.uid {
                    return Err(VfsError::new(errno::EPERM));
                }
                if set.size.is_some() {
                    check_access(&m, W, caller, false)?;
                }
                if (set.atime.is_some() || set.mtime.is_some()) && m.uid != caller.uid {
                    check_access(&m, W, caller, false)?;
                }
                vec![]
            }
            _ => vec![],
        };
        for (ino, mask) in checks {
            if mask == 0 {
                continue;
            }
            let m = self.provider.stat(&self.path_of(ino)?).await?;
            check_access(&m, mask, caller, false)?;
        }
        Ok(())
    }

    async fn dispatch(&self, op: FsOp, caller: Caller) -> VfsResult<FsReply> {
        self.authorize(&op, caller).await?;
        let p = &self.provider;
        match op {
            FsOp::Lookup { parent, name } => {
                let path = self.child_of(parent, &name)?;
                match p.lstat(&path).await {
                    Ok(m) => Ok(FsReply::Entry(self.entry(&path, &m))),
                    Err(e) if e.is(errno::ENOENT) => Ok(FsReply::NoEntry {
                        ttl_ms: self.policy(&path).negative_ttl_ms,
                    }),
                    Err(e) => Err(e),
                }
            }
            FsOp::Forget { ino, nlookup } => {
                self.inodes.lock().unwrap().forget(ino, nlookup);
                Ok(FsReply::Done)
            }
            FsOp::GetAttr { ino } => {
                let (attr, ttl_ms) = self.attr_of(ino).await?;
                Ok(FsReply::Attr { attr, ttl_ms })
            }
            FsOp::SetAttr { ino, fh, set } => {
                match self.path_of(ino) {
                    Ok(path) => self.set_attr_at(&path, fh, &set).await?,
                    Err(_) => self.set_attr_unlinked(ino, fh, &set).await?,
                }
                let (attr, ttl_ms) = self.attr_of(ino).await?;
                Ok(FsReply::Attr { attr, ttl_ms })
            }
            FsOp::ReadLink { ino } => Ok(FsReply::Target(p.readlink(&self.path_of(ino)?).await?)),
            FsOp::Mkdir { parent, name, mode } => {
                let path = self.child_of(parent, &name)?;
                p.mkdir(&path, mode & 0o7777).await?;
                self.entry_after(&path).await
            }
            FsOp::Unlink { parent, name } => {
                let path = self.child_of(parent, &name)?;
                p.unlink(&path).await?;
                self.inodes.lock().unwrap().unlink(&path);
                self.forget_listing(parent);
                Ok(FsReply::Done)
            }
            FsOp::Rmdir { parent, name } => {
                let path = self.child_of(parent, &name)?;
                p.rmdir(&path).await?;
                self.inodes.lock().unwrap().unlink(&path);
                self.forget_listing(parent);
                Ok(FsReply::Done)
            }
            FsOp::Symlink {
                parent,
                name,
                target,
            } => {
                let path = self.child_of(parent, &name)?;
                p.symlink(&target, &path).await?;
                self.entry_after(&path).await
            }
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                if flags & !RENAME_NOREPLACE != 0 {
                    return Err(VfsError::invalid("unsupported rename flags"));
                }
                let from = self.child_of(parent, &name)?;
                let to = self.child_of(new_parent, &new_name)?;
                if flags & RENAME_NOREPLACE != 0 {
                    match p.lstat(&to).await {
                        Ok(_) => return Err(VfsError::new(errno::EEXIST)),
                        Err(e) if e.is(errno::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                p.rename(&from, &to).await?;
                self.inodes.lock().unwrap().rename(&from, &to);
                self.handles.lock().unwrap().rename(&from, &to);
                self.forget_listing(parent);
                self.forget_listing(new_parent);
                Ok(FsReply::Done)
            }
            FsOp::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let from = self.path_of(ino)?;
                let to = self.child_of(new_parent, &new_name)?;
                p.link(&from, &to).await?;
                self.forget_listing(new_parent);
                let m = p.lstat(&to).await?;
                let ino = self.inodes.lock().unwrap().add_link(ino, &to);
                let policy = self.policy(&to);
                Ok(FsReply::Entry(Entry {
                    attr: attr(ino, &m),
                    attr_ttl_ms: policy.attr_ttl_ms,
                    entry_ttl_ms: policy.entry_ttl_ms,
                }))
            }
            FsOp::Open { ino, flags } => {
                let path = self.path_of(ino)?;
                let mut opts = OpenOptions::from_linux_flags(flags, 0);
                // The kernel already resolved the name; creation is `Create`.
                opts.create = false;
                opts.exclusive = false;
                let h = p.open(&path, opts).await?;
                let fh = self.handles.lock().unwrap().add(h, ino, &path)?;
                Ok(FsReply::Opened {
                    fh,
                    keep_cache: self.policy(&path).keep_data_cache,
                })
            }
            FsOp::Create {
                parent,
                name,
                mode,
                flags,
            } => {
                let path = self.child_of(parent, &name)?;
                let mut opts = OpenOptions::from_linux_flags(flags, mode);
                opts.create = true;
                let h = p.open(&path, opts).await?;
                let fh = self.handles.lock().unwrap().add(h, 0, &path)?;
                let m = match p.lstat(&path).await {
                    Ok(m) => m,
                    Err(e) => {
                        self.release(fh).await.ok();
                        return Err(e);
                    }
                };
                self.changed_dir_of(&path);
                let entry = self.entry(&path, &m);
                self.handles.lock().unwrap().set_ino(fh, entry.attr.ino);
                Ok(FsReply::Created { entry, fh })
            }
            FsOp::Read { fh, offset, size } => {
                let data = self.handle(fh)?.read(offset, size as usize).await?;
                if data.len() > size as usize {
                    return Err(VfsError::with_message(
                        errno::EIO,
                        "provider returned more than asked",
                    ));
                }
                self.metrics
                    .bytes_read
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(FsReply::Data(data))
            }
            FsOp::Write { fh, offset, data } => {
                let n = self.handle(fh)?.write(offset, &data).await?;
                self.metrics
                    .bytes_written
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(FsReply::Written(n.min(data.len()) as u32))
            }
            FsOp::Flush { fh } => {
                self.handle(fh)?;
                Ok(FsReply::Done)
            }
            FsOp::Fsync { fh, .. } => {
                self.handle(fh)?.sync().await?;
                Ok(FsReply::Done)
            }
            FsOp::Release { fh } => {
                self.release(fh).await?;
                Ok(FsReply::Done)
            }
            FsOp::ReadDir {
                ino,
                offset,
                max_entries,
            } => self.readdir(ino, offset, max_entries).await,
            FsOp::StatFs { ino } => Ok(FsReply::StatFs(p.statfs(&self.path_of(ino)?).await?)),
            FsOp::Access { ino, mask } => {
                let path = self.path_of(ino)?;
                match p.access(&path, mask).await {
                    Err(e) if e.is(errno::ENOSYS) => {}
                    other => return other.map(|_| FsReply::Done),
                }
                let m = p.stat(&path).await?;
                check_access(&m, mask, caller, p.readonly())?;
                Ok(FsReply::Done)
            }
        }
    }

    async fn release(&self, fh: u64) -> VfsResult<()> {
        let h = self.handles.lock().unwrap().remove(fh);
        match h {
            Some(h) => h.close().await,
            None => Err(VfsError::new(errno::EBADF)),
        }
    }

    async fn listing(
        &self,
        ino: u64,
        path: &str,
        fresh: bool,
    ) -> VfsResult<Arc<Vec<(String, FileKind)>>> {
        if !fresh {
            let mut dirs = self.dirs.lock().unwrap();
            if let Some(l) = dirs.get_mut(&ino) {
                if l.at.elapsed() < DIR_CACHE_TTL {
                    l.at = Instant::now();
                    return Ok(l.entries.clone());
                }
            }
        }
        let mut list: Vec<(String, FileKind)> = self
            .provider
            .readdir(path)
            .await?
            .into_iter()
            .map(|e| (e.name, e.kind))
            .collect();
        list.retain(|(n, _)| !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0']));
        let entries = Arc::new(list);
        let mut dirs = self.dirs.lock().unwrap();
        if dirs.len() >= DIR_CACHE_MAX {
            if let Some(oldest) = dirs.iter().min_by_key(|(_, l)| l.at).map(|(k, _)| *k) {
                dirs.remove(&oldest);
            }
        }
        dirs.insert(
            ino,
            DirListing {
                at: Instant::now(),
                entries: entries.clone(),
            },
        );
        Ok(entries)
    }

    /// Offsets: 1 = ".", 2 = "..", 3.. = provider entries. A listing starts
    /// fresh at offset 0 and later pages reuse it, so a paged listing is a
    /// consistent snapshot.
    async fn readdir(&self, ino: u64, offset: u64, max: u32) -> VfsResult<FsReply> {
        let path = self.path_of(ino)?;
        let list = self.listing(ino, &path, offset == 0).await?;
        let max = max.min(MAX_READDIR_ENTRIES) as usize;
        let parent_ino = if ino == ROOT_INO {
            ROOT_INO
        } else {
            self.inodes
                .lock()
                .unwrap()
                .peek(parent(&path))
                .unwrap_or(ROOT_INO)
        };
        let mut out = Vec::new();
        let t = self.inodes.lock().unwrap();
        let total = list.len() as u64 + 2;
        let mut off = offset;
        while off < total && out.len() < max {
            let (ino, kind, name) = match off {
                0 => (ino, FileKind::Dir, ".".to_string()),
                1 => (parent_ino, FileKind::Dir, "..".to_string()),
                i => {
                    let (name, kind) = &list[(i - 2) as usize];
                    let child = join(&path, name);
                    (
                        t.peek(&child).unwrap_or_else(|| listing_ino(&child)),
                        *kind,
                        name.clone(),
                    )
                }
            };
            off += 1;
            out.push(WireDirEntry {
                ino,
                kind,
                name,
                next_offset: off,
            });
        }
        Ok(FsReply::Dir(out))
    }

    /// Close every open handle (VM shutdown).
    pub async fn close(&self) {
        let handles = self.handles.lock().unwrap().drain();
        for h in handles {
            h.close().await.ok();
        }
        self.provider.close().await.ok();
    }
}

/// Permission check from mode bits, for providers without `access`.
pub fn check_access(m: &Metadata, mask: i32, caller: Caller, readonly: bool) -> VfsResult<()> {
    const R: i32 = 4;
    const W: i32 = 2;
    const X: i32 = 1;
    if mask == 0 {
        return Ok(());
    }
    if mask & W != 0 && readonly {
        return Err(VfsError::rofs());
    }
    if caller.uid == 0 {
        if mask & X != 0 && m.kind != FileKind::Dir && m.perm & 0o111 == 0 {
            return Err(VfsError::new(errno::EACCES));
        }
        return Ok(());
    }
    let bits = if caller.uid == m.uid {
        (m.perm >> 6) & 7
    } else if caller.gid == m.gid {
        (m.perm >> 3) & 7
    } else {
        m.perm & 7
    } as i32;
    let want = mask & (R | W | X);
    if bits & want == want {
        Ok(())
    } else {
        Err(VfsError::new(errno::EACCES))
    }
}

#[path = "server_attrs.rs"]
mod attrs;

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
