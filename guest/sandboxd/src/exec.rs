//! The state of one exec: its child, output credit per stream, stdin queue
//! and (for a pty) the short drain after the main process exits.
//!
//! Invariants:
//! - never more output is read than the host granted (`OutStream::credit`);
//!   with no credit the pipe is not read, so the child blocks on write;
//! - `Stdin::credit + queued credited bytes + Stdin::regrant == STDIN_WINDOW`
//!   while stdin is open: the host can never make us hold more than that.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use gondolin_wire::{GuestMsg, Stream, DEFAULT_WINDOW, MAX_WINDOW, MIN_WINDOW, STDIN_WINDOW};

use crate::outbuf::OutBuf;
use crate::spawn::Child;
use crate::{pty, sys};

/// Largest output chunk per frame: one pipe's worth.
pub const CHUNK: usize = 64 * 1024;
/// A pty is drained this long / this much after its main process exits;
/// background jobs holding the slave must not keep the exec alive.
const PTY_DRAIN_TIME: Duration = Duration::from_millis(250);
const PTY_DRAIN_BYTES: usize = 64 * 1024;
/// Written stdin is re-granted in batches, to not answer every chunk.
const REGRANT_BATCH: u32 = 64 * 1024;
/// End of transmission: what "end of stdin" means on a terminal.
const EOT: u8 = 0x04;

/// A file exec's failure: its errno (the exit status) and its stderr line.
fn file_error(what: &str, e: &io::Error) -> (i32, String) {
    let line = format!("{what}: {}\n", sys::errno_text(e));
    (crate::guestfs::errno_of(e), line)
}

pub fn initial_credit(requested: u32) -> u32 {
    if requested == 0 {
        DEFAULT_WINDOW
    } else {
        requested.clamp(MIN_WINDOW, MAX_WINDOW)
    }
}

pub struct OutStream {
    pub fd: Option<OwnedFd>,
    pub credit: u32,
}

impl OutStream {
    pub fn wants_read(&self) -> bool {
        self.fd.is_some() && self.credit > 0
    }

    fn grant(&mut self, bytes: u32) {
        self.credit = self.credit.saturating_add(bytes).min(MAX_WINDOW);
    }
}

pub struct Stdin {
    pub fd: Option<OwnedFd>,
    pty: bool,
    /// Chunks not yet written; the flag says whether the host paid credit
    /// for it (an EOT we add for a pty is free).
    queue: VecDeque<(Vec<u8>, bool)>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes the host may still send.
    credit: u32,
    /// Bytes written (or discarded) since the last grant.
    regrant: u32,
    /// The host sent eof on a pipe: close it once the queue is empty.
    eof: bool,
}

impl Stdin {
    pub fn wants_write(&self) -> bool {
        self.fd.is_some() && !self.queue.is_empty()
    }

    fn discard_queue(&mut self) {
        for (i, (chunk, paid)) in self.queue.drain(..).enumerate() {
            if paid {
                let done = if i == 0 { self.head } else { 0 };
                self.regrant += (chunk.len() - done) as u32;
            }
        }
        self.head = 0;
    }
}

struct Drain {
    deadline: Instant,
    budget: usize,
}

/// Stdin data beyond the credit the guest granted; the chunk was dropped.
#[derive(Debug)]
pub struct Backpressure;

pub struct Exec {
    pub id: u32,
    /// Also the process group (and session) id: children run under setsid.
    pub pid: libc::pid_t,
    pub status: Option<(i32, Option<i32>)>,
    pub stdout: OutStream,
    pub stderr: OutStream,
    pub stdin: Stdin,
    drain: Option<Drain>,
    /// Why a file exec's read or write failed: the errno (its exit status)
    /// and the words sent on stderr.
    file_error: Option<(i32, String)>,
}

impl Exec {
    /// Wrap a started child. The caller announces the stdin credit
    /// ([`Exec::initial_stdin_window`]).
    pub fn new(id: u32, child: Child, req: &gondolin_wire::Exec) -> Exec {
        let pty = req.pty.is_some();
        let stdin_credit = if child.stdin.is_some() {
            STDIN_WINDOW
        } else {
            0
        };
        Exec {
            id,
            pid: child.pid,
            status: None,
            stdout: OutStream {
                fd: Some(child.stdout),
                credit: initial_credit(req.stdout_window),
            },
            stderr: OutStream {
                fd: child.stderr,
                credit: initial_credit(req.stderr_window),
            },
            stdin: Stdin {
                fd: child.stdin,
                pty,
                queue: VecDeque::new(),
                head: 0,
                credit: stdin_credit,
                regrant: 0,
                eof: false,
            },
            drain: None,
            file_error: None,
        }
    }

