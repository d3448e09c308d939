//! The event loop: one thread, one `poll` over the port, a SIGCHLD signalfd
//! and every exec's pipes (plus, while a `Configure` runs, the wake pipe of
//! its worker thread: see `configure`).
//!
//! Why one thread: under TCG with 2 vCPUs a thread hand-off costs more than
//! the work it hands off, and a single owner of all state makes the
//! ordering guarantee trivial: frames leave in the order they are queued in
//! one [`OutBuf`], so an exec's `Output` frames always precede its `Exit`.
//!
//! Backpressure, end to end: child output is read only within the host's
//! credit and only while the outgoing queue is below [`CHILD_READ_HIGH`];
//! the port is read only while that queue is below [`PORT_READ_HIGH`] (a
//! host that does not read our replies stops being read). Memory is thus
//! bounded by those marks, one frame in the decoder, and the per-exec stdin
//! credit.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use gondolin_wire::guestfs::FsReply;
use gondolin_wire::{FrameDecoder, GuestMsg, HostMsg, Stream, WireError, PROTOCOL_VERSION};

use crate::configure::Worker;
use crate::exec::{initial_credit, Exec};
use crate::outbuf::OutBuf;
use crate::port::{Port, Target};
use crate::spawn::{SpawnError, Spawner};
use crate::sys;

/// Stop reading children once this much output waits for the port.
const CHILD_READ_HIGH: usize = 512 * 1024;
/// Stop reading the port once this much waits to be sent back.
const PORT_READ_HIGH: usize = 4 * 1024 * 1024;
/// Port bytes read per loop turn, so children get their turn too.
const PORT_READ_BUDGET: usize = 1024 * 1024;
/// Concurrent execs (each holds up to four descriptors).
const MAX_EXECS: usize = 512;
/// The `exec failed` line sent on a child's stderr is cut to this.
const MAX_FAIL_LINE: usize = 4096;
const MAX_ERROR_TEXT: usize = 1024;

/// Why a host session ended.
pub enum Stop {
    /// End of file on the port: the host went away.
    HostGone,
    Port(io::Error),
}

#[derive(Clone, Copy)]
enum Slot {
    Port,
    Signal,
    Out(u32, Stream),
    In(u32),
    Configured,
}

pub struct Server {
    port: Port,
    sigfd: OwnedFd,
    spawner: Spawner,
    dec: FrameDecoder,
    out: OutBuf,
    execs: HashMap<u32, Exec>,
    /// Killed children of a lost host session, still to be reaped (we must
    /// wait for our own children; init only reaps orphans).
    orphans: Vec<libc::pid_t>,
    pfds: Vec<libc::pollfd>,
    slots: Vec<Slot>,
    rbuf: Vec<u8>,
    configure: Worker,
}

impl Server {
    pub fn new(target: Target, sigfd: OwnedFd, spawner: Spawner) -> io::Result<Server> {
        let port = Port::open(&target)?;
        Ok(Server {
            port,
            sigfd,
            spawner,
            dec: FrameDecoder::new(),
            out: OutBuf::default(),
            execs: HashMap::new(),
            orphans: Vec::new(),
            pfds: Vec::new(),
            slots: Vec::new(),
            rbuf: vec![0; 64 * 1024],
            configure: Worker::new(),
        })
    }

