//! Connection state, routing and the reader/writer tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gondolin_wire::{encode, GuestMsg, HostMsg, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::exec::{disconnected, ExecControl, ExecEvent, ExecHandle, ExecRequest};
use super::{ControlError, Disconnect};
use crate::error::ErrorCode;
use crate::framed::{write_coalesced, FramedReader, ReadError};
use crate::log_limited;

struct Slot {
    events: mpsc::UnboundedSender<ExecEvent>,
    stdin: Option<Arc<Semaphore>>,
    window: u32,
    /// Output bytes received per stream and not yet returned as credit.
    unacked: [u32; 2],
}

impl Slot {
    /// The exec is over: deliver its last event, and wake a writer still
    /// waiting for stdin credit (it gets `Exited`/`Disconnected`) — the
    /// guest sends no credit for a finished exec, so it would wait forever.
    fn end(self, last: Option<ExecEvent>) {
        if let Some(ev) = last {
            let _ = self.events.send(ev);
        }
        if let Some(s) = self.stdin {
            s.close();
        }
    }
}

#[derive(Default)]
struct State {
    execs: HashMap<u32, Slot>,
    next_id: u32,
    disconnect: Option<Disconnect>,
    /// Set by [`ControlClient::refuse_new`]: new execs and guest fs calls
    /// fail with it while the connection itself goes on.
    closing: Option<Disconnect>,
    ready: Option<oneshot::Sender<Result<u32, Disconnect>>>,
    fs: guest_fs::Pending,
    configure: configure::Pending,
}

/// State shared by the client, its tasks and every exec handle.
pub(crate) struct Shared {
    out: mpsc::UnboundedSender<Vec<u8>>,
    state: Mutex<State>,
    /// Cancelled by [`Shared::fail`]: both tasks stop and drop their half of
    /// the stream, which closes the socket. (The writer holds this `Shared`,
    /// whose `out` keeps its queue open, so it cannot wait for the queue to
    /// close: that was one leaked socket per VM.)
    stop: CancellationToken,
}

impl Shared {
    pub(crate) fn send(&self, msg: &HostMsg) -> Result<(), ControlError> {
        if let Some(d) = self.disconnect() {
            return Err(d.into());
        }
        self.out.send(encode(msg)).map_err(|_| {
            ControlError::Disconnected(self.disconnect().unwrap_or(Disconnect {
                code: ErrorCode::ConnectionClosed,
                message: "the connection to the guest closed".into(),
            }))
        })
    }

    pub(crate) fn disconnect(&self) -> Option<Disconnect> {
        self.state.lock().unwrap().disconnect.clone()
    }

    pub(crate) fn grant(&self, id: u32, stdout: u32, stderr: u32) {
        {
            let mut st = self.state.lock().unwrap();
            let Some(slot) = st.execs.get_mut(&id) else {
                return;
            };
            slot.unacked[0] = slot.unacked[0].saturating_sub(stdout);
            slot.unacked[1] = slot.unacked[1].saturating_sub(stderr);
        }
        let _ = self.send(&HostMsg::Window { id, stdout, stderr });
    }

    pub(crate) fn forget(&self, id: u32) {
        if let Some(slot) = self.state.lock().unwrap().execs.remove(&id) {
            slot.end(None);
        }
    }

    /// Fail everything pending; the first reason wins.
    fn fail(&self, d: Disconnect) {
        let mut st = self.state.lock().unwrap();
        if st.disconnect.is_none() {
            st.disconnect = Some(d.clone());
        }
        let d = st.disconnect.clone().unwrap();
        for (_, slot) in st.execs.drain() {
            slot.end(Some(disconnected(&d)));
        }
        st.fs.fail(&d);
        st.configure.fail(&d);
        if let Some(tx) = st.ready.take() {
            let _ = tx.send(Err(d));
        }
        self.stop.cancel();
    }

