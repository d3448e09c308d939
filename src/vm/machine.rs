//! A running VM: QEMU process, its temp directory, and the control client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use super::bootdiag::{self, Progress, Step};
use super::console::Tail;
use super::{disk, qemu, Accel, RootfsMode, VmConfig, VmError};
use crate::control::{ControlClient, Disconnect};
use crate::error::ErrorCode;

/// The control port's name as the guest sees it.
pub const CONTROL_PORT: &str = "gondolin.control";
/// The filesystem RPC port's name.
pub const FS_PORT: &str = "gondolin.fs";

/// Serve the guest's fs port. QEMU connects once at start; the socket lives
/// as long as QEMU, so one connection is the whole session.
async fn serve_fs(listener: UnixListener, server: std::sync::Arc<crate::vfs::server::FsServer>) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    drop(listener);
    if let Err(e) = crate::vfs::serve::serve(server, stream).await {
        tracing::warn!(target: "gondolin::vfs", "fs port closed: {e}");
    }
}

/// Serve the guest NIC: QEMU connects once at start.
async fn serve_net(listener: UnixListener, net: super::NetAttach) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    drop(listener);
    crate::net::run(stream, net.config, net.dns, net.handler, net.stats).await;
}

/// How long close() lets QEMU exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

pub struct Vm {
    control: ControlClient,
    dir: PathBuf,
    accel: Accel,
    boot_time: Duration,
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
}

/// Tasks a VM spawned. Each normally ends when QEMU closes its end, but a
/// QEMU that never connected (or a failed start) would leave a listener
/// waiting forever: aborting them on close/drop releases every socket.
#[derive(Default)]
struct Tasks(Mutex<Vec<tokio::task::AbortHandle>>);

impl Tasks {
    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.0.lock().unwrap().push(tokio::spawn(f).abort_handle());
    }

    fn abort_all(&self) {
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

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("dir", &self.dir)
            .field("pid", &self.pid)
            .finish()
    }
}

/// Removes the temp dir if start fails half way.
struct DirGuard(Option<PathBuf>);
impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
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

fn describe_exit(status: std::io::Result<std::process::ExitStatus>, tail: &Tail) -> String {
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

impl Vm {
    /// Boot a VM and wait until the guest is ready to exec.
    pub async fn start(config: &VmConfig) -> Result<Vm, VmError> {
        config.validate()?;
        for p in [&config.kernel, &config.initrd, &config.rootfs] {
            if !p.exists() {
                return Err(VmError::MissingAsset(p.clone()));
            }
        }
        let started = Instant::now();
        let accel = super::detect_accel(config.accel.as_deref());
        let dir = make_temp_dir()?;
        let mut guard = DirGuard(Some(dir.clone()));
        // Declared after the guard: on a failed start the tasks go first,
        // then the directory.
        let tasks = Tasks::default();

        let disk = match config.rootfs_mode {
            RootfsMode::Cow => {
                let overlay = dir.join("rootfs.qcow2");
                disk::create_overlay(&config.rootfs, &overlay).await?;
                overlay
            }
            _ => config.rootfs.clone(),
        };
        let control_sock = dir.join("control.sock");
        let listener = UnixListener::bind(&control_sock)?;
        let mut serial_ports = vec![(CONTROL_PORT.to_string(), control_sock)];
        let mut cmdline = config.cmdline.clone();
        if let Some(vfs) = &config.vfs {
            let fs_sock = dir.join("fs.sock");
            let fs_listener = UnixListener::bind(&fs_sock)?;
            serial_ports.push((FS_PORT.to_string(), fs_sock));
            tasks.spawn(serve_fs(fs_listener, vfs.server.clone()));
        }
        let mut net_socket = None;
        if let Some(net) = &config.net {
            let sock = dir.join("net.sock");
            let net_listener = UnixListener::bind(&sock)?;
            net_socket = Some(sock);
            tasks.spawn(serve_net(net_listener, net.clone()));
        }
        if let Some(extra) = &config.append {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let port_names: Vec<String> = serial_ports.iter().map(|(n, _)| n.clone()).collect();
        let plan = qemu::QemuPlan {
            accel: accel.clone(),
            machine: config.machine.clone(),
            cpu: config.cpu.clone(),
            memory: config.memory.clone(),
            cpus: config.cpus,
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline,
            disk,
            rootfs_mode: config.rootfs_mode,
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

        let deadline = config
            .start_timeout
            .map(|t| tokio::time::Instant::now() + t);
        let timeout_ms = config.start_timeout.map(|t| t.as_millis()).unwrap_or(0);
        let timed_out = || {
            VmError::StartTimeout(
                timeout_ms,
                progress
                    .report()
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default(),
            )
        };
        let sleep_until = || async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };

        // QEMU connects to our socket as soon as it starts; the guest speaks
        // once sandboxd runs.
        let stream = tokio::select! {
            r = listener.accept() => r?.0,
            st = child.wait() => return Err(VmError::BootFailed(describe_exit(st, &tail))),
            _ = sleep_until() => return Err(timed_out()),
        };
        drop(listener);
        progress.set_step(Step::GuestReady);
        let (control, conn) = ControlClient::new(stream);
        let mut closed = conn.closed;
        let version = tokio::select! {
            r = conn.ready => match r {
                Ok(Ok(v)) => v,
                Ok(Err(d)) => return Err(VmError::BootFailed(d.message)),
                Err(_) => return Err(VmError::BootFailed("the control connection closed".into())),
            },
            st = child.wait() => {
                // Let the console pump catch the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(VmError::BootFailed(describe_exit(st, &tail)));
            }
            r = &mut closed => {
                // Usually QEMU itself is exiting: prefer its reason.
                if let Ok(st) = tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(VmError::BootFailed(describe_exit(st, &tail)));
                }
                let msg = r.map(|d| d.message).unwrap_or_default();
                return Err(VmError::BootFailed(msg));
            }
            _ = sleep_until() => return Err(timed_out()),
        };
        if let Err((guest, host)) = ControlClient::check_version(version) {
            return Err(VmError::ProtocolMismatch { guest, host });
        }

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
        // Per-VM configuration (VFS, net, clock, seed) over the control
        // port; on failure the supervisor stops QEMU as `stop_tx` drops.
        super::configure::configure_guest(&control, config).await?;
        guard.0 = None;
        Ok(Vm {
            control,
            dir,
            accel,
            boot_time: started.elapsed(),
            stop: Mutex::new(Some(stop_tx)),
            exited: exit_rx,
            pid,
            tail,
            tasks,
            boot_report: progress.report(),
        })
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
        self.control.fail(Disconnect {
            code: ErrorCode::VmClosed,
            message: "the VM was closed".into(),
        });
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|r| r.is_some()).await;
        self.tasks.abort_all();
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A VM dropped without close(): the supervisor kills QEMU when the
        // stop channel closes; remove what we can synchronously.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Aborts a task when dropped (on every return path of `start`).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