    /// Serve host sessions until one ends for good: a unix-socket session
    /// ends the daemon; on the virtio port we wait for the next host (the
    /// port stays open: a virtio port allows one open at a time, and it
    /// survives host reconnects).
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            let stop = self.session();
            self.abandon_all();
            match stop {
                Stop::HostGone if self.port.reconnects => self.port.wait_for_host(),
                Stop::HostGone => return Ok(()),
                Stop::Port(e) => return Err(e),
            }
        }
    }

    fn session(&mut self) -> Stop {
        self.out.push(&GuestMsg::Ready {
            version: PROTOCOL_VERSION,
        });
        loop {
            if let Err(stop) = self.turn() {
                return stop;
            }
        }
    }

    /// One poll and everything it made ready.
    fn turn(&mut self) -> Result<(), Stop> {
        if let Err(e) = self.out.flush(self.port.fd()) {
            return Err(port_error(e));
        }
        self.build_pollset();
        let timeout = self.timeout_ms();
        sys::poll(&mut self.pfds, timeout).map_err(Stop::Port)?;
        let now = Instant::now();
        for i in 0..self.pfds.len() {
            let revents = self.pfds[i].revents;
            if revents == 0 {
                continue;
            }
            match self.slots[i] {
                Slot::Signal => {
                    sys::drain_signalfd(self.sigfd.as_fd());
                    self.reap(now);
                }
                Slot::Port => {
                    if revents & !libc::POLLOUT != 0 {
                        self.read_port(now)?;
                    }
                }
                Slot::Out(id, stream) => {
                    if let Some(e) = self.execs.get_mut(&id) {
                        e.pump(stream, &mut self.out, CHILD_READ_HIGH);
                    }
                }
                Slot::In(id) => {
                    if let Some(e) = self.execs.get_mut(&id) {
                        e.stdin_write(&mut self.out);
                    }
                }
                Slot::Configured => {
                    if let Some(o) = self.configure.finish() {
                        self.spawner.env.set_configured(&o.env);
                        self.configured(o.error.as_deref());
                    }
                }
            }
        }
        self.finish(now);
        Ok(())
    }

    fn build_pollset(&mut self) {
        self.pfds.clear();
        self.slots.clear();
        let pending = self.out.pending();
        let mut port_events = 0;
        if pending < PORT_READ_HIGH {
            port_events |= libc::POLLIN;
        }
        if pending > 0 {
            port_events |= libc::POLLOUT;
        }
        let mut add = |fd: i32, events: i16, slot| {
            self.pfds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            self.slots.push(slot);
        };
        add(self.port.fd().as_raw_fd(), port_events, Slot::Port);
        add(self.sigfd.as_raw_fd(), libc::POLLIN, Slot::Signal);
        if let Some(fd) = self.configure.wake_fd() {
            add(fd.as_raw_fd(), libc::POLLIN, Slot::Configured);
        }
        let read_children = pending < CHILD_READ_HIGH;
        for (&id, e) in &self.execs {
            for (s, stream) in [(&e.stdout, Stream::Stdout), (&e.stderr, Stream::Stderr)] {
                if let (true, Some(fd)) = (read_children && s.wants_read(), &s.fd) {
                    add(fd.as_raw_fd(), libc::POLLIN, Slot::Out(id, stream));
                }
            }
            if let (true, Some(fd)) = (e.stdin.wants_write(), &e.stdin.fd) {
                add(fd.as_raw_fd(), libc::POLLOUT, Slot::In(id));
            }
        }
    }

    /// Wake up for the earliest running pty drain, else sleep until an event.
    fn timeout_ms(&self) -> i32 {
        let Some(deadline) = self.execs.values().filter_map(Exec::drain_deadline).min() else {
            return -1;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up: waking early would only spin.
        left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    }

    fn reap(&mut self, now: Instant) {
        for e in self.execs.values_mut() {
            e.reap(now);
        }
        self.orphans.retain(|&pid| sys::try_wait(pid).is_none());
    }

    /// Send `Exit` for every exec that is reaped and fully drained.
    fn finish(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (&id, e) in self.execs.iter_mut() {
            e.expire_drain(now);
            e.settle();
            if e.is_done() {
                done.push(id);
            }
        }
        for id in done {
            if let Some(e) = self.execs.remove(&id) {
                if let Some(m) = e.error_output() {
                    self.out.push(&m);
                }
                self.out.push(&e.exit_msg());
            }
        }
    }

    fn read_port(&mut self, now: Instant) -> Result<(), Stop> {
        let mut budget = PORT_READ_BUDGET;
        while budget > 0 && self.out.pending() < PORT_READ_HIGH {
            match sys::read(self.port.fd(), &mut self.rbuf) {
                Ok(0) => return Err(Stop::HostGone),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.dec.push(&self.rbuf[..n]);
                    self.handle_frames(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(port_error(e)),
            }
        }
        Ok(())
    }

    /// Act on every complete frame; the decoder keeps at most a partial one.
    fn handle_frames(&mut self, now: Instant) {
        loop {
            let msg = match self.dec.next_message::<HostMsg>() {
                Ok(Some(msg)) => msg,
                Ok(None) => return,
                Err(e @ WireError::FrameTooLarge(_)) => {
                    // The length prefix is garbage, so is our idea of where
                    // frames start: drop everything buffered and go on.
                    self.error(0, "invalid_request", &e.to_string());
                    self.dec = FrameDecoder::new();
                    return;
                }
                Err(e) => {
                    // The bad frame was consumed; the stream is still in sync.
                    self.error(0, "invalid_request", &e.to_string());
                    continue;
                }
            };
            if let Err(e) = msg.validate() {
                match &msg {
                    // fs requests always get their FsReply, here an errno.
                    HostMsg::Fs { id, req } => self.out.push(&GuestMsg::FsReply {
                        id: *id,
                        reply: FsReply::Errno(req.invalid_errno()),
                    }),
                    // The host waits for this answer, not for an Error.
                    HostMsg::Configure(_) => {
                        self.configured(Some(&format!("refused the configuration: {e}")))
                    }
                    _ => self.error(request_id(&msg), "invalid_request", &e.to_string()),
                }
                continue;
            }
            self.handle(msg, now);
        }
    }

    fn handle(&mut self, msg: HostMsg, now: Instant) {
        match msg {
            HostMsg::Exec { id, exec } => self.start(id, &exec),
            HostMsg::Stdin { id, data, eof } => match self.execs.get_mut(&id) {
                None => self.error(id, "unknown_id", "no running exec with this id"),
                Some(e) => {
                    let over = e.stdin_push(data, eof).is_err();
                    e.stdin_write(&mut self.out);
                    if over {
                        self.error(id, "stdin_backpressure", "stdin beyond the granted window");
                    }
                }
            },
            // A grant racing with Exit is normal: ignore unknown ids.
            HostMsg::Window { id, stdout, stderr } => {
                if let Some(e) = self.execs.get_mut(&id) {
                    e.grant(stdout, stderr, now);
                }
            }
            HostMsg::Resize { id, rows, cols } => match self.execs.get(&id) {
                None => self.error(id, "unknown_id", "no running exec with this id"),
                Some(e) => e.resize(rows, cols),
            },
            HostMsg::Kill { id, signal } => {
                if !(1..=libc::SIGRTMAX()).contains(&signal) {
                    self.error(
                        id,
                        "invalid_signal",
                        &format!("signal {signal} out of range"),
                    );
                    return;
                }
                match self.execs.get_mut(&id) {
                    None => self.error(id, "unknown_id", "no running exec with this id"),
                    Some(e) => e.kill(signal),
                }
            }
            HostMsg::Ping { seq } => self.out.push(&GuestMsg::Pong { seq }),
            HostMsg::Fs { id, req } => {
                let reply = crate::guestfs::handle(&req);
                self.out.push(&GuestMsg::FsReply { id, reply });
            }
            HostMsg::Configure(cfg) => self.start_configure(cfg),
        }
    }

    /// Every Configure gets its `Configured`: now if it cannot run, else
    /// when its worker is done (see [`Slot::Configured`]).
    fn start_configure(&mut self, cfg: gondolin_wire::Configure) {
        if !self.port.reconnects {
            // `--connect` mode runs on a developer's host: never set its
            // clock or mount anything there.
            return self.configured(Some("configuration applies only in the VM"));
        }
        if self.configure.busy() {
            return self.configured(Some("a configuration is already running"));
        }
        if cfg.quiesce {
            // A memory checkpoint follows: no exec of this host may live on
            // into a resumed VM, whose host numbers its execs afresh.
            self.end_execs();
        }
        if let Err(e) = self.configure.start(cfg) {
            self.configured(Some(&e));
        }
    }

    fn start(&mut self, id: u32, req: &gondolin_wire::Exec) {
        if self.execs.contains_key(&id) {
            return self.error(id, "duplicate_id", "an exec with this id is still running");
        }
        if self.execs.len() >= MAX_EXECS {
            return self.error(id, "exec_failed", "too many concurrent execs");
        }
        if let Some(path) = &req.stdin_to_file {
            return self.start_file_sink(id, path, req.stderr_window);
        }
        if let Some(path) = &req.stdout_from_file {
            return self.start_file_source(id, path, req);
        }
        match self.spawner.spawn(req) {
            Ok(child) => {
                let e = Exec::new(id, child, req);
                if let Some(m) = e.initial_stdin_window() {
                    self.out.push(&m);
                }
                self.execs.insert(id, e);
            }
            Err(SpawnError::NotRun(line)) => {
                // Like a shell: the exec "ran" and failed with 127.
                let (stream, window) = match req.pty {
                    Some(_) => (Stream::Stdout, req.stdout_window),
                    None => (Stream::Stderr, req.stderr_window),
                };
                self.fail_at_start(id, stream, window, line, 127);
            }
            Err(SpawnError::Setup(e)) => {
                self.error(id, "exec_failed", &format!("cannot set up the child: {e}"))
            }
        }
    }

    /// `stdin_to_file`: open the file and take stdin into it, no process.
    /// A file that cannot be opened ends the exec at once with status 1.
    fn start_file_sink(&mut self, id: u32, path: &str, stderr_window: u32) {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path);
        match opened {
            Ok(f) => {
                let e = Exec::file_sink(id, f.into());
                if let Some(m) = e.initial_stdin_window() {
                    self.out.push(&m);
                }
                self.execs.insert(id, e);
            }
            Err(err) => self.fail_file_exec(id, path, &err, stderr_window),
        }
    }

    /// `stdout_from_file`: send the file as the exec's stdout, no process.
    fn start_file_source(&mut self, id: u32, path: &str, req: &gondolin_wire::Exec) {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .and_then(|f| match f.metadata()?.is_dir() {
                true => Err(io::Error::from_raw_os_error(libc::EISDIR)),
                false => Ok(f),
            });
        match opened {
            Ok(f) => {
                let e = Exec::file_source(id, f.into(), req.stdout_window);
                self.execs.insert(id, e);
            }
            Err(err) => self.fail_file_exec(id, path, &err, req.stderr_window),
        }
    }

    /// A file exec whose file cannot be opened: the reason on stderr, the
    /// errno as status (see [`gondolin_wire::Exec::stdin_to_file`]).
    fn fail_file_exec(&mut self, id: u32, path: &str, err: &io::Error, stderr_window: u32) {
        let line = format!("{path}: {}\n", sys::errno_text(err));
        let status = crate::guestfs::errno_of(err);
        self.fail_at_start(id, Stream::Stderr, stderr_window, line, status);
    }

    /// An exec that never got going: one line of why (within the stream's
    /// credit), then its exit status.
    fn fail_at_start(&mut self, id: u32, stream: Stream, window: u32, line: String, code: i32) {
        let mut data = line.into_bytes();
        data.truncate(MAX_FAIL_LINE.min(initial_credit(window) as usize));
        self.out.push(&GuestMsg::Output { id, stream, data });
        self.out.push(&GuestMsg::Exit {
            id,
            exit_code: code,
            signal: None,
        });
    }

    fn error(&mut self, id: u32, code: &str, message: &str) {
        self.out.push(&GuestMsg::Error {
            id,
            code: code.into(),
            message: cut(message),
        });
    }

    /// Answer a Configure (the host refuses an over-long error text).
    fn configured(&mut self, error: Option<&str>) {
        self.out.push(&GuestMsg::Configured {
            version: PROTOCOL_VERSION,
            error: error.map(cut),
        });
    }

    /// The host is gone: its execs die with it (whole process groups).
    fn abandon_all(&mut self) {
        self.end_execs();
        self.out.clear();
        self.dec = FrameDecoder::new();
    }

    /// Kill every exec and forget it: nothing more is sent for any of them
    /// (frames already queued still go, so the stream stays whole).
    fn end_execs(&mut self) {
        for (_, mut e) in self.execs.drain() {
            let had_status = e.status.is_some();
            e.kill(libc::SIGKILL);
            if !had_status && e.pid > 0 {
                self.orphans.push(e.pid);
            }
        }
    }
}

/// `message` cut to [`MAX_ERROR_TEXT`] bytes on a character boundary.
fn cut(message: &str) -> String {
    let mut end = message.len().min(MAX_ERROR_TEXT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// A peer that closed its end surfaces as EPIPE/ECONNRESET on write.
fn port_error(e: io::Error) -> Stop {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => Stop::HostGone,
        _ => Stop::Port(e),
    }
}

/// The id a request refers to, for errors about it (`Ping` has none).
fn request_id(msg: &HostMsg) -> u32 {
    match msg {
        HostMsg::Exec { id, .. }
        | HostMsg::Stdin { id, .. }
        | HostMsg::Window { id, .. }
        | HostMsg::Resize { id, .. }
        | HostMsg::Kill { id, .. }
        | HostMsg::Fs { id, .. } => *id,
        HostMsg::Ping { .. } | HostMsg::Configure(_) => 0,
    }
}
