//! Starting QEMU for one VM and bringing its guest up: booted from the
//! kernel, or resumed from a saved state (a boot template or a memory
//! checkpoint). Every wait is raced against QEMU exiting and the start
//! deadline, so a start either succeeds or says why within its bound.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::bootdiag::{self, Progress, Step};
use super::checkpoint::{self, MachineShape};
use super::console::Tail;
use super::qemu::{DiskFormat, Ram};
use super::qmp::Qmp;
use super::{disk, migrate, qemu, template, Accel, RootfsMode, VmConfig, VmError};
use crate::control::{ControlClient, Disconnect};

/// The control port's name as the guest sees it.
pub const CONTROL_PORT: &str = "gondolin.control";
/// The filesystem RPC port's name.
pub const FS_PORT: &str = "gondolin.fs";

/// Where a VM's guest comes from.
pub(super) enum Source<'a> {
    /// Boot the kernel on the image's disk.
    Boot,
    /// Boot the kernel with RAM shared into `<dir>/ram` and the disk in an
    /// overlay `<dir>/disk.qcow2`, for a boot template (`template.rs`).
    BuildTemplate { dir: &'a Path },
    /// Resume from a boot template.
    Template(&'a template::Template),
    /// Start from a checkpoint file (disk only: boot; memory: resume).
    Checkpoint {
        path: &'a Path,
        loaded: &'a checkpoint::Loaded,
    },
}

/// How the VM came up (`vm.info.startedFrom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedFrom {
    Boot,
    Template,
    Checkpoint,
}

impl StartedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Template => "template",
            Self::Checkpoint => "checkpoint",
        }
    }
}

/// Tasks a VM spawned. Each normally ends when QEMU closes its end, but a
/// QEMU that never connected (or a failed start) would leave a listener
/// waiting forever: aborting them on close/drop releases every socket.
#[derive(Default)]
pub(super) struct Tasks(Mutex<Vec<tokio::task::AbortHandle>>);

impl Tasks {
    fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.0.lock().unwrap().push(tokio::spawn(f).abort_handle());
    }

    pub(super) fn abort_all(&self) {
        for t in self.0.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// Removes the temp dir if start fails half way.
pub(super) struct DirGuard(pub(super) Option<PathBuf>);
impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Aborts a task when dropped (on every return path of a start).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A QEMU process whose guest is up (ready, or resumed and running).
pub(super) struct Launched {
    pub child: Child,
    // Field order is drop order: tasks first, then the directory.
    pub tasks: Tasks,
    pub guard: DirGuard,
    pub dir: PathBuf,
    pub tail: Tail,
    pub pid: Option<u32>,
    pub accel: Accel,
    pub control: ControlClient,
    pub closed: oneshot::Receiver<Disconnect>,
    pub boot_report: Option<String>,
    pub started: Instant,
    pub started_from: StartedFrom,
    /// Our overlay of the root disk (checkpointable), if there is one.
    pub overlay: Option<PathBuf>,
    pub shape: MachineShape,
}

/// Serve the guest's fs port. QEMU connects once at start; the socket lives
/// as long as QEMU, so one connection is the whole session. Without a VFS
/// the port still exists (a resumed VM has the device set it was saved
/// with): what the guest writes there is read and dropped.
async fn serve_fs(listener: UnixListener, server: Option<Arc<crate::vfs::server::FsServer>>) {
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    drop(listener);
    match server {
        Some(server) => {
            if let Err(e) = crate::vfs::serve::serve(server, stream).await {
                tracing::warn!(target: "gondolin::vfs", "fs port closed: {e}");
            }
        }
        None => {
            let mut sink = [0u8; 16 * 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
}

/// Serve the guest NIC: QEMU connects once at start.
async fn serve_net(listener: UnixListener, net: super::NetAttach) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    drop(listener);
    let dials = net.dial.receiver();
    let mut dials = dials.lock().await;
    crate::net::run(
        stream,
        net.config,
        net.dns,
        net.handler,
        net.stats,
        &mut dials,
    )
    .await;
}

fn make_temp_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = base.join(format!("gondolin-{}", &id[..8]));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "could not create a unique temp directory",
    ))
}

