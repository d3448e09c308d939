//! A running VM: QEMU process, its temp directory, and the control client.
//! How it comes up is `launch.rs`; boot templates are `template.rs`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::{oneshot, watch};

use super::checkpoint::{self, CheckpointData, CheckpointError, MachineShape, MemoryState};
use super::console::Tail;
use super::launch::{self, describe_exit, Launched, Source, StartedFrom, Tasks};
use super::qmp::Qmp;
use super::{disk, migrate, template, Accel, RootfsMode, VmConfig, VmError};
use crate::control::{ControlClient, Disconnect};
use crate::error::ErrorCode;

/// How long close() lets QEMU exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

pub struct Vm {
    control: ControlClient,
    dir: PathBuf,
    accel: Accel,
    boot_time: Duration,
    started_from: StartedFrom,
    /// Ask the supervisor to stop QEMU; it answers when QEMU is gone.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// `Some(reason)` once QEMU has exited.
    exited: watch::Receiver<Option<String>>,
    pid: Option<u32>,
    tail: Tail,
    /// The port servers and console pumps; aborted once QEMU is gone.
    tasks: Tasks,
    /// The slow-boot report, if the boot took longer than the watchdog's mark.
    boot_report: Option<String>,
    /// Our root-disk overlay (rootfs mode "cow" and resumed VMs).
    overlay: Option<PathBuf>,
    rootfs_mode: RootfsMode,
    /// The image's rootfs, the base a checkpoint's disk is rebased onto.
    rootfs: PathBuf,
    shape: MachineShape,
    /// A shared lock on the boot template this VM resumed from, released
    /// when QEMU is gone (not when JS collects the handle).
    template_pin: Mutex<Option<std::fs::File>>,
    /// Host-opened connections into the guest; `None` without a NIC.
    connector: Option<std::sync::Arc<super::guest_dial::VmConnector>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("dir", &self.dir)
            .field("pid", &self.pid)
            .finish()
    }
}

/// What `Vm::checkpoint` writes besides the disk and state.
#[derive(Debug, Clone)]
pub struct CheckpointRequest {
    pub path: PathBuf,
    /// Save RAM and device state too (our extension).
    pub memory: bool,
    pub name: String,
    pub guest_asset_build_id: String,
}