    /// An exec with no process (`pid` 0): stdin goes into `file` (`stdin_to_file`).
    /// It ends when the host closes stdin, or on the first failed write.
    pub fn file_sink(id: u32, file: OwnedFd) -> Exec {
        Exec {
            id,
            pid: 0,
            status: None,
            stdout: OutStream {
                fd: None,
                credit: 0,
            },
            stderr: OutStream {
                fd: None,
                credit: 0,
            },
            stdin: Stdin {
                fd: Some(file),
                pty: false,
                queue: VecDeque::new(),
                head: 0,
                credit: STDIN_WINDOW,
                regrant: 0,
                eof: false,
            },
            drain: None,
            file_error: None,
        }
    }

    /// An exec with no process whose stdout is `file` (`stdout_from_file`).
    pub fn file_source(id: u32, file: OwnedFd, stdout_window: u32) -> Exec {
        let mut e = Exec::file_sink(id, file);
        e.stdout.fd = e.stdin.fd.take();
        e.stdout.credit = initial_credit(stdout_window);
        e.stdin.credit = 0;
        e
    }

    /// A file exec (`stdin_to_file` / `stdout_from_file`) has no process.
    fn is_file_exec(&self) -> bool {
        self.pid == 0
    }

    /// A file exec whose file is done (stdin written, or stdout sent) has
    /// its exit status.
    pub fn settle(&mut self) {
        let done = self.stdin.fd.is_none() && self.stdout.fd.is_none();
        if self.is_file_exec() && self.status.is_none() && done {
            let code = self.file_error.as_ref().map_or(0, |(errno, _)| *errno);
            self.status = Some((code, None));
        }
    }

    /// The error a file exec reports on stderr before its exit.
    pub fn error_output(&self) -> Option<GuestMsg> {
        let (_, e) = self.file_error.as_ref()?;
        Some(GuestMsg::Output {
            id: self.id,
            stream: Stream::Stderr,
            data: e.as_bytes().to_vec(),
        })
    }

    pub fn initial_stdin_window(&self) -> Option<GuestMsg> {
        (self.stdin.credit > 0).then_some(GuestMsg::StdinWindow {
            id: self.id,
            bytes: self.stdin.credit,
        })
    }

    pub fn is_pty(&self) -> bool {
        self.stdin.pty
    }

    /// Finished: reaped and both streams at end of file.
    pub fn is_done(&self) -> bool {
        self.status.is_some() && self.stdout.fd.is_none() && self.stderr.fd.is_none()
    }

    pub fn exit_msg(&self) -> GuestMsg {
        let (exit_code, signal) = self.status.unwrap_or((1, None));
        GuestMsg::Exit {
            id: self.id,
            exit_code,
            signal,
        }
    }

    pub fn kill(&mut self, signal: i32) {
        if self.is_file_exec() {
            // No process: stop writing, end as if killed.
            if self.status.is_none() {
                self.stdin.discard_queue();
                self.stdin.fd = None;
                self.status = Some((128 + signal, Some(signal)));
            }
            return;
        }
        sys::kill_group(self.pid, signal);
    }

    /// Check (without blocking) whether the main process exited.
    pub fn reap(&mut self, now: Instant) {
        if self.status.is_some() || self.is_file_exec() {
            return;
        }
        if let Some(status) = sys::try_wait(self.pid) {
            self.status = Some(sys::decode_status(status));
            if self.is_pty() && self.stdout.fd.is_some() {
                self.drain = Some(Drain {
                    deadline: now + PTY_DRAIN_TIME,
                    budget: PTY_DRAIN_BYTES,
                });
            }
        }
    }

    pub fn grant(&mut self, stdout: u32, stderr: u32, now: Instant) {
        if let Some(d) = &mut self.drain {
            // The drain clock only runs while we can send: restart it when
            // credit comes back after a stall.
            if self.stdout.credit == 0 && stdout > 0 {
                d.deadline = now + PTY_DRAIN_TIME;
            }
        }
        self.stdout.grant(stdout);
        if !self.is_pty() {
            self.stderr.grant(stderr);
        }
    }

