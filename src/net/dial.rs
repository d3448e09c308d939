//! Connections from the host into the guest: the transport of the ingress
//! gateway and of `enableSsh`.
//!
//! The host opens an ordinary TCP connection through the same smoltcp
//! stack that carries the guest's egress, from the gateway address to
//! `127.0.0.1:<port>` on the guest's eth0. The guest kernel accepts a
//! loopback destination arriving on eth0 only with
//! `net.ipv4.conf.eth0.route_localnet=1`, which the host sets (with
//! `arp_announce=2`, so the guest's ARP for the gateway carries eth0's
//! address, not 127.0.0.1) the first time it dials (see
//! `vm/guest_dial.rs`), so a server that listens on
//! the guest's loopback only (sshd as configured by `enableSsh`, most dev
//! servers) is reachable, and nothing in the guest listens for the host.
//! This path needs no extra guest daemon and moves bytes at the speed of
//! the guest's egress (the same stack), where a virtio-serial forwarder
//! multiplexed with exec tops out near exec's stdout rate.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::FlowStream;

/// A byte stream both ways; `shutdown` is a half-close (FIN).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxStream = Box<dyn ByteStream>;

/// Opens TCP connections to the guest's loopback.
#[async_trait::async_trait]
pub trait GuestConnector: Send + Sync {
    /// A connection to `127.0.0.1:port` in the guest. Errors:
    /// `ConnectionRefused` (nothing listens: the guest answered RST),
    /// `TimedOut` (no answer within `timeout`), `WouldBlock` (the VM has
    /// [`MAX_DIALS`] host-opened connections open), `NotConnected` (the
    /// VM is gone).
    async fn connect(&self, port: u16, timeout: Duration) -> io::Result<BoxStream>;
}

/// Host-opened connections one VM may have open at once; more fail with
/// `WouldBlock` instead of using host memory (each costs two 256 KiB
/// socket buffers in the stack).
pub const MAX_DIALS: usize = 256;

/// A request to the stack loop: open a connection, answer on `reply`.
#[derive(Debug)]
pub struct DialRequest {
    pub port: u16,
    pub reply: oneshot::Sender<io::Result<FlowStream>>,
}

/// The host end of a VM's dial channel. Cloned into the VM's config; the
/// stack loop of the running QEMU holds the receiver (a relaunch, as after
/// a failed template resume, takes it over when the old loop ended).
#[derive(Clone)]
pub struct Dialer {
    tx: mpsc::Sender<DialRequest>,
    rx: Arc<Mutex<mpsc::Receiver<DialRequest>>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

impl Default for Dialer {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(64);
        Dialer {
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }
}

impl Dialer {
    /// The receiving end, for the stack loop (held while it runs).
    pub(crate) fn receiver(&self) -> Arc<Mutex<mpsc::Receiver<DialRequest>>> {
        self.rx.clone()
    }

    /// Ask the stack for a connection to the guest's `127.0.0.1:port`.
    pub async fn dial(&self, port: u16, timeout: Duration) -> io::Result<FlowStream> {
        if port == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid guest port: 0",
            ));
        }
        let (reply, answer) = oneshot::channel();
        let gone = || io::Error::new(io::ErrorKind::NotConnected, "the VM's network is gone");
        self.tx
            .send(DialRequest { port, reply })
            .await
            .map_err(|_| gone())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("guest port {port} did not answer within {timeout:?}"),
            )),
        }
    }
}