impl Vm {
    /// Bring a VM up and wait until the guest is ready to exec: from
    /// `config.resume` (a checkpoint), else from a boot template when
    /// `config.template_dir` is set (built on first use), else by booting.
    pub async fn start(config: &VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        for p in [&config.kernel, &config.initrd, &config.rootfs] {
            if !p.exists() {
                return Err(VmError::MissingAsset(p.clone()));
            }
        }
        if let Some(path) = &config.resume {
            let loaded = checkpoint::load(path).map_err(VmError::Checkpoint)?;
            return Self::up(
                config,
                Source::Checkpoint {
                    path,
                    loaded: &loaded,
                },
            )
            .await;
        }
        if let Some(dir) = &config.template_dir {
            match template::ensure(config, dir).await {
                Ok(t) => {
                    let pin = t.pin();
                    match launch::launch(config, Source::Template(&t)).await {
                        Ok(l) => return Self::configured(l, config, pin).await,
                        Err(e @ (VmError::QemuNotFound { .. } | VmError::InvalidOption(_))) => {
                            return Err(e)
                        }
                        Err(e) => {
                            // The resume itself failed (QEMU refused the
                            // state, a bad checksum): a damaged template
                            // must not cost more than one cold boot. Drop it
                            // unless others run from it; the next start
                            // rebuilds it.
                            tracing::warn!(target: "gondolin::vm", "resuming from the boot template failed ({e}); removing it and booting");
                            drop(pin);
                            t.discard();
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "gondolin::vm", "no boot template ({e}); booting");
                }
            }
        }
        Self::up(config, Source::Boot).await
    }

    /// Launch, then configure (see [`Vm::configured`]).
    async fn up(config: &VmConfig, source: Source<'_>) -> Result<Vm, VmError> {
        let l = launch::launch(config, source).await?;
        Self::configured(l, config, None).await
    }

    /// Supervise a launched guest and configure it for this VM (VFS,
    /// network, clock, RNG seed: the same step after a boot and after a
    /// resume). `pin` keeps the VM's boot template from being removed.
    async fn configured(
        l: Launched,
        config: &VmConfig,
        pin: Option<std::fs::File>,
    ) -> Result<Vm, VmError> {
        let vm = Self::supervised(l, config);
        *vm.template_pin.lock().unwrap() = pin;
        // On failure the VM drops: its supervisor stops QEMU as the stop
        // channel closes, and the temp dir goes.
        super::configure::configure_guest(&vm.control, config).await?;
        if let Some(bytes) = config.rootfs_size {
            super::rootfs_size::grow(&vm.dir.join("qmp.sock"), &vm.control, bytes).await?;
        }
        Ok(vm)
    }

    /// Boot a guest for a template into `dir` and save it there (RAM
    /// stays in `dir/ram`; the device state goes to `dir/state`). QEMU is
    /// gone when this returns.
    pub(super) async fn build_template(
        config: &VmConfig,
        dir: &Path,
    ) -> Result<migrate::Saved, VmError> {
        let mut l = launch::launch(config, Source::BuildTemplate { dir }).await?;
        run_quietly(&l.control, WARM_UP, Duration::from_secs(30)).await;
        let saved = async {
            let mut qmp = Qmp::connect(&l.dir.join("qmp.sock"), Duration::from_secs(30)).await?;
            let mut out = tokio::fs::File::create(dir.join(template::STATE)).await?;
            let saved = migrate::save(&mut qmp, &l.dir, &mut out, true).await?;
            out.sync_all().await?;
            let _ = qmp.execute("quit", serde_json::Value::Null).await;
            Ok::<_, std::io::Error>(saved)
        }
        .await;
        let _ = tokio::time::timeout(TERM_GRACE, l.child.wait()).await;
        let _ = l.child.start_kill();
        let _ = l.child.wait().await;
        saved.map_err(|e| VmError::ResumeFailed(format!("saving the boot template: {e}")))
    }

    fn supervised(l: Launched, config: &VmConfig) -> Vm {
        let Launched {
            child,
            tasks,
            mut guard,
            dir,
            tail,
            pid,
            accel,
            control,
            closed,
            boot_report,
            started,
            started_from,
            overlay,
            shape,
        } = l;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(supervise(
            child,
            stop_rx,
            exit_tx,
            closed,
            control.clone(),
            tail.clone(),
        ));
        guard.0 = None;
        let connector = config
            .net
            .as_ref()
            .map(|n| super::guest_dial::VmConnector::new(n.dial.clone(), control.clone()));
        Vm {
            control,
            dir,
            accel,
            boot_time: started.elapsed(),
            started_from,
            stop: Mutex::new(Some(stop_tx)),
            exited: exit_rx,
            pid,
            tail,
            tasks,
            boot_report,
            overlay,
            rootfs_mode: if started_from == StartedFrom::Checkpoint {
                RootfsMode::Cow
            } else {
                config.rootfs_mode
            },
            rootfs: config.rootfs.clone(),
            shape,
            template_pin: Mutex::new(None),
            connector,
        }
    }

    /// Opens TCP connections to the guest's loopback (the transport of
    /// ingress and `enableSsh`, see `net::dial`); `None` when the VM has
    /// no network.
    pub fn guest_connector(&self) -> Option<std::sync::Arc<dyn crate::net::dial::GuestConnector>> {
        self.connector
            .clone()
            .map(|c| c as std::sync::Arc<dyn crate::net::dial::GuestConnector>)
    }

    pub fn control(&self) -> &ControlClient {
        &self.control
    }

    pub fn accel(&self) -> &Accel {
        &self.accel
    }

    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Booted, or resumed from a template or a checkpoint.
    pub fn started_from(&self) -> StartedFrom {
        self.started_from
    }

    /// Where a slow boot stood at the watchdog's mark (see `bootdiag`).
    pub fn boot_report(&self) -> Option<&str> {
        self.boot_report.as_deref()
    }

    pub fn qemu_pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn temp_dir(&self) -> &Path {
        &self.dir
    }

    /// Last lines of console/QEMU output (sanitized, bounded).
    pub fn console_tail(&self) -> Vec<String> {
        self.tail.lines()
    }

    /// `Some(reason)` if QEMU has exited.
    pub fn exit_reason(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Stop QEMU, fail pending execs, remove the temp dir. Idempotent and
    /// safe to call concurrently: later callers wait for the same shutdown.
    pub async fn close(&self) {
        self.stop_qemu(Disconnect {
            code: ErrorCode::VmClosed,
            message: "the VM was closed".into(),
        })
        .await;
        self.template_pin.lock().unwrap().take();
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }

    async fn stop_qemu(&self, why: Disconnect) {
        self.control.fail(why);
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|r| r.is_some()).await;
        self.tasks.abort_all();
    }

    /// Write a checkpoint of this VM to `req.path` and close it (upstream
    /// `vm.checkpoint`: the VM is consumed). The disk part is our overlay,
    /// rebased onto the image's rootfs so the file stands alone; with
    /// `memory` the guest's RAM and device state follow it. Returns the
    /// trailer written. The file is created 0600 and appears complete or
    /// not at all.
    pub async fn checkpoint(&self, req: &CheckpointRequest) -> Result<CheckpointData, VmError> {
        let refuse = |m: &str| Err(VmError::InvalidOption(m.to_string()));
        match (self.rootfs_mode, &self.overlay) {
            (RootfsMode::Memory, _) => {
                return refuse("cannot checkpoint: root disk is running in ephemeral snapshot mode")
            }
            (_, None) => return refuse("cannot checkpoint: root disk must be qcow2 (got raw)"),
            _ => {}
        }
        let overlay = self.overlay.clone().unwrap();
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            VmError::Checkpoint(CheckpointError::Failed(format!("{what}: {e}")))
        };
        if !req.path.is_absolute() {
            return refuse(&format!(
                "checkpointPath must be an absolute path (got: {})",
                req.path.display()
            ));
        }
        // The saved state goes beside the destination (same filesystem: the
        // final copy into the checkpoint is an in-kernel one, and the
        // guest's RAM never lands in $TMPDIR, often a tmpfs).
        let state_file = staging(&req.path, "state");
        let _state_gone = RemoveOnDrop(state_file.clone());
        let saved = if req.memory {
            match self.save_memory(&state_file).await {
                Ok(s) => Some(s),
                Err(e) => {
                    // The VM is consumed either way (upstream), and with
                    // its execs ended it could not go on.
                    self.close().await;
                    return Err(e);
                }
            }
        } else {
            // Upstream flushes the guest's page cache first (best effort).
            run_quietly(&self.control, "sync; sync", Duration::from_secs(10)).await;
            None
        };
        self.stop_qemu(Disconnect {
            code: ErrorCode::VmClosed,
            message: "the VM was checkpointed".into(),
        })
        .await;
        let result = async {
            disk::rebase(&overlay, &self.rootfs)
                .await
                .map_err(|e| failed("rebasing the disk onto the image", &e))?;
            let disk_len = std::fs::metadata(&overlay)
                .map_err(|e| failed("reading the disk", &e))?
                .len();
            let file_name = req
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let data = CheckpointData {
                version: checkpoint::VERSION,
                name: req.name.clone(),
                created_at: checkpoint::iso_now(),
                disk_file: file_name,
                guest_asset_build_id: req.guest_asset_build_id.clone(),
                snapshot_kind: Some(if req.memory { "memory" } else { "disk" }.into()),
                created_with_vmm: Some("qemu".into()),
                compatible_vmm: Some(vec!["qemu".into()]),
                memory: saved.as_ref().map(|s| MemoryState {
                    state_offset: disk_len,
                    state_length: s.bytes,
                    state_sha256: s.sha256.clone(),
                    machine: self.shape.clone(),
                }),
                extra: Default::default(),
            };
            let state = saved.is_some().then_some(state_file.as_path());
            assemble(&overlay, state, &data, &req.path)
                .map_err(|e| failed(&format!("writing {}", req.path.display()), &e))?;
            Ok(data)
        }
        .await;
        // The template stays pinned until the rebase above has read it.
        self.template_pin.lock().unwrap().take();
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        result
    }
}