    fn route(&self, msg: GuestMsg) -> Result<(), Disconnect> {
        let violation = |m: String| Disconnect {
            code: ErrorCode::ProtocolError,
            message: m,
        };
        let mut st = self.state.lock().unwrap();
        match msg {
            GuestMsg::Ready { version } => {
                if let Some(tx) = st.ready.take() {
                    let _ = tx.send(Ok(version));
                }
            }
            GuestMsg::Output { id, stream, data } => {
                let Some(slot) = st.execs.get_mut(&id) else {
                    return Ok(());
                };
                let i = stream as usize;
                let total = slot.unacked[i].saturating_add(data.len() as u32);
                if total > slot.window {
                    return Err(violation(format!(
                        "guest sent {total} bytes of output for exec {id} with only {} bytes of credit",
                        slot.window
                    )));
                }
                slot.unacked[i] = total;
                let _ = slot.events.send(ExecEvent::Output { stream, data });
            }
            GuestMsg::Exit {
                id,
                exit_code,
                signal,
            } => {
                if let Some(slot) = st.execs.remove(&id) {
                    slot.end(Some(ExecEvent::Exit { exit_code, signal }));
                }
            }
            GuestMsg::StdinWindow { id, bytes } => {
                if let Some(sem) = st.execs.get(&id).and_then(|s| s.stdin.as_ref()) {
                    // Bound what a guest can make us account for.
                    let room = (gondolin_wire::MAX_WINDOW as usize)
                        .saturating_sub(sem.available_permits());
                    sem.add_permits((bytes as usize).min(room));
                }
            }
            GuestMsg::Error { id, code, message } => {
                // Backpressure notices are advisory; everything else tied to
                // an exec ends it.
                if id != 0 && code != "stdin_backpressure" {
                    if let Some(slot) = st.execs.remove(&id) {
                        slot.end(Some(ExecEvent::Failed {
                            code: ErrorCode::from_guest(&code),
                            message,
                        }));
                    }
                } else {
                    log_limited!(debug, target: "gondolin::exec", id, %code, %message, "guest error");
                }
            }
            GuestMsg::Pong { .. } => {}
            GuestMsg::FsReply { id, reply } => st.fs.complete(id, reply),
            GuestMsg::Configured { version, error } => st.configure.complete(version, error),
        }
        Ok(())
    }
}

/// Signals from a new connection; see [`ControlClient::new`].
#[derive(Debug)]
pub struct Connection {
    pub ready: oneshot::Receiver<Result<u32, Disconnect>>,
    pub closed: oneshot::Receiver<Disconnect>,
}

/// Client side of the control port.
#[derive(Clone)]
pub struct ControlClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient").finish_non_exhaustive()
    }
}

impl ControlClient {
    /// Take over a connected stream. `Connection::ready` resolves when the
    /// guest announces itself; `Connection::closed` gets the reason the
    /// reader stopped — whoever holds it decides when to [`fail`](Self::fail)
    /// (a VM waits briefly for QEMU's exit status to give a better reason).
    /// If it is dropped, the client fails on its own.
    pub fn new<S>(stream: S) -> (Self, Connection)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            state: Mutex::new(State {
                next_id: 1,
                ready: Some(ready_tx),
                ..Default::default()
            }),
            stop: CancellationToken::new(),
        });
        let (r, w) = tokio::io::split(stream);
        tokio::spawn(write_loop(w, out_rx, shared.clone()));
        tokio::spawn(read_loop(r, shared.clone(), closed_tx));
        (
            ControlClient { shared },
            Connection {
                ready: ready_rx,
                closed: closed_rx,
            },
        )
    }

    /// Check the version announced in `Ready`.
    pub fn check_version(version: u32) -> Result<(), (u32, u32)> {
        if version == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err((version, PROTOCOL_VERSION))
        }
    }

    /// Start a process. Returns at once; output arrives through the handle.
    pub fn exec(&self, req: &ExecRequest) -> Result<ExecHandle, ControlError> {
        let exec = req.to_wire();
        exec.validate()
            .map_err(|e| ControlError::InvalidRequest(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stdin = exec.stdin.then(|| Arc::new(Semaphore::new(0)));
        let id = {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(d) = st.refusal() {
                return Err(d.into());
            }
            let id = alloc_id(&mut st)?;
            st.execs.insert(
                id,
                Slot {
                    events: tx,
                    stdin: stdin.clone(),
                    window: exec.stdout_window.max(exec.stderr_window),
                    unacked: [0, 0],
                },
            );
            id
        };
        let ctl = ExecControl {
            id,
            shared: self.shared.clone(),
            stdin,
            done: Default::default(),
        };
        let handle = ExecHandle { ctl, events: rx };
        self.shared.send(&HostMsg::Exec { id, exec })?;
        Ok(handle)
    }

    /// Fail every pending and future exec with `d` (first reason wins).
    pub fn fail(&self, d: Disconnect) {
        self.shared.fail(d);
    }

    /// Refuse new execs and guest fs calls with `d` and end the running
    /// execs with it, keeping the connection (a memory checkpoint is about
    /// to quiesce the guest over it).
    pub fn refuse_new(&self, d: Disconnect) {
        let mut st = self.shared.state.lock().unwrap();
        st.closing = Some(d.clone());
        for (_, slot) in st.execs.drain() {
            slot.end(Some(disconnected(&d)));
        }
    }

    pub fn disconnect(&self) -> Option<Disconnect> {
        self.shared.disconnect()
    }

    /// Number of execs currently tracked (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.shared.state.lock().unwrap().execs.len()
    }
}

