//! The attach protocol's framing: one message per `\n`-terminated line,
//! bounded before it is buffered. Sans-IO ([`LineDecoder`]) so the bound is
//! tested without sockets; [`LineReader`] drives it from a stream.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line accepted, in bytes, without its `\n` (as the JS server had).
pub const MAX_LINE: usize = 1024 * 1024;

/// A line longer than the bound: the connection cannot resynchronise
/// safely, so the server reports `payload_too_large` and hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message line exceeds {max} bytes")]
pub struct LineTooLong {
    pub max: usize,
}

/// Splits bytes into lines, refusing a line as soon as it passes `max`
/// bytes (a peer cannot make us buffer more by never sending `\n`).
#[derive(Debug)]
pub struct LineDecoder {
    buf: BytesMut,
    /// Bytes of `buf` already searched for `\n`.
    scanned: usize,
    max: usize,
    failed: bool,
}

impl LineDecoder {
    pub fn new(max: usize) -> Self {
        LineDecoder {
            buf: BytesMut::new(),
            scanned: 0,
            max,
            failed: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete line without its `\n`; `Ok(None)` until one is
    /// complete. After an error it keeps failing (fail closed).
    pub fn next_line(&mut self) -> Result<Option<Bytes>, LineTooLong> {
        if self.failed {
            return Err(LineTooLong { max: self.max });
        }
        let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        match found {
            Some(i) if self.scanned + i <= self.max => {
                let mut line = self.buf.split_to(self.scanned + i + 1);
                line.truncate(line.len() - 1);
                self.scanned = 0;
                Ok(Some(line.freeze()))
            }
            None if self.buf.len() <= self.max => {
                self.scanned = self.buf.len();
                Ok(None)
            }
            _ => {
                self.failed = true;
                self.buf = BytesMut::new();
                Err(LineTooLong { max: self.max })
            }
        }
    }

    /// Where the next read should go (the reader fills it in place).
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// What ended a [`LineReader`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    TooLong(#[from] LineTooLong),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Lines from a stream through a [`LineDecoder`]. `next_line` is
/// cancel-safe: a line partly read when the future is dropped stays
/// buffered for the next call.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    dec: LineDecoder,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            dec: LineDecoder::new(max),
        }
    }

    /// The next line; `Ok(None)` at end of stream (an unterminated last
    /// line is dropped, as the JS reader did).
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(line) = self.dec.next_line()? {
                return Ok(Some(line));
            }
            let buf = self.dec.buffer();
            buf.reserve(64 * 1024);
            if self.inner.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Read and discard until the peer closes (after a refusal, so the
    /// peer's unread bytes do not turn into a reset before it read ours).
    pub async fn discard_to_end(&mut self) {
        let mut sink = [0u8; 16 * 1024];
        while let Ok(n) = self.inner.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    }
}
