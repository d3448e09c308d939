//! One attach client: reads its lines, starts and steers its execs, and
//! writes their output back with backpressure. Everything a connection
//! started dies with it: dropping an [`ExecHandle`] kills the guest process
//! (SIGKILL).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::codec::{LineReader, ReadError, MAX_LINE};
use super::protocol::{parse_line, ClientMsg, Code, Refusal, ServerMsg};
use super::request::{exec_request, signal_number};
use super::{SnapshotRequest, Target};
use crate::control::{ExecControl, ExecEvent, ExecHandle, Stream};
use crate::error::Coded;

/// Lines queued for the socket; past this, senders wait (an exec's output
/// task then stops taking output, and the guest stops on its window).
const OUT_QUEUE: usize = 64;
/// Output taken from one exec per batch, at most.
const BATCH_BYTES: usize = 256 * 1024;
/// Stdin messages queued per exec while the guest has no stdin credit;
/// past this the connection stops reading until the guest takes some.
const STDIN_QUEUE: usize = 32;
/// After `payload_too_large`: how long the peer has to close.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

enum StdinOp {
    Data(Vec<u8>),
    Eof,
}

struct Running {
    ctl: ExecControl,
    stdin: Option<mpsc::Sender<StdinOp>>,
    /// Cancelled when the exec's result was sent (or it was dropped).
    finished: CancellationToken,
    task: JoinHandle<()>,
}