/// What a template runs before it is saved: the shell and the programs
/// an agent's first commands use, so their files are in the guest's page
/// cache in every VM resumed from it (read from the shared template RAM
/// instead of through the emulated disk).
const WARM_UP: &str = "/bin/true; /bin/echo >/dev/null; /usr/bin/env >/dev/null; \
    /bin/bash -c true; /bin/ls / >/dev/null; /bin/cat /dev/null";

/// Run a shell script of ours in the guest, output dropped, best effort
/// within `limit`.
async fn run_quietly(control: &ControlClient, script: &str, limit: Duration) {
    let req = crate::control::ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    if let Ok(mut h) = control.exec(&req) {
        let drain = async { while h.next_batch(1 << 16).await.is_some() {} };
        let _ = tokio::time::timeout(limit, drain).await;
    }
}

impl Vm {
    /// Quiesce the guest and write its RAM and device state to `out`.
    async fn save_memory(&self, out: &Path) -> Result<migrate::Saved, VmError> {
        let failed = |what: &str, e: std::io::Error| {
            VmError::Checkpoint(CheckpointError::Failed(format!("{what}: {e}")))
        };
        // No exec, half-sent frame or FUSE request of ours may cross into
        // a resumed VM: the guest ends its execs and unmounts its VFS first
        // (a resumed VM is configured anew).
        super::configure::quiesce_guest(
            &self.control,
            Disconnect {
                code: ErrorCode::VmClosed,
                message: "the VM was checkpointed".into(),
            },
        )
        .await?;
        let mut qmp = Qmp::connect(&self.dir.join("qmp.sock"), Duration::from_secs(10))
            .await
            .map_err(|e| failed("connecting to QEMU", e))?;
        let mut file = create_private(out)
            .map(tokio::fs::File::from_std)
            .map_err(|e| failed("creating the state file", e))?;
        migrate::save(&mut qmp, &self.dir, &mut file, false)
            .await
            .map_err(|e| failed("saving the guest's memory", e))
    }
}

