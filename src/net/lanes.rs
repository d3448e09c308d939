//! Lanes: host services for the guest's own daemons, reached over the NIC.
//!
//! A lane is a TCP port on the gateway address (`gondolin_wire::ports::LANES`)
//! that the host expects exactly one connection on. The first flow to an
//! expected port is handed to whoever asked for it; any later flow, or a flow
//! to a lane nobody expects, is reset. Guest daemons connect before any user
//! command runs, so a guest program cannot take a lane's place.
//! Every other flow goes to the wrapped handler (the HTTP bridge).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gondolin_wire::ports::{LANES, LANE_HOST};
use tokio::sync::oneshot;

use super::flow::{Flow, FlowHandler, FlowStream};

pub struct Lanes {
    waiting: Mutex<HashMap<u16, oneshot::Sender<FlowStream>>>,
    inner: Arc<dyn FlowHandler>,
}

impl Lanes {
    pub fn new(inner: Arc<dyn FlowHandler>) -> Arc<Lanes> {
        Arc::new(Lanes {
            waiting: Mutex::new(HashMap::new()),
            inner,
        })
    }

    /// Expect one connection on lane `port`; the receiver yields its stream.
    pub fn expect(&self, port: u16) -> oneshot::Receiver<FlowStream> {
        assert!(LANES.contains(&port), "lane {port} outside {LANES:?}");
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(port, tx);
        rx
    }
}

impl FlowHandler for Lanes {
    fn handle(&self, flow: Flow) {
        let port = flow.dst.port();
        if flow.dst.ip().octets() != LANE_HOST || !LANES.contains(&port) {
            return self.inner.handle(flow);
        }
        let taker = self.waiting.lock().unwrap().remove(&port);
        match taker {
            Some(tx) => {
                if let Err(stream) = tx.send(flow.stream) {
                    stream.reset();
                }
            }
            None => {
                tracing::debug!(target: "gondolin::net", "unexpected flow to lane {port}: reset");
                flow.stream.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::atomic::Ordering;

    use tokio::sync::Notify;

    use super::*;
    use crate::net::flow::{pair, FlowPeer};

    /// Counts the flows it is handed.
    #[derive(Default)]
    struct Inner(Mutex<Vec<SocketAddrV4>>);
    impl FlowHandler for Inner {
        fn handle(&self, flow: Flow) {
            self.0.lock().unwrap().push(flow.dst);
        }
    }

    fn flow(ip: [u8; 4], port: u16) -> (Flow, FlowPeer) {
        let (stream, peer) = pair(Arc::new(Notify::new()));
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 168, 127, 3), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::from(ip), port);
        (Flow { src, dst, stream }, peer)
    }

    #[tokio::test]
    async fn one_connection_per_expected_lane_and_resets_for_the_rest() {
        let inner = Arc::new(Inner::default());
        let lanes = Lanes::new(inner.clone());
        let fs = lanes.expect(9001);

        // The first flow to the lane is handed over, intact.
        let (f, first) = flow(LANE_HOST, 9001);
        lanes.handle(f);
        let _stream = fs.await.expect("the lane's stream");
        assert!(!first.shared.reset.load(Ordering::Acquire));

        // A second flow to the same lane, and one to a lane nobody
        // expects, are reset and never reach the bridge.
        for port in [9001, 9005] {
            let (f, peer) = flow(LANE_HOST, port);
            lanes.handle(f);
            assert!(peer.shared.reset.load(Ordering::Acquire), "port {port}");
        }

        // Other ports on the gateway, and other hosts on lane ports, go on
        // to the wrapped handler.
        let (f, _a) = flow(LANE_HOST, 80);
        lanes.handle(f);
        let (f, _b) = flow([10, 0, 0, 1], 9001);
        lanes.handle(f);
        let seen = inner.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                SocketAddrV4::new(Ipv4Addr::from(LANE_HOST), 80),
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 9001)
            ]
        );
    }

    #[tokio::test]
    async fn a_lane_whose_taker_left_resets_the_flow() {
        let lanes = Lanes::new(Arc::new(Inner::default()));
        drop(lanes.expect(9002));
        let (f, peer) = flow(LANE_HOST, 9002);
        lanes.handle(f);
        assert!(peer.shared.reset.load(Ordering::Acquire));
    }
}
