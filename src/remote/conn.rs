//! One WebSocket connection, the same on both ends: a reader task and a
//! writer task joined to the caller by bounded queues.
//!
//! Inbound, the reader takes a queue slot before it reads the socket, so a
//! caller that stops calling `recv` stops the socket being read and TCP
//! pushes back on the peer. Outbound, `enqueue` puts a message straight
//! into the queue when it has room (synchronously: no task per message);
//! otherwise the message is held, in call order, and its waiter resolves
//! once it is in the queue. A peer that stops reading stops the writer, the
//! queue fills, and waiters stop resolving. Each queue holds at most
//! [`QUEUE_MESSAGES`] messages and [`QUEUE_BYTES`] bytes of payload.
//!
//! Closing: whoever sees the end first records the [`CloseStatus`] (the
//! first one recorded stays), then both tasks stop: the writer sends our
//! close frame (or flushes the reply tungstenite queued to the peer's),
//! the reader waits up to [`CLOSE_TIMEOUT`] for the peer's, and the inbound
//! queue ends after the messages already in it.
//!
//! A peer that stops reading while we have messages to write is closed
//! (1008) once its socket accepted no bytes for `write_timeout`
//! ([`WRITE_TIMEOUT`](super::WRITE_TIMEOUT) by default): the keepalive only
//! watches the read side, and such a peer may keep sending.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::progress::{stalled, ProgressIo, WriteProgress};
use super::{RemoteError, CLOSE_TIMEOUT, QUEUE_BYTES, QUEUE_MESSAGES};

/// One WebSocket message: a text frame or a binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Bytes),
}

impl Message {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(s) => s.len(),
            Message::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a connection ended: the peer's close code and reason, or ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseStatus {
    pub code: u16,
    pub reason: String,
}

/// Byte counters a server sums over its connections.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

/// Per-connection settings.
pub(crate) struct ConnOptions {
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Messages waiting and the socket accepting no bytes for this long
    /// closes the connection (1008).
    pub write_timeout: Duration,
    pub counters: Option<Arc<ByteCounters>>,
    /// Cancelled when the server shuts down: close with 1001.
    pub shutdown: Option<CancellationToken>,
}

struct Shared {
    /// Wakes a caller of `try_recv_many` that found nothing.
    readable: Readable,
    /// The first close status recorded; never replaced.
    status: Mutex<Option<CloseStatus>>,
    /// The close frame the writer is to send, if the close is ours.
    our_close: Mutex<Option<CloseFrame>>,
    /// Cancelled once the connection is closing, for whatever reason.
    stop: CancellationToken,
}

/// The wake-up of [`Connection::try_recv_many`]: armed when a caller found
/// the inbound queue empty; the reader fires it (once) after queuing the
/// next message, and always once at the end.
#[derive(Default)]
struct Readable {
    armed: AtomicBool,
    hook: Mutex<HookSlot>,
}

#[derive(Default)]
struct HookSlot {
    hook: Option<ReadableHook>,
    /// The queue ended: a hook set now is called once and dropped at once.
    ended: bool,
}

type ReadableHook = Box<dyn Fn() + Send + Sync>;

impl Readable {
    fn slot(&self) -> std::sync::MutexGuard<'_, HookSlot> {
        self.hook.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fire(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            if let Some(h) = &self.slot().hook {
                h();
            }
        }
    }

    /// The inbound queue ended: a last call, then the hook is dropped (it
    /// may hold what keeps the caller's event loop alive).
    fn end(&self) {
        let hook = {
            let mut slot = self.slot();
            slot.ended = true;
            slot.hook.take()
        };
        if let Some(h) = hook {
            h();
        }
    }

    /// Set the hook; once ended, it gets its last call now and is dropped.
    fn set(&self, hook: ReadableHook) {
        let mut slot = self.slot();
        if slot.ended {
            drop(slot);
            hook();
        } else {
            slot.hook = Some(hook);
        }
    }
}