pub(super) fn describe_exit(
    status: std::io::Result<std::process::ExitStatus>,
    tail: &Tail,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    let what = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("QEMU exited with code {c}"),
            (None, Some(sig)) => format!("QEMU was killed by signal {sig}"),
            _ => "QEMU exited".to_string(),
        },
        Err(e) => format!("waiting for QEMU failed: {e}"),
    };
    match tail.last_where(|l| l.starts_with("qemu") || l.contains("gondolin-init:")) {
        Some(hint) => format!("{what} ({hint})"),
        None => what,
    }
}

/// The kernel command line a VM boots with (before QEMU adds the
/// accelerator's and the rootfs words).
fn kernel_cmdline(config: &VmConfig) -> String {
    let mut cmdline = config.cmdline.clone();
    if let Some(extra) = &config.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

/// The machine a VM of `config` runs on: what a saved state must match.
pub(super) fn shape(config: &VmConfig, accel: &Accel) -> MachineShape {
    MachineShape {
        memory_mib: super::parse_memory_mib(&config.memory).unwrap_or(1024),
        cpus: config.cpus,
        machine: config.machine.clone(),
        cpu: config.cpu.clone(),
        accel: accel.qemu_arg(),
        cmdline: kernel_cmdline(config),
        net: config.net.is_some(),
    }
}

/// Start QEMU for `source` and wait until the guest is up: `Ready` after a
/// boot, the state loaded and running after a resume. Configuring the
/// guest for this VM is the caller's next step.
pub(super) async fn launch(config: &VmConfig, source: Source<'_>) -> Result<Launched, VmError> {
    let started = Instant::now();
    let accel = super::detect_accel(config.accel.as_deref());
    let dir = make_temp_dir()?;
    let guard = DirGuard(Some(dir.clone()));
    let tasks = Tasks::default();

    // The machine: a memory checkpoint brings its own (a migration stream
    // only loads into the device set and RAM size it was saved from).
    let mut shape = shape(config, &accel);
    let mut started_from = StartedFrom::Boot;
    let mut ram = Ram::Anonymous;
    let mut incoming: Option<Incoming> = None;
    let rw = config.rootfs_mode != RootfsMode::Readonly;
    let mut rootfs_mode = config.rootfs_mode;
    let (disk, disk_format, overlay) = match &source {
        Source::Boot => match config.rootfs_mode {
            RootfsMode::Cow => {
                let o = dir.join("rootfs.qcow2");
                disk::create_overlay(&config.rootfs, DiskFormat::Raw, &o).await?;
                (o.clone(), DiskFormat::Qcow2, Some(o))
            }
            _ => (config.rootfs.clone(), DiskFormat::Raw, None),
        },
        Source::BuildTemplate { dir: tpl } => {
            ram = Ram::File {
                path: tpl.join(template::RAM),
                share: true,
            };
            if rw {
                let o = tpl.join(template::DISK);
                disk::create_overlay(&config.rootfs, DiskFormat::Raw, &o).await?;
                (o, DiskFormat::Qcow2, None)
            } else {
                (config.rootfs.clone(), DiskFormat::Raw, None)
            }
        }
        Source::Template(t) => {
            started_from = StartedFrom::Template;
            ram = Ram::File {
                path: t.dir.join(template::RAM),
                share: false,
            };
            incoming = Some(Incoming {
                file: t.dir.join(template::STATE),
                offset: 0,
                len: t.meta.state_bytes,
                sha256: t.meta.state_sha256.clone(),
                ignore_shared: true,
            });
            if rw {
                let o = dir.join("rootfs.qcow2");
                disk::create_overlay(&t.dir.join(template::DISK), DiskFormat::Qcow2, &o).await?;
                (o.clone(), DiskFormat::Qcow2, Some(o))
            } else {
                (config.rootfs.clone(), DiskFormat::Raw, None)
            }
        }
        Source::Checkpoint { path, loaded } => {
            started_from = StartedFrom::Checkpoint;
            // A checkpoint resumes writable, on a private overlay (upstream).
            rootfs_mode = RootfsMode::Cow;
            if let Some(m) = &loaded.data.memory {
                shape = m.machine.clone();
                incoming = Some(Incoming {
                    file: path.to_path_buf(),
                    offset: m.state_offset,
                    len: m.state_length,
                    sha256: m.state_sha256.clone(),
                    ignore_shared: false,
                });
            }
            disk::point_at_image(path, &config.rootfs).await?;
            let o = dir.join("rootfs.qcow2");
            disk::create_overlay(path, DiskFormat::Qcow2, &o).await?;
            (o.clone(), DiskFormat::Qcow2, Some(o))
        }
    };
    if shape.net != config.net.is_some() {
        return Err(VmError::InvalidOption(format!(
            "this memory checkpoint was saved {} a network device; resume it with the network {}",
            if shape.net { "with" } else { "without" },
            if shape.net {
                "enabled"
            } else {
                "disabled (sandbox.netEnabled: false)"
            },
        )));
    }

    let control_sock = dir.join("control.sock");
    let listener = UnixListener::bind(&control_sock)?;
    let fs_sock = dir.join("fs.sock");
    let fs_listener = UnixListener::bind(&fs_sock)?;
    let serial_ports = vec![
        (CONTROL_PORT.to_string(), control_sock),
        (FS_PORT.to_string(), fs_sock),
    ];
    tasks.spawn(serve_fs(
        fs_listener,
        config.vfs.as_ref().map(|v| v.server.clone()),
    ));
    let mut net_socket = None;
    if let Some(net) = &config.net {
        let sock = dir.join("net.sock");
        let net_listener = UnixListener::bind(&sock)?;
        net_socket = Some(sock);
        tasks.spawn(serve_net(net_listener, net.clone()));
    }
    let port_names: Vec<String> = serial_ports.iter().map(|(n, _)| n.clone()).collect();
    let accel = match started_from {
        // Resume under the accelerator the state was saved with.
        StartedFrom::Checkpoint if incoming.is_some() => super::detect_accel(Some(&shape.accel)),
        _ => accel,
    };
    let plan = qemu::QemuPlan {
        accel: accel.clone(),
        machine: shape.machine.clone(),
        cpu: shape.cpu.clone(),
        memory: format!("{}M", shape.memory_mib),
        cpus: shape.cpus,
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline: shape.cmdline.clone(),
        disk,
        disk_format,
        rootfs_mode,
        ram,
        incoming: incoming.is_some(),
        serial_ports,
        qmp_socket: dir.join("qmp.sock"),
        net_socket,
    };
    let qemu_path = config
        .qemu_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("qemu-system-{}", std::env::consts::ARCH)));
    let mut child = spawn_qemu(&qemu_path, &qemu::qemu_argv(&plan))?;
    let pid = child.id();
    let tail = Tail::default();
    let echo = config.debug.then_some("guest");
    tasks.spawn(tail.clone().pump(child.stdout.take().unwrap(), echo));
    tasks.spawn(
        tail.clone()
            .pump(child.stderr.take().unwrap(), config.debug.then_some("qemu")),
    );
    // A boot past SLOW_BOOT gets a report (console, QMP) that a later
    // timeout carries; the handle stops it when start returns.
    let progress = Arc::new(Progress::default());
    let _watchdog = AbortOnDrop(tokio::spawn(bootdiag::watchdog(
        progress.clone(),
        tail.clone(),
        dir.join("qmp.sock"),
        port_names,
        pid,
    )));
    let mut race = Race {
        deadline: config
            .start_timeout
            .map(|t| tokio::time::Instant::now() + t),
        timeout_ms: config.start_timeout.map(|t| t.as_millis()).unwrap_or(0),
        progress: progress.clone(),
        tail: tail.clone(),
    };

    // QEMU connects to our socket as soon as it starts (before an incoming
    // migration too); the guest speaks once sandboxd runs.
    let stream = race
        .run(&mut child, async { listener.accept().await })
        .await??
        .0;
    drop(listener);
    progress.set_step(Step::GuestReady);
    let (control, conn) = ControlClient::new(stream);
    let mut closed = conn.closed;
    match &incoming {
        None => {
            let version = race
                .run(&mut child, async {
                    tokio::select! {
                        r = conn.ready => match r {
                            Ok(Ok(v)) => Ok(v),
                            Ok(Err(d)) => Err(VmError::BootFailed(d.message)),
                            Err(_) => Err(VmError::BootFailed("the control connection closed".into())),
                        },
                        r = &mut closed => Err(VmError::BootFailed(
                            r.map(|d| d.message).unwrap_or_else(|_| "the control connection closed".into()),
                        )),
                    }
                })
                .await?;
            let version = match version {
                Ok(v) => v,
                Err(e) => {
                    // Usually QEMU itself is exiting: prefer its reason.
                    if let Ok(st) = tokio::time::timeout(Duration::from_secs(1), child.wait()).await
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Err(VmError::BootFailed(describe_exit(st, &tail)));
                    }
                    return Err(e);
                }
            };
            if let Err((guest, host)) = ControlClient::check_version(version) {
                return Err(VmError::ProtocolMismatch { guest, host });
            }
        }
        Some(inc) => {
            let qmp_sock = dir.join("qmp.sock");
            race.run(&mut child, inc.load(&qmp_sock, &dir))
                .await?
                .map_err(|e| VmError::ResumeFailed(e.to_string()))?;
        }
    }
    Ok(Launched {
        child,
        tasks,
        guard,
        dir,
        tail,
        pid,
        accel,
        control,
        closed,
        boot_report: progress.report(),
        started,
        started_from,
        overlay,
        shape,
    })
}

