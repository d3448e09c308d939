//! `NativeVm`: a booted VM handle. The JS `VM` class owns lifecycle policy
//! (lazy start, singleflight, sessions); this class only boots, execs, closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use napi_derive::napi;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use super::error::{spawn_coded, IntoJs, JsFailure};
use super::exec::NativeExec;
use super::vfs::NativeProvider;
use gondolin::control::ExecRequest;
use gondolin::error::ErrorCode;
use gondolin::vfs::path::check_absolute;
use gondolin::vfs::server::FsServer;
use gondolin::vm::{RootfsMode, VfsAttach, Vm, VmConfig};

#[napi(object)]
pub struct NativeVmOptions {
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub cmdline: String,
    pub rootfs_mode: Option<String>,
    /// `rootfs.size` as the user wrote it (checked by `resolveVmOptions`).
    pub rootfs_size: Option<String>,
    pub memory: Option<String>,
    pub cpus: Option<u32>,
    pub accel: Option<String>,
    pub qemu_path: Option<String>,
    pub machine: Option<String>,
    pub cpu: Option<String>,
    pub append: Option<String>,
    /// Milliseconds; 0 or absent = no timeout.
    pub start_timeout_ms: Option<f64>,
    pub debug: Option<bool>,
    /// With a VFS root: where the guest mounts it (default `/data`).
    pub fuse_mount: Option<String>,
    /// With a VFS root: guest paths bind-mounted from `fuseMount` + path.
    pub binds: Option<Vec<String>>,
    /// The guest network; absent = no NIC.
    pub net: Option<crate::net::NativeNetOptions>,
    /// Start from a checkpoint file instead of the image's disk.
    pub resume: Option<NativeResume>,
    /// Where boot templates live; absent/null = always boot the kernel.
    pub boot_template: Option<NativeBootTemplate>,
}

#[napi(object)]
pub struct NativeResume {
    /// Absolute path of a checkpoint file (`VmCheckpoint.path`).
    pub checkpoint: String,
}

#[napi(object)]
pub struct NativeBootTemplate {
    /// Directory holding one subdirectory per template.
    pub dir: String,
}

#[napi(object)]
pub struct NativeCheckpointOptions {
    /// Also save RAM and device state (our extension to upstream).
    pub memory: bool,
    /// The checkpoint's name (upstream: the file name without extension).
    pub name: String,
    /// The image's `buildId`, to find its assets again on resume.
    pub guest_asset_build_id: String,
}

#[napi(object)]
pub struct NativeExecOptions {
    pub argv: Vec<String>,
    pub env: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub stdin: Option<bool>,
    pub pty_rows: Option<u32>,
    pub pty_cols: Option<u32>,
    pub window_bytes: Option<u32>,
    /// Internal (vm.fs.writeFile): no process, stdin goes into this file.
    pub stdin_to_file: Option<String>,
    /// Internal (vm.fs.readFile): no process, this file is the stdout.
    pub stdout_from_file: Option<String>,
}

#[napi(object)]
pub struct NativeVmInfo {
    pub accel: String,
    pub boot_ms: f64,
    pub qemu_pid: Option<u32>,
    pub temp_dir: String,
    /// Set when the boot passed the slow-boot mark (30 s): what the guest
    /// and QEMU looked like then.
    pub slow_boot_report: Option<String>,
    /// `"boot"` (the kernel booted), `"template"` (resumed from a boot
    /// template) or `"checkpoint"` (started from a checkpoint file).
    pub started_from: String,
}

#[napi(object)]
#[derive(Default)]
pub struct NativeNetStats {
    pub frames_in: f64,
    pub frames_out: f64,
    pub flows_opened: f64,
    pub flows_refused: f64,
    pub dns_queries: f64,
    pub dropped: f64,
}

#[napi(object)]
pub struct NativeAccel {
    /// The QEMU `-accel` value.
    pub accel: String,
    /// Kernel command-line words added for this accelerator.
    pub cmdline_extra: String,
}

/// The accelerator a VM would use (explicit value, $GONDOLIN_ACCEL, detection).
#[napi]
pub fn detect_accel(explicit: Option<String>) -> NativeAccel {
    let a = gondolin::vm::detect_accel(explicit.as_deref());
    NativeAccel {
        accel: a.qemu_arg(),
        cmdline_extra: a.cmdline_extra(),
    }
}

#[napi]
pub struct NativeVm {
    pub(crate) vm: Arc<Vm>,
    fs: Option<Arc<FsServer>>,
    egress: Option<crate::net::EgressEvents>,
    net_stats: Option<Arc<gondolin::net::NetStats>>,
}