/// What [`Connection::try_recv_many`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecv {
    /// 1..=max messages, in order.
    Messages(Vec<Message>),
    /// Nothing yet: the readable hook will be called.
    Empty,
    /// The connection is closed and every message was taken.
    Closed,
}

impl Shared {
    fn record(&self, code: u16, reason: impl Into<String>) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(CloseStatus {
                code,
                reason: reason.into(),
            });
        }
    }

    /// Close from this end with `code`/`reason` (unless already closing).
    fn close_local(&self, code: u16, reason: &str) {
        if self.stop.is_cancelled() {
            return;
        }
        self.record(code, reason);
        *self.our_close.lock().unwrap_or_else(|e| e.into_inner()) = Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        });
        self.stop.cancel();
    }

    /// The connection ended from the other side (a close frame, or the
    /// socket): nothing to send but the reply tungstenite queued.
    fn ended(&self, code: u16, reason: impl Into<String>) {
        self.record(code, reason);
        self.stop.cancel();
    }
}

type Queued = (Message, OwnedSemaphorePermit);

/// One end of a WebSocket. Dropping it closes the connection (1000).
pub struct Connection {
    rx: tokio::sync::Mutex<mpsc::Receiver<Queued>>,
    tx: mpsc::Sender<Queued>,
    out_budget: Arc<Semaphore>,
    /// Messages waiting for room, in order (see [`release_held`]).
    hold_tx: mpsc::UnboundedSender<Held>,
    /// How many are held: while any is, new messages are held behind them.
    held: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    remote_addr: String,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

/// Permits a message of `len` bytes takes out of a [`QUEUE_BYTES`] budget
/// (a larger message takes the whole budget, so it waits for an empty
/// queue).
fn budget_units(len: usize) -> u32 {
    len.clamp(1, QUEUE_BYTES) as u32
}

async fn take_budget(budget: &Arc<Semaphore>, len: usize) -> OwnedSemaphorePermit {
    budget
        .clone()
        .acquire_many_owned(budget_units(len))
        .await
        .expect("the budget semaphore is never closed")
}

/// What [`Connection::enqueue`] did with a message.
#[derive(Debug)]
pub enum Enqueued {
    /// It is in the bounded send queue.
    Queued,
    /// It is held until the queue has room; resolves then (or with
    /// [`RemoteError::Closed`]).
    Waiting(oneshot::Receiver<Result<(), RemoteError>>),
}

impl Enqueued {
    /// The outcome of a held message.
    pub async fn wait(rx: oneshot::Receiver<Result<(), RemoteError>>) -> Result<(), RemoteError> {
        rx.await.unwrap_or(Err(RemoteError::Closed))
    }
}

/// A message held by [`Connection::enqueue`] and who waits for it.
type Held = (Message, oneshot::Sender<Result<(), RemoteError>>);

/// Moves held messages into the send queue in order as room frees up;
/// ends when the connection closes (the held ones then fail with
/// [`RemoteError::Closed`]) or the [`Connection`] is dropped.
async fn release_held(
    mut hold_rx: mpsc::UnboundedReceiver<Held>,
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    held: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    loop {
        let (msg, done) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = hold_rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let r = tokio::select! {
            biased;
            _ = stop.cancelled() => Err(RemoteError::Closed),
            r = async {
                let permit = take_budget(&budget, msg.len()).await;
                tx.send((msg, permit)).await.map_err(|_| RemoteError::Closed)
            } => r,
        };
        // Counted down only once it is in the queue: a later enqueue that
        // sees 0 cannot overtake it.
        held.fetch_sub(1, Ordering::SeqCst);
        let failed = r.is_err();
        let _ = done.send(r);
        if failed {
            break;
        }
    }
}

impl Connection {
    /// The peer's address (`ip:port`).
    pub fn remote_addr(&self) -> &str {
        &self.remote_addr
    }

