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
                Ok(t) => match Self::up(config, Source::Template(&t)).await {
                    Ok(vm) => return Ok(vm),
                    Err(e @ (VmError::QemuNotFound { .. } | VmError::InvalidOption(_))) => {
                        return Err(e)
                    }
                    Err(e) => {
                        // A damaged template must not cost more than one
                        // cold boot: drop it (the next start rebuilds it).
                        tracing::warn!(target: "gondolin::vm", "resuming from the boot template failed ({e}); removing it and booting");
                        t.discard();
                    }
                },
                Err(e) => {
                    tracing::warn!(target: "gondolin::vm", "no boot template ({e}); booting");
                }
            }
        }
        Self::up(config, Source::Boot).await
    }

    /// Launch, supervise, configure the guest for this VM (VFS, network,
    /// clock, RNG seed: the same step after a boot and after a resume).
    async fn up(config: &VmConfig, source: Source<'_>) -> Result<Vm, VmError> {
        let l = launch::launch(config, source).await?;
        let vm = Self::supervised(l, config);
        // On failure the VM drops: its supervisor stops QEMU as the stop
        // channel closes, and the temp dir goes.
        super::configure::configure_guest(&vm.control, config).await?;
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
        }
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
        let state_file = self.dir.join("state.bin");
        let mut saved = None;
        if req.memory {
            let mut qmp = Qmp::connect(&self.dir.join("qmp.sock"), Duration::from_secs(10))
                .await
                .map_err(|e| failed("connecting to QEMU", &e))?;
            let mut out = tokio::fs::File::create(&state_file)
                .await
                .map_err(|e| failed("creating the state file", &e))?;
            saved = Some(
                migrate::save(&mut qmp, &self.dir, &mut out, false)
                    .await
                    .map_err(|e| failed("saving the guest's memory", &e))?,
            );
        } else {
            // Upstream flushes the guest's page cache first (best effort).
            run_quietly(&self.control, "sync; sync", Duration::from_secs(10)).await;
        }
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

/// Put disk, state and trailer into one file next to `dest`, then rename
/// it into place.
fn assemble(
    overlay: &Path,
    state: Option<&Path>,
    data: &CheckpointData,
    dest: &Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let write = || -> std::io::Result<()> {
        // The overlay is ours and about to be deleted: move it when we can.
        if std::fs::rename(overlay, &tmp).is_err() {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            std::io::copy(&mut std::fs::File::open(overlay)?, &mut f)?;
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&tmp)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
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