/// Serve one client until it leaves, breaks the protocol's line bound, or
/// `stop` is cancelled (the server closes).
pub async fn serve<S>(stream: S, target: Arc<Target>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    // Cancelled by the writer when the socket fails, or at teardown. Not a
    // child of `stop`: a `snapshot_response` must still reach its client
    // when the owner closes the server right after the checkpoint.
    let alive = CancellationToken::new();
    let (out, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let mut writer = tokio::spawn(write_loop(w, out_rx, alive.clone()));
    let (done, mut done_rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        target,
        out,
        alive: alive.clone(),
        stop: stop.clone(),
        execs: HashMap::new(),
        done,
        replied_final: false,
        owes_snapshot_answer: false,
    };
    let mut reader = LineReader::new(r, MAX_LINE);
    let vm_id = conn.target.vm_id.clone();
    conn.emit(ServerMsg::Status {
        state: "running",
        vm_id: &vm_id,
    })
    .await;
    let mut too_long = false;
    loop {
        if conn.replied_final {
            break; // the VM is gone: nothing more to serve
        }
        tokio::select! {
            _ = alive.cancelled() => break,
            _ = stop.cancelled() => break,
            Some(id) = done_rx.recv() => conn.reap(id),
            line = reader.next_line() => match line {
                Ok(Some(line)) => conn.handle(&line).await,
                Ok(None) | Err(ReadError::Io(_)) => break,
                Err(ReadError::TooLong(e)) => {
                    let refusal = Refusal::new(None, Code::PayloadTooLarge, e.to_string());
                    conn.emit((&refusal).into()).await;
                    too_long = true;
                    break;
                }
            },
        }
    }
    conn.kill_all();
    // On server close, drop the client at once, unless it is owed the
    // answer to its snapshot (the owner closes the server right after a
    // checkpoint, whether it was written or failed half-way).
    if stop.is_cancelled() && !conn.owes_snapshot_answer {
        alive.cancel();
    }
    // Dropping `conn` closes the output queue: the writer flushes what is
    // queued (the error, after an oversized line; a snapshot reply) and
    // shuts down. Give the peer a moment to hang up; never wait on it for
    // longer.
    drop(conn);
    let grace = tokio::time::sleep(HANGUP_GRACE);
    tokio::pin!(grace);
    if !alive.is_cancelled() {
        tokio::select! {
            _ = &mut writer => {}
            _ = &mut grace => alive.cancel(),
        }
    }
    alive.cancel();
    if !writer.is_finished() {
        let _ = writer.await;
    }
    if too_long {
        tokio::select! {
            _ = reader.discard_to_end() => {}
            _ = &mut grace => {}
            _ = stop.cancelled() => {}
        }
    }
}

struct Conn {
    target: Arc<Target>,
    out: mpsc::Sender<String>,
    alive: CancellationToken,
    /// The server's close.
    stop: CancellationToken,
    execs: HashMap<u32, Running>,
    /// Gets the id of each exec whose result was sent.
    done: mpsc::UnboundedSender<u32>,
    /// A `snapshot_response` was queued: the VM is consumed and the
    /// connection ends once it is written.
    replied_final: bool,
    /// A snapshot answer (response or `snapshot_failed`) was queued: it is
    /// flushed even when the server closes meanwhile.
    owes_snapshot_answer: bool,
}

impl Conn {
    async fn emit(&self, msg: ServerMsg<'_>) {
        send_line(&self.out, &self.alive, msg.to_line()).await;
    }

    async fn refuse(&self, r: Refusal) {
        self.emit((&r).into()).await;
    }

    async fn handle(&mut self, line: &[u8]) {
        let msg = match parse_line(line) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(r) => return self.refuse(r).await,
        };
        if let Err(r) = self.dispatch(msg).await {
            self.refuse(r).await;
        }
    }

    async fn dispatch(&mut self, msg: ClientMsg) -> Result<(), Refusal> {
        let unknown = |id| Refusal::new(Some(id), Code::UnknownId, "request id not found");
        let invalid = |id, m: String| Refusal::new(Some(id), Code::InvalidRequest, m);
        match msg {
            ClientMsg::Exec { id, exec } => {
                if self.execs.contains_key(&id) {
                    return Err(Refusal::new(
                        Some(id),
                        Code::DuplicateId,
                        "request id already in use",
                    ));
                }
                let req = exec_request(&exec, &self.target.env).map_err(|m| invalid(id, m))?;
                // Under the "exec" debug flag, as `vm.exec` logs; argv only (env values may be secrets).
                tracing::debug!(target: "gondolin::exec", id, argv = ?req.argv, "attach exec");
                match self.target.control.exec(&req) {
                    Ok(handle) => self.start(id, handle, req.stdin),
                    Err(e) => {
                        let message = e.to_string();
                        self.emit(ServerMsg::Error {
                            id: Some(id),
                            code: e.code().as_str(),
                            message: &message,
                        })
                        .await
                    }
                }
                Ok(())
            }
            ClientMsg::Stdin { id, data, eof } => {
                let run = self.execs.get(&id).ok_or_else(|| unknown(id))?;
                if data.is_empty() && !eof {
                    return Ok(());
                }
                let Some(tx) = &run.stdin else {
                    return Err(Refusal::new(
                        Some(id),
                        Code::StdinDisabled,
                        "stdin was not enabled for this exec",
                    ));
                };
                let ops = [
                    (!data.is_empty()).then_some(StdinOp::Data(data)),
                    eof.then_some(StdinOp::Eof),
                ];
                for op in ops.into_iter().flatten() {
                    // Waits while the queue is full: the client's stdin is
                    // backpressured by the guest's stdin credit.
                    tokio::select! {
                        _ = tx.send(op) => {}
                        _ = run.finished.cancelled() => {}
                        _ = self.alive.cancelled() => {}
                        _ = self.stop.cancelled() => {}
                    }
                }
                Ok(())
            }
            ClientMsg::Resize { id, rows, cols } => {
                let run = self.execs.get(&id).ok_or_else(|| unknown(id))?;
                // As `ExecProcess.resize`: a finished exec ignores it.
                let _ = run.ctl.resize(rows, cols);
                Ok(())
            }
            ClientMsg::Kill { id, signal } => {
                let run = self.execs.get(&id).ok_or_else(|| unknown(id))?;
                let sig = signal_number(&signal).map_err(|m| invalid(id, m))?;
                // As `ExecProcess.kill`: an exec that already exited ignores it.
                let _ = run.ctl.kill(sig);
                Ok(())
            }
            ClientMsg::Snapshot { id, path, memory } => self.snapshot(id, path, memory).await,
        }
    }

    /// Ask the VM's owner to checkpoint it. Reading this connection waits
    /// meanwhile (the VM stops; nothing else it could ask would run).
    async fn snapshot(&mut self, id: u32, path: String, memory: bool) -> Result<(), Refusal> {
        let Some(handler) = self.target.snapshot.clone() else {
            return Err(Refusal::new(
                Some(id),
                Code::Unsupported,
                "snapshot actions are not supported for this session",
            ));
        };
        tracing::debug!(target: "gondolin::exec", id, path, memory, "attach snapshot");
        let answer = handler.run(SnapshotRequest { path, memory }).await;
        self.owes_snapshot_answer = true;
        match answer {
            Ok(done) => {
                self.emit(ServerMsg::SnapshotResponse {
                    id,
                    path: &done.path,
                    name: &done.name,
                })
                .await;
                self.replied_final = true;
                Ok(())
            }
            Err(e) => Err(Refusal::new(Some(id), Code::SnapshotFailed, e.message)),
        }
    }

    fn start(&mut self, id: u32, handle: ExecHandle, stdin: bool) {
        let finished = CancellationToken::new();
        let ctl = handle.control();
        let stdin = stdin.then(|| {
            let (tx, rx) = mpsc::channel(STDIN_QUEUE);
            tokio::spawn(feed_stdin(ctl.clone(), rx, finished.clone()));
            tx
        });
        let task = tokio::spawn(forward(
            id,
            handle,
            self.out.clone(),
            self.alive.clone(),
            self.done.clone(),
            finished.clone(),
        ));
        self.execs.insert(
            id,
            Running {
                ctl,
                stdin,
                finished,
                task,
            },
        );
    }

    fn reap(&mut self, id: u32) {
        // Only if it is the exec that finished, not a newer one with its id.
        if self
            .execs
            .get(&id)
            .is_some_and(|r| r.finished.is_cancelled())
        {
            self.execs.remove(&id);
        }
    }

    /// Abort every exec task; each drops its handle, which kills the
    /// guest process.
    fn kill_all(&mut self) {
        for (_, run) in self.execs.drain() {
            run.task.abort();
            run.finished.cancel();
        }
    }
}