    /// The next messages in order, at most `max` (≥ 1) of them; empty once
    /// the connection is closed and every message read before was taken.
    pub async fn recv_many(&self, max: usize) -> Vec<Message> {
        let mut rx = self.rx.lock().await;
        let mut got = Vec::with_capacity(max.min(QUEUE_MESSAGES));
        rx.recv_many(&mut got, max.max(1)).await;
        // Dropping each permit returns its bytes to the inbound budget.
        got.into_iter().map(|(m, _permit)| m).collect()
    }

    /// The next messages in order, at most `max` (≥ 1), without waiting.
    /// On [`TryRecv::Empty`] the hook given to
    /// [`on_readable`](Self::on_readable) is called once more arrive (or the
    /// connection ends). Not to be mixed with a pending `recv_many`.
    pub fn try_recv_many(&self, max: usize) -> TryRecv {
        use mpsc::error::TryRecvError;
        let Ok(mut rx) = self.rx.try_lock() else {
            return TryRecv::Empty;
        };
        let mut got = Vec::new();
        let take = |rx: &mut mpsc::Receiver<Queued>, got: &mut Vec<Message>| loop {
            match rx.try_recv() {
                // Dropping the permit returns its bytes to the inbound budget.
                Ok((m, _permit)) => {
                    got.push(m);
                    if got.len() >= max.max(1) {
                        return false;
                    }
                }
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        };
        let mut ended = take(&mut rx, &mut got);
        if got.is_empty() && !ended {
            // Arm, then look once more: a message queued in between is not
            // missed (at worst the hook fires for nothing).
            self.shared.readable.armed.store(true, Ordering::SeqCst);
            ended = take(&mut rx, &mut got);
            if !got.is_empty() || ended {
                self.shared.readable.armed.store(false, Ordering::SeqCst);
            }
        }
        match (got.is_empty(), ended) {
            (false, _) => TryRecv::Messages(got),
            (true, true) => TryRecv::Closed,
            (true, false) => TryRecv::Empty,
        }
    }

    /// Set what wakes a caller of [`try_recv_many`](Self::try_recv_many)
    /// once it returned [`TryRecv::Empty`] (called on the reader's task).
    /// It is called once more when the connection ends, then dropped; set
    /// after the end, it is called once at once and dropped.
    pub fn on_readable(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.shared.readable.set(Box::new(hook));
    }

    /// Queue one message, in call order. [`Enqueued::Queued`] when it went
    /// straight into the bounded send queue (no task, no wait: the common
    /// case); [`Enqueued::Waiting`] when the queue is full or earlier
    /// messages still wait for room: the message is held, in order, and the
    /// receiver resolves once it is in the queue. Fails with
    /// [`RemoteError::Closed`] once the connection is closing and
    /// [`RemoteError::TooLarge`] over `max_message_bytes`.
    ///
    /// A caller that does not wait for `Waiting` to resolve before sending
    /// more grows the held backlog: the JS protocol bounds its own (replies,
    /// events, requests in flight, stream credit).
    pub fn enqueue(&self, msg: Message) -> Result<Enqueued, RemoteError> {
        if msg.len() > self.max_message_bytes {
            return Err(RemoteError::TooLarge {
                len: msg.len(),
                max: self.max_message_bytes,
            });
        }
        if self.shared.stop.is_cancelled() {
            return Err(RemoteError::Closed);
        }
        let mut msg = msg;
        // Straight in only when nothing is held before it (order) and both
        // bounds have room.
        if self.held.load(Ordering::SeqCst) == 0 {
            if let Ok(permit) = self
                .out_budget
                .clone()
                .try_acquire_many_owned(budget_units(msg.len()))
            {
                match self.tx.try_send((msg, permit)) {
                    Ok(()) => return Ok(Enqueued::Queued),
                    Err(mpsc::error::TrySendError::Full((m, _))) => msg = m,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(RemoteError::Closed),
                }
            }
        }
        let (done, waiting) = oneshot::channel();
        self.held.fetch_add(1, Ordering::SeqCst);
        if self.hold_tx.send((msg, done)).is_err() {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Err(RemoteError::Closed);
        }
        Ok(Enqueued::Waiting(waiting))
    }

    /// [`enqueue`](Self::enqueue), then wait until the message is in the
    /// bounded send queue. Dropping the future does not withdraw a message
    /// that was held: it is still sent, in order.
    pub async fn send(&self, msg: Message) -> Result<(), RemoteError> {
        match self.enqueue(msg)? {
            Enqueued::Queued => Ok(()),
            Enqueued::Waiting(rx) => Enqueued::wait(rx).await,
        }
    }

    /// Close with `code` (1000 or 3000–4999; others become 1000) and
    /// `reason` (cut to 123 bytes). No-op once closing.
    pub fn close(&self, code: u16, reason: &str) {
        let code = match code {
            1000 | 3000..=4999 => code,
            _ => 1000,
        };
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.shared.close_local(code, &reason[..end]);
    }

    /// The close status once closing (ours or the peer's), else `None`.
    pub fn close_status(&self) -> Option<CloseStatus> {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once the connection is closing.
    pub async fn closing(&self) {
        self.shared.stop.cancelled().await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close_local(1000, "");
    }
}

/// Start the tasks of one established WebSocket. The returned handle
/// resolves once both tasks ended (the socket is then closed).
pub(crate) fn start<S>(
    ws: WebSocketStream<ProgressIo<S>>,
    remote_addr: String,
    opts: ConnOptions,
) -> (Connection, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared {
        readable: Readable::default(),
        status: Mutex::new(None),
        our_close: Mutex::new(None),
        stop: CancellationToken::new(),
    });
    let (in_tx, in_rx) = mpsc::channel::<Queued>(QUEUE_MESSAGES);
    let (out_tx, out_rx) = mpsc::channel::<Queued>(QUEUE_MESSAGES);
    let in_budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    let progress = ws.get_ref().progress.clone();
    let (sink, stream) = ws.split();
    let opts = Arc::new(opts);
    let reader = tokio::spawn(read_loop(
        stream,
        in_tx,
        in_budget,
        shared.clone(),
        opts.clone(),
    ));
    let writer = tokio::spawn(write_loop(
        sink,
        out_rx,
        progress,
        shared.clone(),
        opts.clone(),
    ));
    let both = tokio::spawn(async move {
        let _ = reader.await;
        let _ = writer.await;
    });
    let out_budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    let (hold_tx, hold_rx) = mpsc::unbounded_channel();
    let held = Arc::new(AtomicUsize::new(0));
    tokio::spawn(release_held(
        hold_rx,
        out_tx.clone(),
        out_budget.clone(),
        held.clone(),
        shared.stop.clone(),
    ));
    let conn = Connection {
        rx: tokio::sync::Mutex::new(in_rx),
        tx: out_tx,
        out_budget,
        hold_tx,
        held,
        shared,
        remote_addr,
        max_message_bytes: opts.max_message_bytes,
    };
    (conn, both)
}

type WsStream<S> = futures_util::stream::SplitStream<WebSocketStream<ProgressIo<S>>>;
type WsSink<S> = futures_util::stream::SplitSink<WebSocketStream<ProgressIo<S>>, WsMessage>;

async fn read_loop<S>(
    mut stream: WsStream<S>,
    in_tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    shared: Arc<Shared>,
    opts: Arc<ConnOptions>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = shared.stop.clone();
    let shutdown = opts.shutdown.clone().unwrap_or_default();
    loop {
        // A queue slot first: while the caller is not taking messages, the
        // socket is not read (and the idle clock does not run).
        let slot = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => {
                shared.close_local(1001, "server shutting down");
                break;
            }
            s = in_tx.reserve() => match s {
                Ok(s) => s,
                Err(_) => {
                    // The Connection was dropped.
                    shared.close_local(1000, "");
                    break;
                }
            },
        };
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => {
                shared.close_local(1001, "server shutting down");
                break;
            }
            r = tokio::time::timeout(opts.idle_timeout, stream.next()) => r,
        };
        let msg = match next {
            Err(_) => {
                let secs = opts.idle_timeout.as_secs_f64();
                shared.close_local(
                    1001,
                    &format!("keepalive timeout: nothing received for {secs} s"),
                );
                break;
            }
            Ok(None) => {
                shared.ended(1006, "connection closed without a close frame");
                break;
            }
            Ok(Some(Err(e))) => {
                on_read_error(&shared, e, opts.max_message_bytes);
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let msg = match msg {
            WsMessage::Text(t) => Message::Text(t.as_str().to_owned()),
            WsMessage::Binary(b) => Message::Binary(b),
            WsMessage::Close(frame) => {
                match frame {
                    Some(f) => shared.ended(u16::from(f.code), f.reason.as_str()),
                    None => shared.ended(1005, ""),
                }
                break;
            }
            // Pings are answered by tungstenite; pongs only prove liveness.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
        };
        if let Some(c) = &opts.counters {
            c.received.fetch_add(msg.len() as u64, Ordering::Relaxed);
        }
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = take_budget(&budget, msg.len()) => p,
        };
        slot.send((msg, permit));
        shared.readable.fire();
    }
    // The queue ends after what it holds; the status is recorded already.
    drop(in_tx);
    shared.readable.end();
    // Let tungstenite flush a close reply and read the peer's close frame.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

fn on_read_error(shared: &Shared, e: WsError, max: usize) {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => shared.close_local(
            1009,
            &format!("message of {size} bytes is over the limit of {max} bytes"),
        ),
        WsError::Capacity(c) => shared.close_local(1009, &c.to_string()),
        WsError::Protocol(p) => shared.close_local(1002, &format!("protocol error: {p}")),
        WsError::Utf8(_) => shared.close_local(1007, "text frame is not valid UTF-8"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            shared.ended(1006, "connection closed without a close frame")
        }
        WsError::Io(io) => shared.ended(1006, format!("connection lost: {io}")),
        other => shared.close_local(1011, &other.to_string()),
    }
}

async fn write_loop<S>(
    mut sink: WsSink<S>,
    mut out_rx: mpsc::Receiver<Queued>,
    progress: WriteProgress,
    shared: Arc<Shared>,
    opts: Arc<ConnOptions>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = shared.stop.clone();
    let mut ping = tokio::time::interval(opts.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let counters = opts.counters.clone();
    let count = |m: &Message| {
        if let Some(c) = &counters {
            c.sent.fetch_add(m.len() as u64, Ordering::Relaxed);
        }
    };
    loop {
        let step = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ping.tick() => None,
            m = out_rx.recv() => match m {
                Some(m) => Some(m),
                None => {
                    shared.close_local(1000, "");
                    break;
                }
            },
        };
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = stalled(&progress, started, opts.write_timeout) => {
                let secs = opts.write_timeout.as_secs_f64();
                shared.close_local(
                    1008,
                    &format!("write timeout: the peer read nothing for {secs} s while messages waited"),
                );
                break;
            }
            r = async {
                match step {
                    None => sink.send(WsMessage::Ping(Bytes::new())).await,
                    Some((m, _permit)) => {
                        // What is already queued (one queue's worth at most)
                        // goes out under one flush.
                        count(&m);
                        sink.feed(to_ws(m)).await?;
                        for _ in 1..QUEUE_MESSAGES {
                            let Ok((m, _permit)) = out_rx.try_recv() else { break };
                            count(&m);
                            sink.feed(to_ws(m)).await?;
                        }
                        sink.flush().await
                    }
                }
            } => r,
        };
        if let Err(e) = result {
            shared.ended(1006, format!("connection lost: {e}"));
            break;
        }
    }
    drop(out_rx);
    let frame = shared
        .our_close
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        match frame {
            Some(f) => sink.send(WsMessage::Close(Some(f))).await,
            // The peer closed: flush the reply tungstenite queued.
            None => sink.flush().await,
        }
    })
    .await;
}

fn to_ws(m: Message) -> WsMessage {
    match m {
        Message::Text(s) => WsMessage::Text(s.into()),
        Message::Binary(b) => WsMessage::Binary(b),
    }
}