    /// When the pty drain must end, if it is running (it is paused while
    /// the host grants no credit).
    pub fn drain_deadline(&self) -> Option<Instant> {
        match &self.drain {
            Some(d) if self.stdout.wants_read() => Some(d.deadline),
            _ => None,
        }
    }

    pub fn expire_drain(&mut self, now: Instant) {
        if self.drain_deadline().is_some_and(|d| d <= now) {
            self.stdout.fd = None;
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        if !self.is_pty() {
            return;
        }
        // stdin holds a dup of the master for the exec's whole life.
        if let Some(fd) = &self.stdin.fd {
            // A failure means the pty is gone; nothing useful to report.
            let _ = pty::set_size(fd.as_fd(), rows, cols);
        }
    }

    /// Read what the child wrote on `stream` into frames, within credit,
    /// while the outgoing queue is below `high_water`.
    pub fn pump(&mut self, stream: Stream, out: &mut OutBuf, high_water: usize) {
        let id = self.id;
        let drain = &mut self.drain;
        let s = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        while let Some(fd) = &s.fd {
            if s.credit == 0 || out.pending() >= high_water {
                return;
            }
            let mut max = (s.credit as usize).min(CHUNK);
            if let Some(d) = drain {
                if d.budget == 0 {
                    s.fd = None;
                    return;
                }
                max = max.min(d.budget);
            }
            match out.read_output(fd.as_fd(), id, stream, max) {
                Ok(n) if n > 0 => {
                    s.credit -= n as u32;
                    if let Some(d) = drain {
                        d.budget -= n;
                    }
                    if n < max {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A file source (no process) fails on a read error.
                Err(e) if self.pid == 0 => {
                    self.file_error = Some(file_error("read", &e));
                    s.fd = None;
                }
                // End of file; for a pty master, EIO once no slave is open.
                _ => s.fd = None,
            }
        }
    }

    /// Queue stdin from the host. Data beyond the credit is dropped (the
    /// host broke the protocol; the caller reports it), eof still applies.
    pub fn stdin_push(&mut self, data: Vec<u8>, eof: bool) -> Result<(), Backpressure> {
        let st = &mut self.stdin;
        let n = data.len() as u32;
        let mut res = Ok(());
        if data.len() > st.credit as usize {
            res = Err(Backpressure);
        } else if n > 0 {
            st.credit -= n;
            if st.fd.is_some() && !st.eof {
                st.queue.push_back((data, true));
            } else {
                // Stdin already closed (child gone or eof sent): consume it.
                st.regrant += n;
            }
        }
        if eof && st.fd.is_some() {
            if st.pty {
                st.queue.push_back((vec![EOT], false));
            } else {
                st.eof = true;
            }
        }
        res
    }

    /// Write queued stdin to the child as far as it takes it, and re-grant
    /// the host what was consumed.
    pub fn stdin_write(&mut self, out: &mut OutBuf) {
        let st = &mut self.stdin;
        while let Some(fd) = &st.fd {
            let Some((chunk, paid)) = st.queue.front() else {
                break;
            };
            match sys::write(fd.as_fd(), &chunk[st.head..]) {
                Ok(n) => {
                    st.head += n;
                    if *paid {
                        st.regrant += n as u32;
                    }
                    if st.head == chunk.len() {
                        st.queue.pop_front();
                        st.head = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE: the child closed its stdin (EIO on a hung-up pty).
                // Not an error of the exec: later input is consumed unread.
                // For a file sink (no child), it is the exec's failure.
                Err(e) => {
                    if self.pid == 0 {
                        self.file_error = Some(file_error("write", &e));
                    }
                    st.discard_queue();
                    st.fd = None;
                }
            }
        }
        if st.eof && st.queue.is_empty() {
            st.fd = None;
        }
        if st.regrant >= REGRANT_BATCH {
            out.push(&GuestMsg::StdinWindow {
                id: self.id,
                bytes: st.regrant,
            });
            st.credit += st.regrant;
            st.regrant = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_defaults_and_clamps() {
        assert_eq!(initial_credit(0), DEFAULT_WINDOW);
        assert_eq!(initial_credit(1), MIN_WINDOW);
        assert_eq!(initial_credit(u32::MAX), MAX_WINDOW);
        assert_eq!(initial_credit(100_000), 100_000);
    }
}