/// Put disk, state and trailer into one file next to `dest`, then rename
/// it into place.
fn assemble(
    overlay: &Path,
    state: Option<&Path>,
    data: &CheckpointData,
    dest: &Path,
) -> std::io::Result<()> {
    let tmp = staging(dest, "tmp");
    let write = || -> std::io::Result<()> {
        // The overlay is ours and about to be deleted: move it when we can
        // (private first: the destination directory may be readable).
        std::fs::set_permissions(overlay, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if std::fs::rename(overlay, &tmp).is_err() {
            let mut f = create_private(&tmp)?;
            std::io::copy(&mut std::fs::File::open(overlay)?, &mut f)?;
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&tmp)?;
        if let Some(state) = state {
            std::io::copy(&mut std::fs::File::open(state)?, &mut f)?;
        }
        checkpoint::append(&mut f, data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A name beside `dest` for a file on its way there.
fn staging(dest: &Path, what: &str) -> PathBuf {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    parent.join(format!(
        ".{}.{}.{what}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
}

/// A new file only its owner can read.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Removes a file when dropped (a staging file, on every path).
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A VM dropped without close(): the supervisor kills QEMU when the
        // stop channel closes; remove what we can synchronously.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Own QEMU until it exits (by itself or because close() asked).
async fn supervise(
    mut child: Child,
    stop: oneshot::Receiver<()>,
    exited: watch::Sender<Option<String>>,
    mut closed: oneshot::Receiver<Disconnect>,
    control: ControlClient,
    tail: Tail,
) {
    let mut stop = stop;
    let mut reader_gone: Option<Disconnect> = None;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            _ = &mut stop => {
                // Asked to close (or the Vm was dropped).
                terminate(&mut child).await;
                break child.wait().await;
            }
            r = &mut closed, if reader_gone.is_none() => {
                let d = r.unwrap_or(Disconnect { code: ErrorCode::ConnectionClosed, message: "the control connection closed".into() });
                if d.code == ErrorCode::ProtocolError {
                    // The guest broke the protocol: stop trusting it.
                    control.fail(d.clone());
                    let _ = child.start_kill();
                }
                // Otherwise wait for QEMU's exit status for a better reason,
                // but not forever.
                reader_gone = Some(d);
            }
            _ = tokio::time::sleep(Duration::from_secs(2)), if reader_gone.is_some() => {
                control.fail(reader_gone.take().unwrap());
                terminate(&mut child).await;
                break child.wait().await;
            }
        }
    };
    // Let the pumps drain the last console lines before describing the exit.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reason = format!(
        "the VM exited unexpectedly: {}",
        describe_exit(status, &tail)
    );
    control.fail(Disconnect {
        code: ErrorCode::VmExited,
        message: reason.clone(),
    });
    let _ = exited.send(Some(reason));
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
}
