//! The fs RPC server: turns the guest's inode-based FUSE requests into
//! path-based [`Provider`] calls.
//!
//! Inode numbers and file handles are ours: an inode is a path the guest has
//! looked up (kept until the kernel forgets it), a handle is an open
//! [`FileHandle`]. Every request runs as its own task, so a slow provider
//! call (a JS provider, a big read) never holds up the others; at most
//! [`MAX_IN_FLIGHT`] run at once and the guest waits for the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gondolin_wire::fs::{
    errno, Attr, Caller, DirEntry as WireDirEntry, Entry, FileKind, FsGuestMsg, FsHostMsg, FsOp,
    FsReply, FsRequest, FsResponse, SetTime, Timestamp, FS_PROTOCOL_VERSION, MAX_READDIR_ENTRIES,
    ROOT_INO,
};
use gondolin_wire::{encode_into, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use super::inodes::Inodes;
use super::path::{file_name, join, parent};
use super::{
    CachePolicy, FileHandle, Metadata, OpenOptions, Provider, SetTimes, VfsError, VfsResult,
};

/// Requests served concurrently per VM.
pub const MAX_IN_FLIGHT: usize = 256;
/// Open handles per VM before `open` fails with EMFILE-like ENFILE.
const MAX_HANDLES: usize = 65_536;
/// Directory listings kept for paged `readdir` continuations.
const DIR_CACHE_TTL: Duration = Duration::from_secs(5);
const DIR_CACHE_MAX: usize = 128;
const ENFILE: i32 = 23;
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
    handles: Mutex<HashMap<u64, Arc<dyn FileHandle>>>,
    next_fh: AtomicU64,
    dirs: Mutex<HashMap<u64, DirListing>>,
    notify: Mutex<Option<mpsc::UnboundedSender<FsHostMsg>>>,
    /// Paths the guest changed lately, with when: the provider's own change
    /// reports for them are echoes of the guest's work, not news.
    guest_touched: Mutex<HashMap<String, Instant>>,
    /// The path each open handle was opened at (writes name no inode).
    handle_paths: Mutex<HashMap<u64, String>>,
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
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirs: Mutex::new(HashMap::new()),
            notify: Mutex::new(None),
            guest_touched: Mutex::new(HashMap::new()),
            handle_paths: Mutex::new(HashMap::new()),
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
            FsOp::Write { fh, .. } => {
                paths.extend(self.handle_paths.lock().unwrap().get(fh).cloned())
            }
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
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| VfsError::new(errno::EBADF))
    }

    fn add_handle(&self, h: Box<dyn FileHandle>) -> VfsResult<u64> {
        let mut handles = self.handles.lock().unwrap();
        if handles.len() >= MAX_HANDLES {
            return Err(VfsError::with_message(
                ENFILE,
                "too many open files in the VFS",
            ));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(fh, Arc::from(h));
        Ok(fh)
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

    /// Serve one request. Never panics on guest input; every failure is an errno.
    pub async fn handle_request(&self, req: FsRequest) -> FsResponse {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let result = match req.op.validate() {
            Err(e) => Err(VfsError::invalid(e.to_string())),
            Ok(()) => {
                self.note_guest_change(&req.op);
                self.dispatch(req.op, req.caller).await
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
                let path = self.path_of(*ino)?;
                let m = self.provider.stat(&path).await?;
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
                let path = self.path_of(ino)?;
                let m = p.lstat(&path).await?;
                Ok(FsReply::Attr {
                    attr: attr(ino, &m),
                    ttl_ms: self.policy(&path).attr_ttl_ms,
                })
            }
            FsOp::SetAttr { ino, fh, set } => {
                let path = self.path_of(ino)?;
                if let Some(size) = set.size {
                    match fh.map(|fh| self.handle(fh)).transpose()? {
                        Some(h) => h.truncate(size).await?,
                        None => p.truncate(&path, size).await?,
                    }
                }
                if let Some(mode) = set.mode {
                    p.chmod(&path, mode & 0o7777).await?;
                }
                if set.uid.is_some() || set.gid.is_some() {
                    p.chown(&path, set.uid, set.gid).await?;
                }
                if set.atime.is_some() || set.mtime.is_some() {
                    let times = SetTimes {
                        atime: set.atime.map(to_system_time),
                        mtime: set.mtime.map(to_system_time),
                    };
                    p.set_times(&path, times).await?;
                }
                let m = p.lstat(&path).await?;
                Ok(FsReply::Attr {
                    attr: attr(ino, &m),
                    ttl_ms: self.policy(&path).attr_ttl_ms,
                })
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
                let fh = self.add_handle(h)?;
                self.handle_paths.lock().unwrap().insert(fh, path.clone());
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
                let fh = self.add_handle(h)?;
                self.handle_paths.lock().unwrap().insert(fh, path.clone());
                let m = match p.lstat(&path).await {
                    Ok(m) => m,
                    Err(e) => {
                        self.release(fh).await.ok();
                        return Err(e);
                    }
                };
                self.changed_dir_of(&path);
                Ok(FsReply::Created {
                    entry: self.entry(&path, &m),
                    fh,
                })
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
        self.handle_paths.lock().unwrap().remove(&fh);
        let h = self.handles.lock().unwrap().remove(&fh);
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
        self.handle_paths.lock().unwrap().clear();
        let handles: Vec<_> = self
            .handles
            .lock()
            .unwrap()
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            h.close().await.ok();
        }
        self.provider.close().await.ok();
    }
}

/// Permission check from mode bits, for providers without `access`.
fn check_access(m: &Metadata, mask: i32, caller: Caller, readonly: bool) -> VfsResult<()> {
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

/// Serve the guest's fs port on `stream` until it closes. Requests run
/// concurrently; responses and invalidations share one writer.
pub async fn serve<S>(server: Arc<FsServer>, stream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<FsHostMsg>();
    *server.notify.lock().unwrap() = Some(tx.clone());
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256 * 1024);
        while let Some(msg) = rx.recv().await {
            buf.clear();
            encode_into(&msg, &mut buf);
            // Batch whatever else is ready into the same write.
            while buf.len() < 1 << 20 {
                match rx.try_recv() {
                    Ok(m) => encode_into(&m, &mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut dec = FrameDecoder::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut greeted = false;
    let result = 'outer: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        dec.push(&chunk[..n]);
        loop {
            let msg = match dec.next_message::<FsGuestMsg>() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "gondolin::vfs", "closing the fs port: {e}");
                    break 'outer Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ));
                }
            };
            match msg {
                FsGuestMsg::Hello { version } => {
                    if version != FS_PROTOCOL_VERSION {
                        tracing::warn!(target: "gondolin::vfs", version, "sandboxfs speaks another fs protocol version");
                        break 'outer Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("sandboxfs fs protocol {version}, host {FS_PROTOCOL_VERSION}"),
                        ));
                    }
                    greeted = true;
                }
                FsGuestMsg::Request(req) if greeted => {
                    let permit = match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break 'outer Ok(()),
                    };
                    let server = server.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let resp = server.handle_request(req).await;
                        let _ = tx.send(FsHostMsg::Response(resp));
                        drop(permit);
                    });
                }
                FsGuestMsg::Request(req) => {
                    let _ = tx.send(FsHostMsg::Response(FsResponse {
                        id: req.id,
                        result: Err(errno::EIO),
                    }));
                }
            }
        }
    };
    *server.notify.lock().unwrap() = None;
    drop(tx);
    let _ = writer.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::memory::MemoryProvider;
    use gondolin_wire::fs::SetAttr;

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    const USER: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 2,
    };

    fn req(id: u64, op: FsOp) -> FsRequest {
        FsRequest {
            id,
            caller: ROOT,
            op,
        }
    }

    async fn as_user(s: &FsServer, op: FsOp) -> Result<FsReply, i32> {
        s.handle_request(FsRequest {
            id: 9,
            caller: USER,
            op,
        })
        .await
        .result
    }

    async fn ok(s: &FsServer, op: FsOp) -> FsReply {
        let r = s.handle_request(req(1, op.clone())).await;
        r.result
            .unwrap_or_else(|e| panic!("{op:?} failed with errno {e}"))
    }

    async fn errno_of(s: &FsServer, op: FsOp) -> i32 {
        s.handle_request(req(1, op))
            .await
            .result
            .expect_err("expected an errno")
    }

    fn entry_ino(r: FsReply) -> u64 {
        match r {
            FsReply::Entry(e) => e.attr.ino,
            FsReply::Created { entry, .. } => entry.attr.ino,
            other => panic!("not an entry: {other:?}"),
        }
    }

    #[tokio::test]
    async fn inodes_follow_paths_through_create_rename_and_unlink() {
        let s = FsServer::new(Arc::new(MemoryProvider::new()));
        let d = entry_ino(
            ok(
                &s,
                FsOp::Mkdir {
                    parent: ROOT_INO,
                    name: "d".into(),
                    mode: 0o755,
                },
            )
            .await,
        );
        let created = ok(
            &s,
            FsOp::Create {
                parent: d,
                name: "f".into(),
                mode: 0o644,
                flags: 0o1,
            },
        )
        .await;
        let FsReply::Created { fh, entry } = created else {
            panic!()
        };
        assert_eq!(
            ok(
                &s,
                FsOp::Write {
                    fh,
                    offset: 0,
                    data: b"abc".to_vec()
                }
            )
            .await,
            FsReply::Written(3)
        );
        ok(&s, FsOp::Release { fh }).await;
        let f = entry.attr.ino;
        // Rename the directory: the file's inode keeps working at its new path.
        ok(
            &s,
            FsOp::Rename {
                parent: ROOT_INO,
                name: "d".into(),
                new_parent: ROOT_INO,
                new_name: "e".into(),
                flags: 0,
            },
        )
        .await;
        let FsReply::Opened { fh, .. } = ok(&s, FsOp::Open { ino: f, flags: 0 }).await else {
            panic!()
        };
        assert_eq!(
            ok(
                &s,
                FsOp::Read {
                    fh,
                    offset: 0,
                    size: 10
                }
            )
            .await,
            FsReply::Data(b"abc".to_vec())
        );
        // A released handle is gone.
        ok(&s, FsOp::Release { fh }).await;
        assert_eq!(
            errno_of(
                &s,
                FsOp::Read {
                    fh,
                    offset: 0,
                    size: 1
                }
            )
            .await,
            errno::EBADF
        );
        // Lookup of a missing name is a cacheable miss, not an error.
        assert!(matches!(
            ok(
                &s,
                FsOp::Lookup {
                    parent: d,
                    name: "nope".into()
                }
            )
            .await,
            FsReply::NoEntry { .. }
        ));
        ok(
            &s,
            FsOp::Unlink {
                parent: d,
                name: "f".into(),
            },
        )
        .await;
        assert_eq!(errno_of(&s, FsOp::GetAttr { ino: f }).await, errno::ENOENT);
        // Forgotten inodes are dropped from the table.
        ok(&s, FsOp::Forget { ino: d, nlookup: 1 }).await;
        assert_eq!(errno_of(&s, FsOp::GetAttr { ino: d }).await, errno::ENOENT);
    }

    #[tokio::test]
    async fn provider_changes_invalidate_unless_they_echo_the_guest() {
        let s = FsServer::new(Arc::new(MemoryProvider::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        *s.notify.lock().unwrap() = Some(tx);
        ok(
            &s,
            FsOp::Create {
                parent: ROOT_INO,
                name: "mine.txt".into(),
                mode: 0o644,
                flags: libc::O_WRONLY,
            },
        )
        .await;
        // The provider reporting the guest's own create is an echo.
        s.provider_changed("/mine.txt");
        assert!(rx.try_recv().is_err());
        // A change nobody in the guest made drops the guest's entry.
        s.provider_changed("/theirs.txt");
        match rx.try_recv() {
            Ok(FsHostMsg::InvalidateEntry { parent, name }) => {
                assert_eq!((parent, name.as_str()), (ROOT_INO, "theirs.txt"))
            }
            other => panic!("expected an entry invalidation, got {other:?}"),
        }
        // Once the echo window has passed, a change to the guest's file is
        // news again: its inode and entry are invalidated.
        s.guest_touched.lock().unwrap().clear();
        s.provider_changed("/mine.txt");
        assert!(matches!(
            rx.try_recv(),
            Ok(FsHostMsg::InvalidateInode { .. })
        ));
        assert!(matches!(
            rx.try_recv(),
            Ok(FsHostMsg::InvalidateEntry { .. })
        ));
    }

    #[tokio::test]
    async fn setattr_readdir_paging_and_access() {
        let s = FsServer::new(Arc::new(MemoryProvider::new()));
        for i in 0..50 {
            let FsReply::Created { fh, .. } = ok(
                &s,
                FsOp::Create {
                    parent: ROOT_INO,
                    name: format!("f{i:02}"),
                    mode: 0o640,
                    flags: 1,
                },
            )
            .await
            else {
                panic!()
            };
            ok(&s, FsOp::Release { fh }).await;
        }
        // Page through in 7s: every entry exactly once, plus . and ..
        let mut seen = Vec::new();
        let mut off = 0;
        loop {
            let FsReply::Dir(page) = ok(
                &s,
                FsOp::ReadDir {
                    ino: ROOT_INO,
                    offset: off,
                    max_entries: 7,
                },
            )
            .await
            else {
                panic!()
            };
            if page.is_empty() {
                break;
            }
            off = page.last().unwrap().next_offset;
            seen.extend(page.into_iter().map(|e| e.name));
        }
        assert_eq!(seen.len(), 52);
        assert_eq!(&seen[..2], [".", ".."]);
        let f = entry_ino(
            ok(
                &s,
                FsOp::Lookup {
                    parent: ROOT_INO,
                    name: "f00".into(),
                },
            )
            .await,
        );
        let set = SetAttr {
            size: Some(10),
            mode: Some(0o600),
            ..Default::default()
        };
        let FsReply::Attr { attr, .. } = ok(
            &s,
            FsOp::SetAttr {
                ino: f,
                fh: None,
                set,
            },
        )
        .await
        else {
            panic!()
        };
        assert_eq!((attr.size, attr.perm), (10, 0o600));
        // Owned by root, mode 0600: uid 1000 may neither read nor open it...
        let access = FsOp::Access { ino: f, mask: 4 };
        assert_eq!(as_user(&s, access).await, Err(errno::EACCES));
        assert_eq!(
            as_user(&s, FsOp::Open { ino: f, flags: 0 }).await,
            Err(errno::EACCES)
        );
        // ...nor create, remove or chmod in a root-owned 0755 directory.
        let create = FsOp::Create {
            parent: ROOT_INO,
            name: "u".into(),
            mode: 0o644,
            flags: 1,
        };
        assert_eq!(as_user(&s, create.clone()).await, Err(errno::EACCES));
        assert_eq!(
            as_user(
                &s,
                FsOp::Unlink {
                    parent: ROOT_INO,
                    name: "f00".into()
                }
            )
            .await,
            Err(errno::EACCES)
        );
        let chmod = FsOp::SetAttr {
            ino: f,
            fh: None,
            set: SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
        };
        assert_eq!(as_user(&s, chmod).await, Err(errno::EPERM));
        // Once the directory is world-writable, it can create there.
        let open_dir = SetAttr {
            mode: Some(0o777),
            ..Default::default()
        };
        ok(
            &s,
            FsOp::SetAttr {
                ino: ROOT_INO,
                fh: None,
                set: open_dir,
            },
        )
        .await;
        assert!(as_user(&s, create).await.is_ok());
        ok(&s, FsOp::Access { ino: f, mask: 0 }).await;
    }

    #[tokio::test]
    async fn hostile_requests_get_errnos() {
        let s = FsServer::new(Arc::new(MemoryProvider::new()));
        for op in [
            FsOp::GetAttr { ino: 999_999 },
            FsOp::Lookup {
                parent: 424_242,
                name: "x".into(),
            },
            FsOp::Read {
                fh: 77,
                offset: 0,
                size: 10,
            },
            FsOp::Write {
                fh: 77,
                offset: 0,
                data: vec![1],
            },
            FsOp::Release { fh: 77 },
            FsOp::Lookup {
                parent: ROOT_INO,
                name: "../etc".into(),
            },
            FsOp::Lookup {
                parent: ROOT_INO,
                name: String::new(),
            },
            FsOp::Read {
                fh: 1,
                offset: u64::MAX,
                size: u32::MAX,
            },
            FsOp::Rename {
                parent: 1,
                name: "a".into(),
                new_parent: 1,
                new_name: "b".into(),
                flags: 6,
            },
            FsOp::ReadDir {
                ino: 12345,
                offset: u64::MAX,
                max_entries: u32::MAX,
            },
            FsOp::Access {
                ino: ROOT_INO,
                mask: -1,
            },
        ] {
            let e = errno_of(&s, op.clone()).await;
            assert!(e > 0, "{op:?} gave {e}");
        }
        // Past the end of a listing is simply empty.
        assert_eq!(
            ok(
                &s,
                FsOp::ReadDir {
                    ino: ROOT_INO,
                    offset: u64::MAX,
                    max_entries: 10
                }
            )
            .await,
            FsReply::Dir(vec![])
        );
    }

    #[tokio::test]
    async fn serve_survives_garbage_and_answers_concurrently() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = FsServer::new(Arc::new(MemoryProvider::new()));
        let (mut guest, host) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(s.clone(), host));
        let mut out = Vec::new();
        encode_into(
            &FsGuestMsg::Hello {
                version: FS_PROTOCOL_VERSION,
            },
            &mut out,
        );
        for id in 1..=20u64 {
            encode_into(
                &FsGuestMsg::Request(req(id, FsOp::GetAttr { ino: ROOT_INO })),
                &mut out,
            );
        }
        guest.write_all(&out).await.unwrap();
        let mut dec = FrameDecoder::new();
        let mut got = std::collections::HashSet::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < 20 {
            let n = guest.read(&mut buf).await.unwrap();
            dec.push(&buf[..n]);
            while let Some(FsHostMsg::Response(r)) = dec.next_message::<FsHostMsg>().unwrap() {
                assert!(r.result.is_ok());
                got.insert(r.id);
            }
        }
        // A frame that is not a message ends the connection cleanly.
        guest
            .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        assert!(task.await.unwrap().is_err());
    }
}
