//! QEMU's stream netdev framing: `u32be length || Ethernet frame`.

use gondolin_wire::FrameDecoder;
use tokio::io::AsyncRead;

use crate::framed::FramedReader;

/// Bytes asked of the socket per read: a few full-MTU frames.
const READ_CHUNK: usize = 256 * 1024;

/// A reader of the guest's frames. A frame longer than `max` is dropped
/// unbuffered (the stream stays in sync) and comes back as an empty
/// vector.
pub fn reader<R: AsyncRead + Unpin>(r: R, max: usize) -> FramedReader<R, FrameDecoder> {
    FramedReader::new(r, FrameDecoder::skipping_oversize(max), READ_CHUNK)
}

/// The next frame from [`reader`]; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    frames: &mut FramedReader<R, FrameDecoder>,
) -> Result<Option<Vec<u8>>, crate::framed::ReadError> {
    frames.next(|f| Ok(f.to_vec())).await
}

/// Append one frame, length prefix first, to an outgoing buffer (the
/// stack batches many frames into one write).
pub fn encode_frame(buf: &mut Vec<u8>, frame: &[u8]) {
    buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    buf.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn partial_writes_reassemble() {
        let (mut a, b) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&5u32.to_be_bytes());
            bytes.extend_from_slice(b"hello");
            bytes.extend_from_slice(&3u32.to_be_bytes());
            bytes.extend_from_slice(b"abc");
            // One byte at a time: the reader must reassemble.
            for byte in bytes {
                a.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut frames = reader(b, 100);
        assert_eq!(read_frame(&mut frames).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut frames).await.unwrap().unwrap(), b"abc");
        writer.await.unwrap();
        assert!(read_frame(&mut frames).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_frames_are_skipped_not_buffered() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            encode_frame(&mut buf, &[7u8; 5000]);
            encode_frame(&mut buf, b"ok");
            a.write_all(&buf).await.unwrap();
        });
        let mut frames = reader(b, 1522);
        assert!(read_frame(&mut frames).await.unwrap().unwrap().is_empty());
        assert_eq!(read_frame(&mut frames).await.unwrap().unwrap(), b"ok");
    }
}
