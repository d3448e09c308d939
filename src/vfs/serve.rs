//! The fs RPC on the wire: frames from sandboxfs in, responses and
//! invalidations out. Requests run concurrently (at most
//! [`MAX_IN_FLIGHT`]); one writer task batches everything going back.

use std::sync::Arc;

use gondolin_wire::fs::{errno, FsGuestMsg, FsHostMsg, FsResponse, FS_PROTOCOL_VERSION};
use gondolin_wire::{encode_into, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use super::server::FsServer;

/// Requests served concurrently per VM.
pub const MAX_IN_FLIGHT: usize = 256;

/// Serve the guest's fs port on `stream` until it closes. Requests run
/// concurrently; responses and invalidations share one writer.
pub async fn serve<S>(server: Arc<FsServer>, stream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<FsHostMsg>();
    server.set_notifier(Some(tx.clone()));
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256 * 1024);
        while let Some(msg) = rx.recv().await {
            buf.clear();
            encode_into(&msg, &mut buf);
            // Batch whatever else is ready into the same write.
            while buf.len() < 1 << 20 {
                match rx.try_recv() {
                    Ok(m) => encode_into(&m, &mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut dec = FrameDecoder::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut greeted = false;
    let result = 'outer: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        dec.push(&chunk[..n]);
        loop {
            let msg = match dec.next_message::<FsGuestMsg>() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "gondolin::vfs", "closing the fs port: {e}");
                    break 'outer Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ));
                }
            };
            match msg {
                FsGuestMsg::Hello { version } => {
                    if version != FS_PROTOCOL_VERSION {
                        tracing::warn!(target: "gondolin::vfs", version, "sandboxfs speaks another fs protocol version");
                        break 'outer Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("sandboxfs fs protocol {version}, host {FS_PROTOCOL_VERSION}"),
                        ));
                    }
                    greeted = true;
                }
                FsGuestMsg::Request(req) if greeted => {
                    let permit = match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break 'outer Ok(()),
                    };
                    let server = server.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let resp = server.handle_request(req).await;
                        let _ = tx.send(FsHostMsg::Response(resp));
                        drop(permit);
                    });
                }
                FsGuestMsg::Request(req) => {
                    let _ = tx.send(FsHostMsg::Response(FsResponse {
                        id: req.id,
                        result: Err(errno::EIO),
                    }));
                }
            }
        }
    };
    server.set_notifier(None);
    drop(tx);
    let _ = writer.await;
    result
}
