//! Length-prefixed framing. Pure functions over bytes; no I/O.

use serde::{de::DeserializeOwned, Serialize};

use crate::{WireError, MAX_FRAME};

/// Encode `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(msg, &mut out);
    out
}

/// Append one frame for `msg` to `out`.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    let mut buf = std::mem::take(out);
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    // Serializing our own message types into a Vec cannot fail: they hold
    // only integers, strings, byte strings, options, sequences and enums.
    let mut buf = postcard::to_extend(msg, buf).expect("postcard encode of a wire message");
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    *out = buf;
}

/// Decode one frame body (without its length prefix).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    if body.len() > MAX_FRAME {
        return Err(WireError::FrameTooLarge(body.len()));
    }
    postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Incremental frame splitter: push bytes as they arrive, pop whole frames.
///
/// Memory is bounded by the frame limit (`MAX_FRAME` unless built with
/// [`skipping_oversize`](Self::skipping_oversize)) plus one read's worth of
/// bytes: an oversized length prefix is dealt with before any of its body
/// is kept.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
    max: usize,
    /// Oversize frames are skipped (`true`) or an error (`false`).
    skip_oversize: bool,
    /// Body bytes of a skipped frame still to come.
    skipping: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max: MAX_FRAME,
            skip_oversize: false,
            skipping: 0,
        }
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Same framing, but a frame longer than `max` is dropped without being
    /// buffered and comes back as one empty body, keeping the stream in
    /// sync. For links where one bad frame is not the end of the peer
    /// (QEMU's stream netdev: a frame over the MTU is lost, not fatal).
    pub fn skipping_oversize(max: usize) -> Self {
        FrameDecoder {
            max,
            skip_oversize: true,
            ..Self::default()
        }
    }

    /// Append raw bytes read from the port.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.skipping > 0 {
            let n = self.skipping.min(bytes.len());
            self.skipping -= n;
            bytes = &bytes[n..];
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, WireError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 4 {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            if !self.skip_oversize {
                return Err(WireError::FrameTooLarge(len));
            }
            // Drop what is buffered of it; `push` drops the rest.
            let have = (avail.len() - 4).min(len);
            self.pos += 4 + have;
            self.skipping = len - have;
            return Ok(Some(&[]));
        }
        if avail.len() < 4 + len {
            self.compact();
            return Ok(None);
        }
        let start = self.pos + 4;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Decode the next complete message, if one is buffered.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        match self.next_frame()? {
            Some(body) => decode(body).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn compact(&mut self) {
        // Drop consumed bytes once they dominate, keeping pushes amortized O(n).
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn skipping_decoder_drops_an_oversize_frame_and_stays_in_sync() {
        let mut d = FrameDecoder::skipping_oversize(8);
        let bytes = [frame(&[7; 5000]), frame(b"ok")].concat();
        // In pieces, so the skipped body spans pushes.
        let mut out = Vec::new();
        for piece in bytes.chunks(300) {
            d.push(piece);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f.to_vec());
            }
            assert!(d.pending() <= 300, "the skipped body is never buffered");
        }
        assert_eq!(out, vec![Vec::new(), b"ok".to_vec()]);
    }

    #[test]
    fn default_decoder_refuses_an_oversize_frame() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(d.next_frame(), Err(WireError::FrameTooLarge(_))));
    }
}
