//! [`GuestConnector`] for a running VM: the stack's [`Dialer`] plus the
//! one guest setting that lets a loopback destination in from eth0.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::control::ControlClient;
use crate::control::{ExecEvent, ExecRequest};
use crate::net::dial::{BoxStream, Dialer, GuestConnector};

/// The guest sysctls set before the first dial: `route_localnet` accepts
/// `127.0.0.0/8` destinations on eth0 (and answers from them);
/// `arp_announce=2` makes the ARP request for the gateway, which a
/// resumed guest must send before its first answer, carry eth0's address
/// rather than 127.0.0.1 (a source smoltcp rightly ignores).
const SYSCTLS: &str = "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet && \
     echo 2 > /proc/sys/net/ipv4/conf/eth0/arp_announce";

pub(super) struct VmConnector {
    pub dialer: Dialer,
    pub control: ControlClient,
    /// Set once per guest; a failure is retried on the next dial.
    pub localnet: OnceCell<()>,
}

impl VmConnector {
    pub fn new(dialer: Dialer, control: ControlClient) -> Arc<Self> {
        Arc::new(VmConnector {
            dialer,
            control,
            localnet: OnceCell::new(),
        })
    }

    async fn enable_localnet(&self) -> io::Result<()> {
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), SYSCTLS.into()],
            ..Default::default()
        };
        let mut h = self
            .control
            .exec(&req)
            .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e.to_string()))?;
        let wait = async {
            while let Some(batch) = h.next_batch(1 << 16).await {
                for ev in batch {
                    match ev {
                        ExecEvent::Exit { exit_code: 0, .. } => return Ok(()),
                        ExecEvent::Exit { exit_code, .. } => {
                            return Err(io::Error::other(format!(
                                "setting eth0's route_localnet in the guest failed (exit {exit_code})"
                            )))
                        }
                        ExecEvent::Failed { message, .. } => {
                            return Err(io::Error::new(io::ErrorKind::NotConnected, message))
                        }
                        _ => {}
                    }
                }
            }
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the VM is gone",
            ))
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the guest did not answer"))?
    }
}

#[async_trait::async_trait]
impl GuestConnector for VmConnector {
    async fn connect(&self, port: u16, timeout: Duration) -> io::Result<BoxStream> {
        self.localnet
            .get_or_try_init(|| self.enable_localnet())
            .await?;
        let s = self.dialer.dial(port, timeout).await?;
        Ok(Box::new(s))
    }
}
