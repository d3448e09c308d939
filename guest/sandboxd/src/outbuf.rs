//! The guest -> host byte queue. Every frame sandboxd sends is appended here
//! in order and written to the port with as few `write`s as the port allows.
//!
//! Child output is read straight into this buffer behind a hand-built
//! `GuestMsg::Output` header, so output bytes are copied once (kernel pipe ->
//! here) before the port write; the header layout is pinned to
//! `gondolin_wire::encode` by the tests below.

use std::io;
use std::os::fd::BorrowedFd;

use gondolin_wire::{encode_into, GuestMsg, Stream};

use crate::sys;

/// Postcard variant index of `GuestMsg::Output`.
const OUTPUT_VARIANT: u8 = 1;
/// Longest header: 4-byte length, variant, u32 varint id, stream, u32 varint len.
const MAX_HEADER: usize = 4 + 1 + 5 + 1 + 5;
/// Once this many sent bytes sit at the front, shift the rest down.
const COMPACT_AT: usize = 256 * 1024;

#[derive(Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    /// Bytes before `pos` were already written to the port.
    pos: usize,
}

fn varint_len(mut v: u32) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut [std::mem::MaybeUninit<u8>], mut v: u32) -> usize {
    let mut i = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i].write(b);
            return i + 1;
        }
        out[i].write(b | 0x80);
        i += 1;
    }
}

impl OutBuf {
    /// Bytes queued but not yet written to the port.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn push(&mut self, msg: &GuestMsg) {
        encode_into(msg, &mut self.buf);
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Read at most `max` (> 0) bytes of `fd` and queue them as one Output
    /// frame. `Ok(0)` is end of file and queues nothing.
    pub fn read_output(
        &mut self,
        fd: BorrowedFd<'_>,
        id: u32,
        stream: Stream,
        max: usize,
    ) -> io::Result<usize> {
        let base = self.buf.len();
        self.buf.reserve(MAX_HEADER + max);
        let spare = &mut self.buf.spare_capacity_mut()[..MAX_HEADER + max];
        // The data goes after a header sized for `max`; if fewer bytes come,
        // their length varint may be shorter and the (then small: < 16 KiB)
        // data is shifted down to close the gap.
        let fixed = 1 + varint_len(id) + 1;
        let guess = varint_len(max as u32);
        let data_at = 4 + fixed + guess;
        let n = sys::read_uninit(fd, &mut spare[data_at..data_at + max])?;
        if n == 0 {
            return Ok(0);
        }
        let width = varint_len(n as u32);
        let gap = guess - width;
        if gap > 0 {
            spare.copy_within(data_at..data_at + n, data_at - gap);
        }
        let body = fixed + width + n;
        for (dst, b) in spare[..4].iter_mut().zip((body as u32).to_be_bytes()) {
            dst.write(b);
        }
        spare[4].write(OUTPUT_VARIANT);
        let mut at = 5 + put_varint(&mut spare[5..], id);
        spare[at].write(match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        });
        at += 1;
        at += put_varint(&mut spare[at..], n as u32);
        debug_assert_eq!(at, 4 + fixed + width);
        // SAFETY: bytes base..base+4+body are initialised: the header was
        // written just above and the n data bytes by read (then moved).
        unsafe { self.buf.set_len(base + 4 + body) };
        Ok(n)
    }

    /// Write as much as the port takes now. `Ok(true)` when nothing is left.
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while self.pos < self.buf.len() {
            match sys::write(fd, &self.buf[self.pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.pos == self.buf.len() {
            self.clear();
            return Ok(true);
        }
        if self.pos >= COMPACT_AT && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gondolin_wire::{encode, FrameDecoder};
    use std::os::fd::AsFd;

    #[test]
    fn output_frames_match_the_wire_encoding() {
        let ids = [0, 1, 127, 128, 16383, 16384, 1 << 21, u32::MAX];
        let cases = [
            (1, 1),
            (1, 65536),
            (127, 65536),
            (128, 128),
            (16383, 65536),
            (16384, 65536),
            (65536, 65536),
            (100, 4096),
        ];
        for id in ids {
            for (stream_n, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
                for (n, max) in cases {
                    let data: Vec<u8> = (0..n).map(|i| (i * 7 + stream_n) as u8).collect();
                    let (r, w) = sys::pipe().unwrap();
                    let writer = std::thread::spawn(move || {
                        let mut off = 0;
                        while off < data.len() {
                            off += sys::write(w.as_fd(), &data[off..]).unwrap();
                        }
                        data
                    });
                    let mut out = OutBuf::default();
                    out.push(&GuestMsg::Pong { seq: 3 });
                    let mut got = 0;
                    let before = out.buf.len();
                    // A pipe read may return less than written; loop like the server.
                    let mut frames = 0;
                    while got < n {
                        got += out.read_output(r.as_fd(), id, stream, max).unwrap();
                        frames += 1;
                    }
                    let data = writer.join().unwrap();
                    if frames == 1 {
                        let want = encode(&GuestMsg::Output {
                            id,
                            stream,
                            data: data.clone(),
                        });
                        assert_eq!(&out.buf[before..], &want[..], "id {id} n {n} max {max}");
                    }
                    let mut dec = FrameDecoder::new();
                    dec.push(&out.buf);
                    assert_eq!(
                        dec.next_message::<GuestMsg>().unwrap(),
                        Some(GuestMsg::Pong { seq: 3 })
                    );
                    let mut all = Vec::new();
                    while let Some(m) = dec.next_message::<GuestMsg>().unwrap() {
                        match m {
                            GuestMsg::Output {
                                id: i,
                                stream: s,
                                data,
                            } => {
                                assert_eq!((i, s), (id, stream));
                                all.extend_from_slice(&data);
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    assert_eq!(all, data);
                }
            }
        }
    }

    #[test]
    fn eof_queues_nothing() {
        let (r, w) = sys::pipe().unwrap();
        drop(w);
        let mut out = OutBuf::default();
        assert_eq!(
            out.read_output(r.as_fd(), 1, Stream::Stdout, 4096).unwrap(),
            0
        );
        assert_eq!(out.pending(), 0);
    }
}
