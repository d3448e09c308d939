//! A host TCP listener whose connections are piped to one guest port (the
//! transport of `enableSsh`; upstream's "host TCP forwarder").
//!
//! Each accepted connection gets its own guest connection
//! ([`GuestConnector`]) and bytes are copied both ways with half-close.
//! At most [`MAX_CONNECTIONS`] run at once; more wait in the kernel's
//! accept backlog, so a client flood cannot use more host fds than that.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::dial::GuestConnector;

/// Connections piped at once per forwarder.
pub const MAX_CONNECTIONS: usize = 64;
/// How long the guest may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running forwarder; stops on [`PortForward::close`] or drop.
pub struct PortForward {
    local: SocketAddr,
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl std::fmt::Debug for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForward")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl PortForward {
    /// Listen on `listen` (port 0: an ephemeral port) and pipe every
    /// connection to the guest's `127.0.0.1:guest_port`.
    pub async fn start(
        listen: SocketAddr,
        connector: Arc<dyn GuestConnector>,
        guest_port: u16,
    ) -> io::Result<PortForward> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, connector, guest_port));
        Ok(PortForward {
            local,
            tasks: Mutex::new(Some(tasks)),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stop listening and end every piped connection. Idempotent.
    pub fn close(&self) {
        // Dropping the JoinSet aborts the accept loop, which owns the
        // connections' JoinSet in turn.
        drop(self.tasks.lock().unwrap().take());
    }

    /// [`PortForward::close`], resolving once the listening socket is
    /// closed (until then the kernel still completes handshakes).
    pub async fn shutdown(&self) {
        let tasks = self.tasks.lock().unwrap().take();
        if let Some(mut tasks) = tasks {
            tasks.shutdown().await;
        }
    }
}

async fn accept_loop(listener: TcpListener, connector: Arc<dyn GuestConnector>, guest_port: u16) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Reap finished connections while idle.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((mut client, _)) = accepted else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let connector = connector.clone();
        conns.spawn(async move {
            let _permit = permit;
            let Ok(mut guest) = connector.connect(guest_port, CONNECT_TIMEOUT).await else {
                return; // the client sees the connection close
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dial::BoxStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Dials a host-loopback echo server instead of a guest.
    struct Loopback(SocketAddr);
    #[async_trait::async_trait]
    impl GuestConnector for Loopback {
        async fn connect(&self, _port: u16, _t: Duration) -> io::Result<BoxStream> {
            Ok(Box::new(tokio::net::TcpStream::connect(self.0).await?))
        }
    }

    #[tokio::test]
    async fn pipes_both_ways_with_half_close_and_stops_on_close() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let fwd = PortForward::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Loopback(echo_addr)),
            22,
        )
        .await
        .unwrap();
        let mut c = tokio::net::TcpStream::connect(fwd.local_addr())
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap(); // half-close: the echo still comes back
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        fwd.close();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(fwd.local_addr())
            .await
            .is_err());
    }
}