fn config(o: NativeVmOptions) -> Result<VmConfig, JsFailure> {
    let mode = RootfsMode::parse(o.rootfs_mode.as_deref().unwrap_or("cow"))
        .map_err(|e| JsFailure::from_core(&e))?;
    let timeout = o.start_timeout_ms.filter(|ms| ms.is_finite() && *ms > 0.0);
    Ok(VmConfig {
        kernel: PathBuf::from(o.kernel),
        initrd: PathBuf::from(o.initrd),
        rootfs: PathBuf::from(o.rootfs),
        cmdline: o.cmdline,
        rootfs_mode: mode,
        rootfs_size: o
            .rootfs_size
            .as_deref()
            .map(gondolin::vm::rootfs_size::parse)
            .transpose()
            .map_err(|e| JsFailure::from_core(&e))?,
        memory: o.memory.unwrap_or_else(|| "1G".into()),
        cpus: o.cpus.unwrap_or(2),
        accel: o.accel,
        qemu_path: o.qemu_path.map(PathBuf::from),
        machine: o.machine,
        cpu: o.cpu,
        append: o.append,
        start_timeout: timeout.map(|ms| Duration::from_millis(ms as u64)),
        debug: o.debug.unwrap_or(false),
        vfs: None,
        net: None,
        resume: o.resume.map(|r| PathBuf::from(r.checkpoint)),
        template_dir: o.boot_template.map(|t| PathBuf::from(t.dir)),
    })
}

