//! QEMU's stream netdev framing: `u32be length || Ethernet frame`.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Read one frame. `Ok(None)` at a clean end of stream. A frame longer
/// than `max` is read and discarded (the stream stays in sync) and comes
/// back as an empty vector.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        // Skip it without allocating what the guest asked for.
        let mut left = n as u64;
        let mut sink = [0u8; 2048];
        while left > 0 {
            let take = left.min(sink.len() as u64) as usize;
            r.read_exact(&mut sink[..take]).await?;
            left -= take as u64;
        }
        return Ok(Some(Vec::new()));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
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
        let (mut a, mut b) = tokio::io::duplex(64);
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
        assert_eq!(read_frame(&mut b, 100).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut b, 100).await.unwrap().unwrap(), b"abc");
        writer.await.unwrap();
        assert!(read_frame(&mut b, 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversize_frames_are_skipped_not_buffered() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            encode_frame(&mut buf, &[7u8; 5000]);
            encode_frame(&mut buf, b"ok");
            a.write_all(&buf).await.unwrap();
        });
        assert!(read_frame(&mut b, 1522).await.unwrap().unwrap().is_empty());
        assert_eq!(read_frame(&mut b, 1522).await.unwrap().unwrap(), b"ok");
    }
}