/// A saved state to load into a QEMU started with `-incoming defer`.
struct Incoming {
    file: PathBuf,
    offset: u64,
    len: u64,
    sha256: String,
    ignore_shared: bool,
}

impl Incoming {
    async fn load(&self, qmp_sock: &Path, dir: &Path) -> std::io::Result<()> {
        use tokio::io::AsyncSeekExt;
        let mut qmp = Qmp::connect(qmp_sock, Duration::from_secs(30)).await?;
        let mut f = tokio::fs::File::open(&self.file).await?;
        f.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let mut src = tokio::io::BufReader::with_capacity(1 << 20, f);
        migrate::load(
            &mut qmp,
            dir,
            &mut src,
            self.len,
            &self.sha256,
            self.ignore_shared,
        )
        .await
    }
}

/// Races each start step against QEMU exiting and the start deadline.
struct Race {
    deadline: Option<tokio::time::Instant>,
    timeout_ms: u128,
    progress: Arc<Progress>,
    tail: Tail,
}

impl Race {
    async fn run<T>(
        &mut self,
        child: &mut Child,
        step: impl Future<Output = T>,
    ) -> Result<T, VmError> {
        let deadline = self.deadline;
        let sleep = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            v = step => Ok(v),
            st = child.wait() => {
                // Let the console pump catch the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(VmError::BootFailed(describe_exit(st, &self.tail)))
            }
            _ = sleep => Err(VmError::StartTimeout(
                self.timeout_ms,
                self.progress.report().map(|r| format!("; {r}")).unwrap_or_default(),
            )),
        }
    }
}

fn spawn_qemu(path: &Path, argv: &[String]) -> Result<Child, VmError> {
    let mut cmd = Command::new(path);
    cmd.args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: pre_exec runs between fork and exec; prctl is async-signal-safe
    // and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // QEMU must not outlive the host process, however it dies.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    tracing::debug!(target: "gondolin::vm", "spawning {} {}", path.display(), argv.join(" "));
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VmError::QemuNotFound {
            path: path.display().to_string(),
        },
        _ => VmError::Spawn(e),
    })
}