/// Boot a VM and resolve once the guest is ready. `vfsRoot` is the
/// provider the guest mounts at `fuseMount`; `cancel` (ours) stops the boot
/// and kills QEMU (`VM.close()` during a boot). Rejects with a coded error
/// (`vm_start_timeout`, `qemu_not_found`, `vm_boot_failed`, ...).
#[napi(ts_return_type = "Promise<NativeVm>")]
pub fn start_vm<'e>(
    env: &'e Env,
    options: NativeVmOptions,
    vfs_root: Option<&NativeProvider>,
    secrets: Option<&crate::net::NativeSecrets>,
    #[napi(ts_arg_type = "((call: HttpHookCall) => Promise<HttpHookOutcome>) | undefined | null")]
    http_dispatch: Option<crate::http_js::HttpDispatch>,
    http_hooks: Option<Vec<crate::http_js::HttpHook>>,
    cancel: Option<&super::boot_cancel::NativeBootCancel>,
) -> napi::Result<PromiseRaw<'e, NativeVm>> {
    let prepared = prepare(options, vfs_root, secrets, http_dispatch, http_hooks);
    let cancelled = cancel.map(|c| c.cancelled());
    spawn_coded(env, async move {
        let (cfg, server, egress, net_stats) = prepared?;
        let cancelled = async move {
            match cancelled {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        // Dropping the boot on cancel kills QEMU (spawned with kill_on_drop).
        let vm = tokio::select! {
            r = Vm::start(&cfg) => r.map_err(|e| JsFailure::from_core(&e))?,
            () = cancelled => {
                return Err(JsFailure::new(ErrorCode::VmClosed, "VM closed during its boot (QEMU killed)"));
            }
        };
        Ok(NativeVm {
            vm: Arc::new(vm),
            fs: server,
            egress,
            net_stats,
        })
    })
}

type Prepared = (
    VmConfig,
    Option<Arc<FsServer>>,
    Option<crate::net::EgressEvents>,
    Option<Arc<gondolin::net::NetStats>>,
);

/// Everything `start_vm` builds on the JS thread before the boot.
fn prepare(
    options: NativeVmOptions,
    vfs_root: Option<&NativeProvider>,
    secrets: Option<&crate::net::NativeSecrets>,
    http_dispatch: Option<crate::http_js::HttpDispatch>,
    http_hooks: Option<Vec<crate::http_js::HttpHook>>,
) -> Result<Prepared, JsFailure> {
    let fuse_mount = options.fuse_mount.clone().unwrap_or_else(|| "/data".into());
    let binds = options.binds.clone().unwrap_or_default();
    let mut options = options;
    let net = options
        .net
        .take()
        .map(|n| {
            let hooks = http_dispatch.map(|d| {
                Arc::new(crate::http_js::JsHttpHooks::new(
                    d,
                    http_hooks.as_deref().unwrap_or(&[]),
                )) as Arc<dyn gondolin::http::hooks::HttpHooks>
            });
            crate::net::attach(n, secrets, hooks)
        })
        .transpose()?;
    let mut cfg = config(options)?;
    let mut egress = None;
    let mut net_stats = None;
    if let Some((attach, events)) = net {
        net_stats = Some(attach.stats.clone());
        cfg.net = Some(attach);
        egress = events;
    }
    let server = vfs_root.map(|root| FsServer::new(root.inner.clone()));
    if let Some(server) = &server {
        let fuse_mount = check_absolute(&fuse_mount, "vfs.fuseMount")
            .map_err(|e| JsFailure::new(ErrorCode::InvalidOption, e.message.unwrap_or_default()))?;
        cfg.vfs = Some(VfsAttach {
            server: server.clone(),
            fuse_mount,
            binds,
        });
    }
    Ok((cfg, server, egress, net_stats))
}

#[napi]
impl NativeVm {
    /// Start a process; returns at once.
    #[napi]
    pub fn exec(&self, env: &Env, o: NativeExecOptions) -> napi::Result<NativeExec> {
        let pty = match (o.pty_rows, o.pty_cols) {
            (Some(r), Some(c)) => Some((clamp16(r), clamp16(c))),
            _ => None,
        };
        let req = ExecRequest {
            argv: o.argv,
            env: o.env.unwrap_or_default(),
            cwd: o.cwd,
            stdin: o.stdin.unwrap_or(false),
            pty,
            window: o.window_bytes.unwrap_or(0),
            stdin_to_file: o.stdin_to_file,
            stdout_from_file: o.stdout_from_file,
        };
        let handle = self.vm.control().exec(&req).js(env)?;
        Ok(NativeExec::new(handle))
    }

    /// Stop QEMU and remove every temp file. Idempotent.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        let vm = self.vm.clone();
        vm.close().await;
        if let Some(fs) = &self.fs {
            fs.close().await;
        }
        Ok(())
    }

    /// The host changed `path` (relative to the FUSE root) itself: drop
    /// the guest's cached view of it.
    #[napi]
    pub fn vfs_invalidate(&self, path: String) {
        if let Some(fs) = &self.fs {
            fs.invalidate(&gondolin::vfs::path::normalize(&path));
        }
    }

    /// The next egress record; `null` once the VM is gone (or events are off).
    #[napi]
    pub async fn next_egress(&self) -> Option<crate::net::NativeEgressEvent> {
        let rx = self.egress.clone()?;
        let mut rx = rx.lock().await;
        rx.recv().await.map(Into::into)
    }

    /// Network counters (zero without a NIC).
    #[napi]
    pub fn net_stats(&self) -> NativeNetStats {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(s) = &self.net_stats else {
            return NativeNetStats::default();
        };
        NativeNetStats {
            frames_in: s.frames_in.load(Relaxed) as f64,
            frames_out: s.frames_out.load(Relaxed) as f64,
            flows_opened: s.flows_opened.load(Relaxed) as f64,
            flows_refused: s.flows_refused.load(Relaxed) as f64,
            dns_queries: s.dns_queries.load(Relaxed) as f64,
            dropped: s.dropped.load(Relaxed) as f64,
        }
    }

    #[napi]
    pub fn info(&self) -> NativeVmInfo {
        NativeVmInfo {
            accel: self.vm.accel().qemu_arg(),
            boot_ms: self.vm.boot_time().as_secs_f64() * 1000.0,
            qemu_pid: self.vm.qemu_pid(),
            temp_dir: self.vm.temp_dir().display().to_string(),
            slow_boot_report: self.vm.boot_report().map(str::to_string),
            started_from: self.vm.started_from().as_str().to_string(),
        }
    }

    /// Write a checkpoint to `path` and close the VM (it is consumed, as
    /// upstream). Resolves with the trailer JSON written. Rejects with
    /// `invalid_option` (relative path, rootfs mode "memory"/"readonly")
    /// or `checkpoint_failed`.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn checkpoint<'e>(
        &self,
        env: &'e Env,
        path: String,
        options: NativeCheckpointOptions,
    ) -> napi::Result<PromiseRaw<'e, String>> {
        let vm = self.vm.clone();
        let fs = self.fs.clone();
        spawn_coded(env, async move {
            let req = gondolin::vm::CheckpointRequest {
                path: PathBuf::from(path),
                memory: options.memory,
                name: options.name,
                guest_asset_build_id: options.guest_asset_build_id,
            };
            let written = vm.checkpoint(&req).await;
            if written.is_ok() {
                if let Some(fs) = &fs {
                    fs.close().await;
                }
            }
            let data = written.map_err(|e| JsFailure::from_core(&e))?;
            serde_json::to_string_pretty(&data)
                .map_err(|e| JsFailure::new(ErrorCode::CheckpointFailed, e.to_string()))
        })
    }

    /// Why the VM is gone, if it is.
    #[napi]
    pub fn exit_reason(&self) -> Option<String> {
        self.vm.exit_reason()
    }

    #[napi]
    pub fn console_tail(&self) -> Vec<String> {
        self.vm.console_tail()
    }
}

impl NativeVm {
    /// The VM's control client, for its attach server (`session.rs`).
    pub(crate) fn control(&self) -> gondolin::control::ControlClient {
        self.vm.control().clone()
    }

    /// Opens TCP connections to the guest's loopback (ingress, `enableSsh`);
    /// `None` when the VM has no network.
    pub(crate) fn guest_connector(&self) -> Option<Arc<dyn gondolin::net::dial::GuestConnector>> {
        self.vm.guest_connector()
    }
}

fn clamp16(v: u32) -> u16 {
    v.clamp(1, u16::MAX as u32) as u16
}
