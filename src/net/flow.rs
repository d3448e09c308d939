//! One guest TCP flow as a tokio byte stream.
//!
//! The stack loop owns the smoltcp socket; the flow's handler owns a
//! [`FlowStream`]. Between them: a bounded channel each way (so a slow
//! handler closes the guest's TCP window instead of growing host memory)
//! and one shared [`Notify`] that wakes the stack loop whenever the handler
//! takes or gives bytes.

use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::PollSender;

/// Chunks queued per direction; with 64 KiB chunks, at most 1 MiB per flow.
pub(crate) const CHANNEL_CHUNKS: usize = 16;
/// Largest chunk moved at once.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A new TCP connection from the guest.
#[derive(Debug)]
pub struct Flow {
    /// The guest's end.
    pub src: SocketAddrV4,
    /// Where the guest connected to (any address: the stack accepts all).
    pub dst: SocketAddrV4,
    pub stream: FlowStream,
}

/// Decides what happens to each new flow. Called on the stack's task:
/// spawn, don't block.
pub trait FlowHandler: Send + Sync {
    fn handle(&self, flow: Flow);
}

/// State shared by a flow's two ends.
#[derive(Debug, Default)]
pub(crate) struct FlowShared {
    /// The handler asked for an RST instead of a FIN.
    pub reset: AtomicBool,
}

pub struct FlowStream {
    from_guest: mpsc::Receiver<Bytes>,
    leftover: Bytes,
    to_guest: PollSender<Bytes>,
    wake: Arc<Notify>,
    shared: Arc<FlowShared>,
}

impl std::fmt::Debug for FlowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowStream").finish_non_exhaustive()
    }
}

/// The stack's end of a flow.
pub(crate) struct FlowPeer {
    pub to_handler: mpsc::Sender<Bytes>,
    pub from_handler: mpsc::Receiver<Bytes>,
    pub shared: Arc<FlowShared>,
}

pub(crate) fn pair(wake: Arc<Notify>) -> (FlowStream, FlowPeer) {
    let (to_handler, from_guest) = mpsc::channel(CHANNEL_CHUNKS);
    let (to_guest, from_handler) = mpsc::channel(CHANNEL_CHUNKS);
    let shared = Arc::new(FlowShared::default());
    (
        FlowStream {
            from_guest,
            leftover: Bytes::new(),
            to_guest: PollSender::new(to_guest),
            wake,
            shared: shared.clone(),
        },
        FlowPeer {
            to_handler,
            from_handler,
            shared,
        },
    )
}

impl FlowStream {
    /// Abort the connection: the guest sees an RST.
    pub fn reset(self) {
        self.shared.reset.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl Drop for FlowStream {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl AsyncRead for FlowStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.leftover.is_empty() {
            match ready!(self.from_guest.poll_recv(cx)) {
                Some(b) => {
                    self.leftover = b;
                    // A channel slot is free: the stack can pull more.
                    self.wake.notify_one();
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.leftover.len().min(buf.remaining());
        let chunk = self.leftover.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FlowStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let closed = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        ready!(self.to_guest.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(CHUNK);
        self.to_guest
            .send_item(Bytes::copy_from_slice(&buf[..n]))
            .map_err(|_| closed())?;
        self.wake.notify_one();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Closing our sender is the FIN, once the queued bytes are sent.
        self.to_guest.close();
        self.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}