impl State {
    /// Why a new exec or fs call is refused, if it is.
    fn refusal(&self) -> Option<Disconnect> {
        self.disconnect.clone().or_else(|| self.closing.clone())
    }
}

fn alloc_id(st: &mut State) -> Result<u32, ControlError> {
    for _ in 0..1024 {
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1).max(1);
        if !st.execs.contains_key(&id) {
            return Ok(id);
        }
    }
    Err(ControlError::NoIds)
}

/// Coalesce queued frames into writes (at most 256 KiB each) until the
/// queue closes, a write fails or the client is stopped.
async fn write_loop<W: AsyncWrite>(
    w: W,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let stop = shared.stop.clone();
    let written = tokio::select! {
        r = write_coalesced(w, rx, 256 * 1024, |f: &Vec<u8>, buf| buf.extend_from_slice(f)) => r,
        _ = stop.cancelled() => return,
    };
    if let Err(e) = written {
        shared.fail(Disconnect {
            code: ErrorCode::ConnectionClosed,
            message: format!("writing to the guest failed: {e}"),
        });
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    r: R,
    shared: Arc<Shared>,
    closed: oneshot::Sender<Disconnect>,
) {
    let mut frames = FramedReader::wire(r, 256 * 1024);
    let stop = shared.stop.clone();
    let reason = loop {
        let read = tokio::select! {
            // Frames already buffered are routed before a stop is noticed.
            biased;
            m = frames.next_message::<GuestMsg>() => m,
            _ = stop.cancelled() => {
                // Failed from outside (the VM closed or exited): that reason
                // is already recorded; the stream goes with this task.
                break shared.disconnect().unwrap_or(Disconnect {
                    code: ErrorCode::ConnectionClosed,
                    message: "the control connection closed".into(),
                });
            }
        };
        let message = match read {
            Ok(Some(msg)) => match msg.validate() {
                Err(e) => format!("guest sent a bad message: {e}"),
                Ok(()) => match shared.route(msg) {
                    Ok(()) => continue,
                    Err(d) => d.message,
                },
            },
            Ok(None) => {
                break Disconnect {
                    code: ErrorCode::ConnectionClosed,
                    message: "the guest closed the control connection".into(),
                }
            }
            Err(ReadError::Io(e)) => {
                break Disconnect {
                    code: ErrorCode::ConnectionClosed,
                    message: format!("reading from the guest failed: {e}"),
                }
            }
            Err(ReadError::Wire(e)) => format!("guest sent a bad frame: {e}"),
        };
        log_limited!(debug, target: "gondolin::exec", %message, "control protocol error");
        break Disconnect {
            code: ErrorCode::ProtocolError,
            message,
        };
    };
    // Nothing more can be read, so nothing written matters: the writer
    // drops its half now and the socket closes, whoever still holds the
    // client (a failed start, a supervisor waiting for QEMU's exit status).
    shared.stop.cancel();
    if let Err(reason) = closed.send(reason) {
        shared.fail(reason);
    }
}

pub mod configure;
pub mod guest_fs;

#[cfg(test)]
pub(crate) mod tests;
