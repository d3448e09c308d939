//! `NativeProvider`: a Rust provider held by JS. The JS classes
//! (`MemoryProvider`, `RealFSProvider`, ...) wrap one and forward their
//! methods to [`NativeProvider::call`]; a VM gets the root provider's
//! `Arc<dyn Provider>` directly, so guest file operations never touch JS
//! unless a JS provider or hook is part of the stack.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use napi::bindgen_prelude::{Buffer, Promise};
use napi::Env;
use napi_derive::napi;

use super::error::{IntoJs, JsFailure};
use super::js_callback::{boundary_enum, Component, JsCallback};
use super::vfs_call::{
    dirents_to_js, stat_to_js, statfs_to_js, time_from_ms, Changes, FsCall, FsOp, FsOutcome,
};
use super::vfs_js::{Dispatch, HookDispatch, HookKinds, JsHooks, JsProvider};
use gondolin::error::ErrorCode;
use gondolin::vfs::hooks::HookedProvider;
use gondolin::vfs::memory::MemoryProvider;
use gondolin::vfs::mounts::MountRouter;
use gondolin::vfs::readonly::ReadonlyProvider;
use gondolin::vfs::realfs::{RealFSProvider, RealFsOptions};
use gondolin::vfs::server::check_access;
use gondolin::vfs::shadow::{
    PathPredicate, ShadowContext, ShadowOptions, ShadowPredicate, ShadowProvider, ShadowWriteMode,
};
use gondolin::vfs::{FileHandle, OpenOptions, Provider, SetTimes, VfsError, VfsResult};
use gondolin_wire::fs::{errno, Caller};

/// A handle JS opened, with the path it was opened by (what a write
/// through it reports as changed).
#[derive(Clone)]
struct Open {
    handle: Arc<dyn FileHandle>,
    path: Arc<str>,
}

/// Handles JS opened on a native provider; closed when the provider is.
#[derive(Default)]
struct Handles {
    map: Mutex<HashMap<u32, Open>>,
    next: AtomicU32,
}

impl Handles {
    fn add(&self, h: Box<dyn FileHandle>, path: &str) -> u32 {
        let id = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let open = Open {
            handle: Arc::from(h),
            path: path.into(),
        };
        self.map.lock().unwrap().insert(id, open);
        id
    }
    fn open(&self, fh: u32) -> VfsResult<Open> {
        self.map
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| VfsError::new(errno::EBADF))
    }
    fn get(&self, fh: u32) -> VfsResult<Arc<dyn FileHandle>> {
        self.open(fh).map(|o| o.handle)
    }
    fn take(&self, fh: u32) -> VfsResult<Arc<dyn FileHandle>> {
        self.map
            .lock()
            .unwrap()
            .remove(&fh)
            .map(|o| o.handle)
            .ok_or_else(|| VfsError::new(errno::EBADF))
    }
}

#[napi]
pub struct NativeProvider {
    pub(crate) inner: Arc<dyn Provider>,
    /// True when a JS provider or hook is in the stack: sync calls would
    /// deadlock waiting for the JS thread they block.
    pub(crate) needs_js: bool,
    memory: Option<Arc<MemoryProvider>>,
    /// The `/etc/gondolin` provider's routing table (ingress).
    listeners: Option<Arc<gondolin::ingress::Listeners>>,
    handles: Arc<Handles>,
}

impl NativeProvider {
    fn wrap(inner: Arc<dyn Provider>, needs_js: bool) -> Self {
        NativeProvider {
            inner,
            needs_js,
            memory: None,
            listeners: None,
            handles: Arc::default(),
        }
    }
}

/// Read a whole file through a handle, in bounded chunks.
async fn read_all(h: &dyn FileHandle) -> VfsResult<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let chunk = h.read(out.len() as u64, 1 << 20).await?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
}

/// Run `c`, then name the paths it changed (see [`FsOp::changes`]).
async fn run(p: Arc<dyn Provider>, handles: Arc<Handles>, c: FsCall) -> VfsResult<FsOutcome> {
    let changed = match c.op.changes() {
        Changes::None => None,
        Changes::Path => Some(vec![c.path()?.to_string()]),
        Changes::BothPaths => Some(vec![c.path()?.to_string(), c.path2()?.to_string()]),
        Changes::Handle => Some(vec![handles.open(c.fh()?)?.path.to_string()]),
    };
    let out = run_op(p, handles, c).await?;
    Ok(FsOutcome { changed, ..out })
}

