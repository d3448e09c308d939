//! The fs RPC on the wire: frames from sandboxfs in, responses and
//! invalidations out. Requests run concurrently (at most
//! [`MAX_IN_FLIGHT`]); one writer task batches everything going back.

use std::sync::Arc;

use gondolin_wire::encode_into;
use gondolin_wire::fs::{errno, FsGuestMsg, FsHostMsg, FsResponse, FS_PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};

use super::server::FsServer;
use crate::framed::{write_coalesced, FramedReader, ReadError};
use crate::log_limited;

/// Requests served concurrently per VM.
pub const MAX_IN_FLIGHT: usize = 256;

/// Serve the guest's fs port on `stream` until it closes. Requests run
/// concurrently; responses and invalidations share one writer.
pub async fn serve<S>(server: Arc<FsServer>, stream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel::<FsHostMsg>();
    server.set_notifier(Some(tx.clone()));
    // Responses and invalidations, batched up to 1 MiB per write.
    let writer = tokio::spawn(write_coalesced(wr, rx, 1 << 20, |m, buf| {
        encode_into(m, buf)
    }));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut frames = FramedReader::wire(rd, 256 * 1024);
    let mut greeted = false;
    let result = loop {
        let msg = match frames.next_message::<FsGuestMsg>().await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(ReadError::Io(e)) => break Err(e),
            Err(ReadError::Wire(e)) => {
                log_limited!(warn, target: "gondolin::vfs", "closing the fs port: {e}");
                break Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ));
            }
        };
        match msg {
            FsGuestMsg::Hello { version } => {
                if version != FS_PROTOCOL_VERSION {
                    log_limited!(warn, target: "gondolin::vfs", version, "sandboxfs speaks another fs protocol version");
                    break Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("sandboxfs fs protocol {version}, host {FS_PROTOCOL_VERSION}"),
                    ));
                }
                greeted = true;
            }
            FsGuestMsg::Request(req) if greeted => {
                let permit = match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
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
    };
    server.set_notifier(None);
    drop(tx);
    let _ = writer.await;
    result
}
