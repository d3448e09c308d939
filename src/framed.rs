//! The two halves of every framed port the host serves (control, fs, the
//! network link): a reader that turns a byte stream into length-prefixed
//! frames, and a writer that drains a queue into the stream, coalescing
//! whatever is queued into one write. Each port used to spell both loops
//! out itself; the framing rules (bounds, what happens to an oversize
//! frame) stay with the port, in its [`Deframe`] implementation.

use std::future::Future;

use gondolin_wire::{FrameDecoder, WireError};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Splits buffered bytes into frames. Memory must stay bounded whatever
/// the peer sends: an implementation refuses or skips frames over its
/// limit before buffering them.
pub trait Deframe {
    /// Append bytes read from the stream.
    fn push(&mut self, bytes: &[u8]);
    /// The next complete frame body, if one is buffered. An error ends the
    /// stream (the peer broke the framing).
    fn next_frame(&mut self) -> Result<Option<&[u8]>, WireError>;
}

/// The wire protocol's framing (`u32be length || body`, at most
/// `gondolin_wire::MAX_FRAME`; a longer frame is an error).
impl Deframe for FrameDecoder {
    fn push(&mut self, bytes: &[u8]) {
        FrameDecoder::push(self, bytes)
    }
    fn next_frame(&mut self) -> Result<Option<&[u8]>, WireError> {
        FrameDecoder::next_frame(self)
    }
}

/// Why [`FramedReader`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Frames from a byte stream, read `chunk` bytes at a time.
///
/// Cancel-safe between frames: dropping a pending [`next`](Self::next)
/// loses nothing already read (the bytes stay in the decoder).
pub struct FramedReader<R, D> {
    r: R,
    dec: D,
    chunk: Box<[u8]>,
}

impl<R: AsyncRead + Unpin, D: Deframe> FramedReader<R, D> {
    pub fn new(r: R, dec: D, chunk: usize) -> Self {
        FramedReader {
            r,
            dec,
            chunk: vec![0u8; chunk].into_boxed_slice(),
        }
    }

    /// The next frame, passed through `map` (which must not keep the
    /// borrow). `Ok(None)` at a clean end of stream.
    pub async fn next<T>(
        &mut self,
        map: impl FnOnce(&[u8]) -> Result<T, WireError>,
    ) -> Result<Option<T>, ReadError> {
        loop {
            if let Some(frame) = self.dec.next_frame()? {
                return Ok(Some(map(frame)?));
            }
            let n = self.r.read(&mut self.chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.dec.push(&self.chunk[..n]);
        }
    }
}

impl<R: AsyncRead + Unpin> FramedReader<R, FrameDecoder> {
    /// A reader of wire-protocol frames.
    pub fn wire(r: R, chunk: usize) -> Self {
        Self::new(r, FrameDecoder::new(), chunk)
    }

    /// The next wire message. `Ok(None)` at a clean end of stream.
    pub async fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ReadError> {
        self.next(gondolin_wire::decode::<T>).await
    }
}

/// A queue a writer drains: tokio's bounded or unbounded receiver.
pub trait Queue<T>: Send {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send;
    fn try_recv(&mut self) -> Option<T>;
}

impl<T: Send> Queue<T> for mpsc::Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::Receiver::try_recv(self).ok()
    }
}

impl<T: Send> Queue<T> for mpsc::UnboundedReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

/// Drain `rx` into `w` until the queue closes (`Ok`) or a write fails.
/// Each item is `encode`d; whatever else is already queued joins the same
/// write until the batch reaches `max_batch` bytes (one item may exceed
/// it), so a burst costs one system call, not one per item.
pub async fn write_coalesced<W, Q, T>(
    w: W,
    mut rx: Q,
    max_batch: usize,
    mut encode: impl FnMut(&T, &mut Vec<u8>) + Send,
) -> std::io::Result<()>
where
    W: AsyncWrite,
    Q: Queue<T>,
{
    tokio::pin!(w);
    let mut buf = Vec::with_capacity(max_batch.min(64 * 1024));
    while let Some(item) = rx.recv().await {
        buf.clear();
        encode(&item, &mut buf);
        while buf.len() < max_batch {
            match rx.try_recv() {
                Some(item) => encode(&item, &mut buf),
                None => break,
            }
        }
        w.write_all(&buf).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gondolin_wire::{encode, GuestMsg};

    #[tokio::test]
    async fn frames_split_across_reads_reassemble() {
        let (mut a, b) = tokio::io::duplex(64);
        let bytes = [
            encode(&GuestMsg::Ready { version: 7 }),
            encode(&GuestMsg::Pong { seq: 9 }),
        ]
        .concat();
        let writer = tokio::spawn(async move {
            for byte in bytes {
                a.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut r = FramedReader::wire(b, 3);
        assert_eq!(
            r.next_message::<GuestMsg>().await.unwrap(),
            Some(GuestMsg::Ready { version: 7 })
        );
        assert_eq!(
            r.next_message::<GuestMsg>().await.unwrap(),
            Some(GuestMsg::Pong { seq: 9 })
        );
        writer.await.unwrap();
        assert!(r.next_message::<GuestMsg>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversize_wire_frame_ends_the_stream_unbuffered() {
        let (mut a, b) = tokio::io::duplex(1024);
        let len = (gondolin_wire::MAX_FRAME as u32 + 1).to_be_bytes();
        a.write_all(&len).await.unwrap();
        let mut r = FramedReader::wire(b, 1024);
        let err = r.next_message::<GuestMsg>().await.unwrap_err();
        assert!(
            matches!(err, ReadError::Wire(WireError::FrameTooLarge(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn queued_items_share_one_write_up_to_the_batch_limit() {
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        for i in 0..10u8 {
            tx.send(vec![i; 100]).unwrap();
        }
        drop(tx);
        let mut out = CountingWriter::default();
        write_coalesced(&mut out, rx, 250, |f: &Vec<u8>, b| b.extend_from_slice(f))
            .await
            .unwrap();
        assert_eq!(out.bytes.len(), 1000);
        assert_eq!(out.bytes[999], 9, "order kept");
        // 300 bytes per write: a batch takes items until it reaches 250.
        assert_eq!(out.writes, 4);
    }

    #[tokio::test]
    async fn a_failed_write_is_returned() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        tx.send(vec![1]).await.unwrap();
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        let r = write_coalesced(a, rx, 64, |f: &Vec<u8>, b| b.extend_from_slice(f)).await;
        assert!(r.is_err());
    }

    /// Records how many writes the bytes came in.
    #[derive(Default)]
    struct CountingWriter {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for CountingWriter {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }
}