async fn run_op(p: Arc<dyn Provider>, handles: Arc<Handles>, c: FsCall) -> VfsResult<FsOutcome> {
    let done = FsOutcome::default;
    let out = match c.op {
        FsOp::Stat => FsOutcome {
            stat: Some(stat_to_js(&p.stat(c.path()?).await?)),
            ..done()
        },
        FsOp::Lstat => FsOutcome {
            stat: Some(stat_to_js(&p.lstat(c.path()?).await?)),
            ..done()
        },
        FsOp::Readdir => FsOutcome {
            entries: Some(dirents_to_js(p.readdir(c.path()?).await?)),
            ..done()
        },
        FsOp::Open => {
            let opts = OpenOptions::from_node_flags(
                c.flags.as_deref().unwrap_or("r"),
                c.mode.unwrap_or(0o644),
            )?;
            let path = c.path()?;
            let h = p.open(path, opts).await?;
            FsOutcome {
                fh: Some(handles.add(h, path)),
                ..done()
            }
        }
        FsOp::Read => {
            let len = FsCall::u64_arg(c.length, "length")?.min(16 << 20) as usize;
            let data = handles
                .get(c.fh()?)?
                .read(FsCall::u64_arg(c.offset, "offset")?, len)
                .await?;
            FsOutcome {
                data: Some(Buffer::from(data)),
                ..done()
            }
        }
        FsOp::Write => {
            let data = c.data.as_deref().unwrap_or(&[]);
            let n = handles
                .get(c.fh()?)?
                .write(FsCall::u64_arg(c.offset.or(Some(0.0)), "offset")?, data)
                .await?;
            FsOutcome {
                n: Some(n as f64),
                ..done()
            }
        }
        FsOp::Fstat => FsOutcome {
            stat: Some(stat_to_js(&handles.get(c.fh()?)?.stat().await?)),
            ..done()
        },
        FsOp::Ftruncate => {
            handles
                .get(c.fh()?)?
                .truncate(FsCall::u64_arg(c.length.or(Some(0.0)), "length")?)
                .await?;
            done()
        }
        FsOp::Fsync => {
            handles.get(c.fh()?)?.sync().await?;
            done()
        }
        FsOp::Close => {
            handles.take(c.fh()?)?.close().await?;
            done()
        }
        FsOp::ReadFile => {
            let h = p.open(c.path()?, OpenOptions::read_only()).await?;
            let r = read_all(&*h).await;
            h.close().await?;
            FsOutcome {
                data: Some(Buffer::from(r?)),
                ..done()
            }
        }
        FsOp::WriteFile => {
            let opts = OpenOptions::from_node_flags(
                c.flags.as_deref().unwrap_or("w"),
                c.mode.unwrap_or(0o644),
            )?;
            let h = p.open(c.path()?, opts).await?;
            let data = c.data.as_deref().unwrap_or(&[]);
            let mut off = 0;
            let mut r = Ok(());
            while off < data.len() {
                match h.write(off as u64, &data[off..]).await {
                    Ok(0) => {
                        r = Err(VfsError::with_message(errno::EIO, "provider wrote nothing"));
                        break;
                    }
                    Ok(n) => off += n,
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            h.close().await?;
            r?;
            done()
        }
        FsOp::Mkdir => {
            p.mkdir(c.path()?, c.mode.unwrap_or(0o755)).await?;
            done()
        }
        FsOp::Rmdir => {
            p.rmdir(c.path()?).await?;
            done()
        }
        FsOp::Unlink => {
            p.unlink(c.path()?).await?;
            done()
        }
        FsOp::Rename => {
            p.rename(c.path()?, c.path2()?).await?;
            done()
        }
        FsOp::Link => {
            p.link(c.path()?, c.path2()?).await?;
            done()
        }
        FsOp::Symlink => {
            p.symlink(c.path2()?, c.path()?).await?;
            done()
        }
        FsOp::Readlink => FsOutcome {
            target: Some(p.readlink(c.path()?).await?),
            ..done()
        },
        FsOp::Realpath => FsOutcome {
            target: Some(p.realpath(c.path()?).await?),
            ..done()
        },
        FsOp::Truncate => {
            p.truncate(
                c.path()?,
                FsCall::u64_arg(c.length.or(Some(0.0)), "length")?,
            )
            .await?;
            done()
        }
        FsOp::Chmod => {
            p.chmod(c.path()?, c.mode.unwrap_or(0o644)).await?;
            done()
        }
        FsOp::Chown => {
            p.chown(c.path()?, c.uid, c.gid).await?;
            done()
        }
        FsOp::Utimes => {
            p.set_times(c.path()?, times(&c)).await?;
            done()
        }
        FsOp::Statfs => FsOutcome {
            statfs: Some(statfs_to_js(&p.statfs(c.path()?).await?)),
            ..done()
        },
        FsOp::Access => {
            let (path, mask) = (c.path()?, c.mode.unwrap_or(0) as i32);
            match p.access(path, mask).await {
                // The provider left the permission bits to us: check them
                // as fs.access does, for this process's user.
                Err(e) if e.is(errno::ENOSYS) => {
                    let m = p.stat(path).await?;
                    let me = Caller {
                        uid: nix::unistd::geteuid().as_raw(),
                        gid: nix::unistd::getegid().as_raw(),
                        pid: std::process::id(),
                    };
                    check_access(&m, mask, me, p.readonly())?;
                }
                r => r?,
            }
            done()
        }
        FsOp::Fchmod => {
            handles.get(c.fh()?)?.chmod(c.mode.unwrap_or(0o644)).await?;
            done()
        }
        FsOp::Fchown => {
            handles.get(c.fh()?)?.chown(c.uid, c.gid).await?;
            done()
        }
        FsOp::Futimes => {
            handles.get(c.fh()?)?.set_times(times(&c)).await?;
            done()
        }
        FsOp::CloseProvider => {
            p.close().await?;
            done()
        }
    };
    Ok(out)
}

/// `atimeMs`/`mtimeMs` (absent = leave alone).
fn times(c: &FsCall) -> SetTimes {
    SetTimes {
        atime: c.atime_ms.map(time_from_ms),
        mtime: c.mtime_ms.map(time_from_ms),
    }
}

fn outcome(r: VfsResult<FsOutcome>) -> FsOutcome {
    r.unwrap_or_else(|e| FsOutcome::err(&e))
}

/// `(ctx) => Promise<boolean>` for a JS `shouldShadow` predicate.
pub type PredicateDispatch = JsCallback<ShadowCall, Promise<bool>>;

#[napi(object)]
pub struct ShadowCall {
    /// A `HookOp` name (typed as `VfsHookOp` in index.d.ts).
    pub op: String,
    pub path: String,
    pub flags: Option<String>,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
}

struct JsPredicate(PredicateDispatch);

#[async_trait]
impl ShadowPredicate for JsPredicate {
    async fn should_shadow(&self, ctx: &ShadowContext) -> bool {
        let call = ShadowCall {
            op: ctx.op.as_str().into(),
            path: ctx.path.clone(),
            flags: ctx.flags.clone(),
            old_path: ctx.old_path.clone(),
            new_path: ctx.new_path.clone(),
        };
        // A predicate that cannot answer shadows: fail closed.
        self.0
            .call(Component::Vfs, "shouldShadow", call)
            .await
            .unwrap_or(true)
    }
}

boundary_enum! {
    /// ShadowProvider `writeMode` (upstream's spellings).
    WriteMode {
        /// Writes to shadowed paths fail with `denyWriteErrno`.
        Deny = "deny",
        /// Writes to shadowed paths go to the `tmpfs` provider.
        Tmpfs = "tmpfs",
    }
}

#[napi(object)]
pub struct NativeShadowOptions {
    /// Paths for the native predicate (`createShadowPathPredicate`).
    pub paths: Option<Vec<String>>,
    /// Absent = `deny`.
    pub write_mode: Option<WriteMode>,
    pub deny_symlink_bypass: Option<bool>,
    pub deny_write_errno: Option<i32>,
}

#[napi]
impl NativeProvider {
    /// Run one operation (see `FsCall`); failures come back as `errno`/`code`.
    #[napi]
    pub async fn call(&self, call: FsCall) -> FsOutcome {
        outcome(run(self.inner.clone(), self.handles.clone(), call).await)
    }

    /// The same, blocking the JS thread: only for stacks without JS parts.
    #[napi]
    pub fn call_sync(&self, env: &Env, call: FsCall) -> napi::Result<FsOutcome> {
        if self.needs_js {
            return Err(JsFailure::new(
                ErrorCode::InvalidState,
                "synchronous calls are not available on a provider stack that contains JavaScript providers or hooks",
            ))
            .js(env);
        }
        let fut = run(self.inner.clone(), self.handles.clone(), call);
        Ok(outcome(napi::bindgen_prelude::block_on(fut)))
    }

    #[napi(getter)]
    pub fn readonly(&self) -> bool {
        self.inner.readonly()
    }

    #[napi(getter)]
    pub fn supports_symlinks(&self) -> bool {
        self.inner.supports_symlinks()
    }

    /// The routing table of an `/etc/gondolin` provider; null for others.
    #[napi]
    pub fn listeners(&self) -> Option<crate::ingress::NativeListeners> {
        self.listeners
            .clone()
            .map(|inner| crate::ingress::NativeListeners { inner })
    }

    /// MemoryProvider only: refuse every later mutation with EROFS.
    #[napi]
    pub fn set_read_only(&self, env: &Env) -> napi::Result<()> {
        match &self.memory {
            Some(m) => {
                m.set_readonly();
                Ok(())
            }
            None => Err(JsFailure::new(
                ErrorCode::InvalidState,
                "setReadOnly() is only available on MemoryProvider",
            ))
            .js(env),
        }
    }
}

/// The `/etc/gondolin` provider (`gondolin::ingress::etc`): the MITM CA
/// read-only under `mitm/` when `ca_pem` is given, and the writable
/// `listeners` file that feeds the VM's ingress routes.
#[napi]
pub fn etc_provider(env: &Env, ca_pem: Option<Buffer>) -> napi::Result<NativeProvider> {
    let etc = napi::bindgen_prelude::block_on(gondolin::ingress::etc::EtcProvider::new(
        ca_pem.as_deref(),
    ))
    .map_err(|e| JsFailure::new(ErrorCode::VfsError, e))
    .js(env)?;
    Ok(NativeProvider {
        listeners: Some(etc.listeners()),
        ..NativeProvider::wrap(Arc::new(etc), false)
    })
}

/// `capacity_bytes`: the most file data the tree holds (default
/// [`gondolin::vfs::memory::DEFAULT_CAPACITY`], 1 GiB); checked in JS.
#[napi]
pub fn memory_provider(capacity_bytes: Option<f64>) -> NativeProvider {
    let m = Arc::new(match capacity_bytes {
        Some(bytes) => MemoryProvider::with_capacity(bytes as u64),
        None => MemoryProvider::new(),
    });
    NativeProvider {
        memory: Some(m.clone()),
        ..NativeProvider::wrap(m, false)
    }
}

/// `allow_chown`: let the guest change owners of host files (off unless
/// the caller asks: `new RealFSProvider(dir, { allowChown: true })`).
#[napi]
pub fn realfs_provider(
    env: &Env,
    root: String,
    allow_chown: Option<bool>,
) -> napi::Result<NativeProvider> {
    if root.is_empty() {
        return Err(bad_option("RealFSProvider requires a non-empty rootPath")).js(env);
    }
    let options = RealFsOptions {
        allow_chown: allow_chown.unwrap_or(false),
    };
    let p = RealFSProvider::with_options(Path::new(&root), options)
        .map_err(|e| bad_option(format!("RealFSProvider rootPath {root:?}: {e}")))
        .js(env)?;
    Ok(NativeProvider::wrap(Arc::new(p), false))
}

fn bad_option(message: impl std::fmt::Display) -> JsFailure {
    JsFailure::new(ErrorCode::InvalidOption, message)
}

/// The canonical root a RealFSProvider serves (for its `rootPath`).
#[napi]
pub fn realfs_root(env: &Env, root: String) -> napi::Result<String> {
    std::fs::canonicalize(&root)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| bad_option(format!("RealFSProvider rootPath {root:?}: {e}")).caused_by(&e))
        .js(env)
}

#[napi]
pub fn readonly_provider(inner: &NativeProvider) -> NativeProvider {
    NativeProvider::wrap(
        Arc::new(ReadonlyProvider::new(inner.inner.clone())),
        inner.needs_js,
    )
}

/// The operations a JS provider's dispatcher must answer (see
/// [`FsOp::reaches_js`]); `js/vfs.cjs` checks its table against it.
#[napi]
pub fn js_provider_ops() -> Vec<FsOp> {
    FsOp::ALL
        .iter()
        .copied()
        .filter(|op| op.reaches_js())
        .collect()
}

/// A provider implemented in JS: `dispatch(call)` resolves to an outcome.
#[napi]
pub fn js_provider(
    #[napi(ts_arg_type = "(call: FsCall) => Promise<FsOutcome>")] dispatch: Dispatch,
    readonly: bool,
    supports_symlinks: bool,
) -> NativeProvider {
    NativeProvider::wrap(
        Arc::new(JsProvider::new(dispatch, readonly, supports_symlinks)),
        true,
    )
}

#[napi]
pub fn shadow_provider(
    env: &Env,
    inner: &NativeProvider,
    options: NativeShadowOptions,
    #[napi(ts_arg_type = "((ctx: ShadowCall) => Promise<boolean>) | undefined | null")]
    predicate: Option<PredicateDispatch>,
    tmpfs: Option<&NativeProvider>,
) -> napi::Result<NativeProvider> {
    let (pred, js): (Arc<dyn ShadowPredicate>, bool) = match (predicate, options.paths) {
        (Some(f), _) => (Arc::new(JsPredicate(f)), true),
        (None, Some(paths)) => (Arc::new(PathPredicate::new(&paths)), false),
        (None, None) => {
            return Err(bad_option(
                "ShadowProvider requires options.shouldShadow callback",
            ))
            .js(env)
        }
    };
    let write_mode = match options.write_mode.unwrap_or(WriteMode::Deny) {
        WriteMode::Deny => ShadowWriteMode::Deny,
        WriteMode::Tmpfs => ShadowWriteMode::Tmpfs,
    };
    let needs_js = js || inner.needs_js || tmpfs.is_some_and(|t| t.needs_js);
    let opts = ShadowOptions {
        predicate: pred,
        write_mode,
        tmpfs: tmpfs.map(|t| t.inner.clone()),
        deny_symlink_bypass: options.deny_symlink_bypass.unwrap_or(true),
        deny_write_errno: options
            .deny_write_errno
            .map(i32::abs)
            .unwrap_or(errno::EACCES),
    };
    Ok(NativeProvider::wrap(
        Arc::new(ShadowProvider::new(inner.inner.clone(), opts)),
        needs_js,
    ))
}

/// Collects mounts, then builds the router (napi cannot take a list of
/// class instances in one call).
#[napi]
#[derive(Default)]
pub struct NativeMounts {
    mounts: Vec<(String, Arc<dyn Provider>)>,
    needs_js: bool,
}

#[napi]
impl NativeMounts {
    #[napi(constructor)]
    pub fn new() -> Self {
        NativeMounts::default()
    }

    #[napi]
    pub fn add(&mut self, path: String, provider: &NativeProvider) {
        self.needs_js |= provider.needs_js;
        self.mounts.push((path, provider.inner.clone()));
    }

    /// The root provider: the mount router, wrapped with hooks if given.
    #[napi]
    pub fn build(
        &mut self,
        env: &Env,
        #[napi(ts_arg_type = "((call: HookCall) => Promise<FsOutcome>) | undefined | null")] hooks: Option<
            HookDispatch,
        >,
        kinds: Option<HookKinds>,
    ) -> napi::Result<NativeProvider> {
        let mounts = std::mem::take(&mut self.mounts);
        let router = MountRouter::new(mounts)
            .map_err(|e| bad_option(e.message.clone().unwrap_or_else(|| e.to_string())))
            .js(env)?;
        let mut root: Arc<dyn Provider> = Arc::new(router);
        let mut needs_js = self.needs_js;
        if let Some(h) = hooks {
            root = Arc::new(HookedProvider::new(
                root,
                Arc::new(JsHooks::new(h, kinds.unwrap_or_default())),
            ));
            needs_js = true;
        }
        Ok(NativeProvider::wrap(root, needs_js))
    }
}