/// Queue one line unless the connection is going away.
async fn send_line(out: &mpsc::Sender<String>, alive: &CancellationToken, line: String) -> bool {
    tokio::select! {
        r = out.send(line) => r.is_ok(),
        _ = alive.cancelled() => false,
    }
}

/// An exec's output, then its result, onto the connection. Output is taken
/// from the guest only as fast as the socket drains.
async fn forward(
    id: u32,
    mut handle: ExecHandle,
    out: mpsc::Sender<String>,
    alive: CancellationToken,
    done: mpsc::UnboundedSender<u32>,
    finished: CancellationToken,
) {
    let b64 = base64::engine::general_purpose::STANDARD;
    while let Some(batch) = handle.next_batch(BATCH_BYTES).await {
        for ev in batch {
            let line = match ev {
                ExecEvent::Output { stream, data } => ServerMsg::Output {
                    id,
                    stream: match stream {
                        Stream::Stdout => "stdout",
                        Stream::Stderr => "stderr",
                    },
                    data: b64.encode(&data),
                }
                .to_line(),
                ExecEvent::Exit { exit_code, signal } => ServerMsg::Exit {
                    id,
                    exit_code,
                    signal,
                }
                .to_line(),
                ExecEvent::Failed { code, message } => ServerMsg::Error {
                    id: Some(id),
                    code: code.as_str(),
                    message: &message,
                }
                .to_line(),
            };
            if !send_line(&out, &alive, line).await {
                return; // the client is gone; dropping `handle` kills the exec
            }
        }
    }
    finished.cancel();
    let _ = done.send(id);
}

/// Writes and eof for one exec, in order, each waiting for stdin credit.
async fn feed_stdin(
    ctl: ExecControl,
    mut rx: mpsc::Receiver<StdinOp>,
    finished: CancellationToken,
) {
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = finished.cancelled() => None,
        };
        let Some(op) = op else { return };
        // Errors are the exec's to report (its result says why); as in JS,
        // a failed write does not stop later ones.
        match op {
            StdinOp::Data(data) => {
                tokio::select! {
                    _ = ctl.write_stdin(&data) => {}
                    _ = finished.cancelled() => return,
                }
            }
            StdinOp::Eof => {
                let _ = ctl.close_stdin();
            }
        }
    }
}

/// Lines to the socket, coalesced; a failed write ends the connection.
async fn write_loop<W: AsyncWrite>(w: W, mut rx: mpsc::Receiver<String>, alive: CancellationToken) {
    tokio::pin!(w);
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let line = tokio::select! {
            l = rx.recv() => l,
            _ = alive.cancelled() => None,
        };
        let Some(line) = line else { break };
        buf.clear();
        buf.extend_from_slice(line.as_bytes());
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(l) => buf.extend_from_slice(l.as_bytes()),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = w.write_all(&buf) => r,
            _ = alive.cancelled() => return,
        };
        if written.is_err() {
            alive.cancel();
            return;
        }
    }
    let _ = w.shutdown().await;
}
