//! The stack loop: frames in from QEMU, smoltcp in the middle, flows out to
//! the handler.
//!
//! [`Stack`] is the synchronous core (tests drive it with a fake clock);
//! [`run`] ties it to the QEMU socket and the flow channels.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, Icmpv4Packet,
    Icmpv4Repr, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket,
    UdpRepr,
};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

use super::device::QueueDevice;
use super::dial::{DialRequest, MAX_DIALS};
use super::dns::{DnsAction, DnsServer};
use super::flow::{self, Flow, FlowHandler, FlowPeer, FlowStream, CHUNK};
use super::{dhcp, link, NetConfig, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, MAX_FRAME, PREFIX_LEN};
use crate::framed::write_coalesced;

/// Per-flow socket buffers. 256 KiB lets the window scale past 64 KiB.
const SOCKET_BUFFER: usize = 256 * 1024;
/// Half-open flows (SYN seen, handshake not done) allowed at once: a SYN
/// flood costs at most this many socket buffers.
const MAX_PENDING: usize = 64;
/// Forwarded DNS queries in flight; more are dropped (the guest retries).
const MAX_DNS_IN_FLIGHT: usize = 64;
/// Drop a flow that stops acknowledging for this long.
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);
/// Stop feeding flows while this many frames wait for QEMU.
const TX_BACKLOG: usize = 512;
/// Frames in flight to the writer task.
const OUT_FRAMES: usize = 1024;
/// Local ports of host-opened connections (`dial`), the IANA dynamic range.
const DIAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// How long forwarded DNS waits for an answer.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counters for one VM's network, readable while it runs.
#[derive(Debug, Default)]
pub struct NetStats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub flows_opened: AtomicU64,
    /// SYNs refused because the VM had `max_flows` open.
    pub flows_refused: AtomicU64,
    /// Host-opened connections into the guest (ingress, `enableSsh`).
    pub dials: AtomicU64,
    pub dns_queries: AtomicU64,
    /// UDP to ports other than 53 and 67, and non-IPv4 frames.
    pub dropped: AtomicU64,
}

enum FlowState {
    /// Listening for (or mid-way through) the handshake.
    Pending,
    /// A host-opened connection waiting for the guest's SYN-ACK; the
    /// stream goes to `reply` once established (an RST answers refused).
    Dialing {
        reply: tokio::sync::oneshot::Sender<std::io::Result<FlowStream>>,
    },
    Open {
        /// `None` once the guest's FIN reached the handler.
        to_handler: Option<mpsc::Sender<Bytes>>,
        from_handler: mpsc::Receiver<Bytes>,
        shared: Arc<flow::FlowShared>,
        /// Bytes taken from the handler, not yet in the socket.
        pending: Bytes,
        /// The handler finished writing; FIN once `pending` drains.
        handler_done: bool,
    },
}

struct FlowEntry {
    /// The initiator's end: the guest's for its flows, ours for dials.
    src: SocketAddrV4,
    dst: SocketAddrV4,
    state: FlowState,
    /// Opened by the host (`dial`), not by the guest.
    dialed: bool,
}

/// Something [`Stack`] wants done outside itself.
#[derive(Debug)]
pub enum Effect {
    /// Send this DNS query to `server` and inject the answer as coming
    /// from `reply_from` to the guest's `reply_to`.
    Dns {
        query: Vec<u8>,
        server: SocketAddrV4,
        reply_from: SocketAddrV4,
        reply_to: SocketAddrV4,
    },
}

pub struct Stack {
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
    flows: HashMap<SocketHandle, FlowEntry>,
    tuples: HashMap<(SocketAddrV4, SocketAddrV4), SocketHandle>,
    cfg: NetConfig,
    dns: Arc<DnsServer>,
    handler: Arc<dyn FlowHandler>,
    wake: Arc<Notify>,
    stats: Arc<NetStats>,
    guest_mac: EthernetAddress,
    effects: Vec<Effect>,
    /// The next local port a dial tries.
    next_dial_port: u16,
}

impl Stack {
    pub fn new(
        cfg: NetConfig,
        dns: Arc<DnsServer>,
        handler: Arc<dyn FlowHandler>,
        stats: Arc<NetStats>,
        wake: Arc<Notify>,
        now: Instant,
    ) -> Stack {
        let mut dev = QueueDevice::default();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        let mut iface = Interface::new(config, &mut dev, now);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(GATEWAY_IP.into(), PREFIX_LEN));
        });
        // Any-IP: accept packets for every destination routed via ourselves.
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_IP);
        // Dials go to the guest's loopback, through the guest (see `dial`).
        iface.routes_mut().update(|r| {
            let _ = r.push(smoltcp::iface::Route {
                cidr: IpCidr::new(Ipv4Addr::new(127, 0, 0, 0).into(), 8),
                via_router: GUEST_IP.into(),
                preferred_until: None,
                expires_at: None,
            });
        });
        iface.set_any_ip(true);
        Stack {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            flows: HashMap::new(),
            tuples: HashMap::new(),
            cfg,
            dns,
            handler,
            wake,
            stats,
            guest_mac: EthernetAddress(super::GUEST_MAC),
            effects: Vec::new(),
            next_dial_port: *DIAL_PORTS.start(),
        }
    }

    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    /// Take one frame from the guest.
    pub fn ingest(&mut self, frame: Vec<u8>) {
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        if let Some(frame) = self.intercept(frame) {
            self.dev.rx.push_back(frame);
        }
    }

    /// Frames for the guest, oldest first.
    pub fn take_tx(&mut self) -> Option<Vec<u8>> {
        let f = self.dev.tx.pop_front();
        if f.is_some() {
            self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        f
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Run smoltcp and move bytes between sockets and flows. Returns when
    /// smoltcp next wants to be polled.
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        for _ in 0..4 {
            self.iface.poll(now, &mut self.dev, &mut self.sockets);
            if !self.service_flows() {
                break;
            }
        }
        self.iface.poll_delay(now, &self.sockets)
    }

    /// Handle what smoltcp shouldn't see; give back what it should.
    fn intercept(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        let eth = EthernetFrame::new_checked(&frame[..]).ok()?;
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                return Some(frame);
            }
            EthernetProtocol::Ipv4 => {}
            _ => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        if self.guest_mac != eth.src_addr() && eth.src_addr().is_unicast() {
            self.guest_mac = eth.src_addr();
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if !ip.verify_checksum() || ip.more_frags() || ip.frag_offset() != 0 {
            return None;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        match ip.next_header() {
            IpProtocol::Tcp => {
                let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
                if tcp.syn() && !tcp.ack() {
                    let s = SocketAddrV4::new(src, tcp.src_port());
                    let d = SocketAddrV4::new(dst, tcp.dst_port());
                    self.prepare_listener(s, d);
                }
                Some(frame)
            }
            IpProtocol::Udp => {
                let udp = UdpPacket::new_checked(ip.payload()).ok()?;
                let s = SocketAddrV4::new(src, udp.src_port());
                let d = SocketAddrV4::new(dst, udp.dst_port());
                let payload = udp.payload().to_vec();
                match udp.dst_port() {
                    67 => self.dhcp(&payload),
                    53 => self.dns(&payload, s, d),
                    _ => {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None
            }
            IpProtocol::Icmp => {
                let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
                let caps = ChecksumCapabilities::default();
                if let Ok(Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                }) = Icmpv4Repr::parse(&icmp, &caps)
                {
                    let reply = Icmpv4Repr::EchoReply {
                        ident,
                        seq_no,
                        data,
                    };
                    let mut body = vec![0u8; reply.buffer_len()];
                    reply.emit(&mut Icmpv4Packet::new_unchecked(&mut body[..]), &caps);
                    self.emit_ip(dst, src, IpProtocol::Icmp, &body, None);
                }
                None
            }
            _ => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Make sure a listening socket exists for a new SYN's exact tuple.
    fn prepare_listener(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        if self.tuples.contains_key(&(src, dst)) {
            return; // a retransmitted SYN
        }
        let pending = self
            .flows
            .values()
            .filter(|f| matches!(f.state, FlowState::Pending))
            .count();
        let guest_flows = self.flows.values().filter(|f| !f.dialed).count();
        if guest_flows >= self.cfg.max_flows || pending >= MAX_PENDING {
            // No socket: smoltcp answers the SYN with an RST.
            self.stats.flows_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut sock = flow_socket();
        let ep = IpListenEndpoint {
            addr: Some((*dst.ip()).into()),
            port: dst.port(),
        };
        if sock.listen(ep).is_err() {
            return;
        }
        let h = self.sockets.add(sock);
        self.tuples.insert((src, dst), h);
        self.flows.insert(
            h,
            FlowEntry {
                src,
                dst,
                state: FlowState::Pending,
                dialed: false,
            },
        );
    }

    /// Open a connection from the gateway to `127.0.0.1:req.port` in the
    /// guest (see `net::dial`). The answer goes to `req.reply` once the
    /// guest accepts or refuses; at most [`MAX_DIALS`] at once.
    pub fn dial(&mut self, req: DialRequest) {
        let DialRequest { port, reply } = req;
        let refuse = |reply: tokio::sync::oneshot::Sender<_>, kind, msg: &str| {
            let _ = reply.send(Err(std::io::Error::new(kind, msg.to_string())));
        };
        if self.flows.values().filter(|f| f.dialed).count() >= MAX_DIALS {
            return refuse(
                reply,
                std::io::ErrorKind::WouldBlock,
                "too many host connections into the guest",
            );
        }
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let Some(src) = self.free_dial_port(dst) else {
            return refuse(
                reply,
                std::io::ErrorKind::AddrNotAvailable,
                "no free local port",
            );
        };
        let mut sock = flow_socket();
        let cx = self.iface.context();
        if let Err(e) = sock.connect(cx, (*dst.ip(), dst.port()), (*src.ip(), src.port())) {
            return refuse(reply, std::io::ErrorKind::InvalidInput, &e.to_string());
        }
        self.stats.dials.fetch_add(1, Ordering::Relaxed);
        let h = self.sockets.add(sock);
        self.tuples.insert((src, dst), h);
        self.flows.insert(
            h,
            FlowEntry {
                src,
                dst,
                state: FlowState::Dialing { reply },
                dialed: true,
            },
        );
    }

    fn free_dial_port(&mut self, dst: SocketAddrV4) -> Option<SocketAddrV4> {
        for _ in DIAL_PORTS {
            let p = self.next_dial_port;
            self.next_dial_port = if p == *DIAL_PORTS.end() {
                *DIAL_PORTS.start()
            } else {
                p + 1
            };
            let src = SocketAddrV4::new(GATEWAY_IP, p);
            if !self.tuples.contains_key(&(src, dst)) {
                return Some(src);
            }
        }
        None
    }

    fn dhcp(&mut self, payload: &[u8]) {
        let servers = match self.dns.config().mode {
            super::dns::DnsMode::Open => self.dns.config().servers.clone(),
            _ => vec![GATEWAY_IP],
        };
        if let Some(r) = dhcp::handle(payload, &servers) {
            let mac = if r.broadcast {
                EthernetAddress::BROADCAST
            } else {
                EthernetAddress(r.client_mac)
            };
            let from = SocketAddrV4::new(GATEWAY_IP, 67);
            let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
            self.emit_udp(from, to, &r.payload, Some(mac));
        }
    }

    fn dns(&mut self, payload: &[u8], src: SocketAddrV4, dst: SocketAddrV4) {
        self.stats.dns_queries.fetch_add(1, Ordering::Relaxed);
        match self.dns.handle(payload, *dst.ip()) {
            DnsAction::Reply(r) => self.emit_udp(dst, src, &r, None),
            DnsAction::Forward(server) => self.effects.push(Effect::Dns {
                query: payload.to_vec(),
                server,
                reply_from: dst,
                reply_to: src,
            }),
            DnsAction::Drop => {}
        }
    }

    /// Queue a UDP datagram to the guest.
    pub fn emit_udp(
        &mut self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
        mac: Option<EthernetAddress>,
    ) {
        let frame = udp_frame(from, to, payload, mac.unwrap_or(self.guest_mac));
        self.dev.tx.push_back(frame);
    }

    fn emit_ip(
        &mut self,
        from: Ipv4Addr,
        to: Ipv4Addr,
        proto: IpProtocol,
        body: &[u8],
        mac: Option<EthernetAddress>,
    ) {
        let frame = ip_frame(from, to, proto, body, mac.unwrap_or(self.guest_mac));
        self.dev.tx.push_back(frame);
    }

    /// Move bytes both ways; hand established flows to the handler; drop
    /// closed ones. True if any bytes moved (worth another smoltcp poll).
    fn service_flows(&mut self) -> bool {
        let mut moved = false;
        let mut gone = Vec::new();
        let feed = self.dev.tx.len() < TX_BACKLOG;
        for (h, entry) in self.flows.iter_mut() {
            let sock = self.sockets.get_mut::<tcp::Socket>(*h);
            let state = sock.state();
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                if let FlowState::Dialing { .. } = entry.state {
                    let FlowState::Dialing { reply } =
                        std::mem::replace(&mut entry.state, FlowState::Pending)
                    else {
                        unreachable!()
                    };
                    let _ = reply.send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!(
                            "nothing listens on the guest's 127.0.0.1:{}",
                            entry.dst.port()
                        ),
                    )));
                }
                gone.push(*h);
                continue;
            }
            if let FlowState::Dialing { reply } = &entry.state {
                if reply.is_closed() {
                    sock.abort(); // the caller gave up
                    continue;
                }
                if matches!(state, tcp::State::SynSent) {
                    continue;
                }
                let (stream, peer) = flow::pair(self.wake.clone());
                let FlowState::Dialing { reply } = std::mem::replace(
                    &mut entry.state,
                    FlowState::Open {
                        to_handler: Some(peer.to_handler),
                        from_handler: peer.from_handler,
                        shared: peer.shared,
                        pending: Bytes::new(),
                        handler_done: false,
                    },
                ) else {
                    unreachable!()
                };
                if let Err(Ok(stream)) = reply.send(Ok(stream)) {
                    stream.reset();
                }
            }
            if let FlowState::Pending = entry.state {
                if matches!(state, tcp::State::Listen | tcp::State::SynReceived) {
                    continue;
                }
                let (stream, peer) = flow::pair(self.wake.clone());
                let FlowPeer {
                    to_handler,
                    from_handler,
                    shared,
                } = peer;
                entry.state = FlowState::Open {
                    to_handler: Some(to_handler),
                    from_handler,
                    shared,
                    pending: Bytes::new(),
                    handler_done: false,
                };
                self.stats.flows_opened.fetch_add(1, Ordering::Relaxed);
                self.handler.handle(Flow {
                    src: entry.src,
                    dst: entry.dst,
                    stream,
                });
            }
            let FlowState::Open {
                to_handler,
                from_handler,
                shared,
                pending,
                handler_done,
            } = &mut entry.state
            else {
                continue;
            };
            if shared.reset.load(Ordering::Acquire) {
                sock.abort();
                continue;
            }
            // Guest → handler.
            while sock.can_recv() {
                match to_handler {
                    Some(tx) => {
                        let Ok(permit) = tx.try_reserve() else {
                            if tx.is_closed() {
                                *to_handler = None; // handler stopped reading
                                continue;
                            }
                            break;
                        };
                        if let Ok(b) = sock.recv(|buf| {
                            let n = buf.len().min(CHUNK);
                            (n, Bytes::copy_from_slice(&buf[..n]))
                        }) {
                            moved = true;
                            permit.send(b);
                        }
                    }
                    None => {
                        // Nobody listens: discard so the window stays open.
                        let _ = sock.recv(|buf| (buf.len(), ()));
                        moved = true;
                    }
                }
            }
            if !sock.may_recv() && to_handler.is_some() && !sock.can_recv() {
                *to_handler = None; // EOF to the handler
            }
            // Handler → guest.
            while feed && sock.can_send() {
                if pending.is_empty() {
                    match from_handler.try_recv() {
                        Ok(b) => *pending = b,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            *handler_done = true;
                            break;
                        }
                    }
                }
                match sock.send_slice(pending) {
                    Ok(0) => break,
                    Ok(n) => {
                        let _ = pending.split_to(n);
                        moved = true;
                    }
                    Err(_) => break,
                }
            }
            if *handler_done && pending.is_empty() && sock.may_send() {
                sock.close();
            }
        }
        for h in gone {
            if let Some(e) = self.flows.remove(&h) {
                self.tuples.remove(&(e.src, e.dst));
            }
            self.sockets.remove(h);
        }
        moved
    }
}

fn ethernet(dst: EthernetAddress, proto: EthernetProtocol, body_len: usize) -> (Vec<u8>, usize) {
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GATEWAY_MAC),
        dst_addr: dst,
        ethertype: proto,
    };
    let mut buf = vec![0u8; eth.buffer_len() + body_len];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    (buf, eth.buffer_len())
}

fn ip_frame(
    from: Ipv4Addr,
    to: Ipv4Addr,
    proto: IpProtocol,
    body: &[u8],
    mac: EthernetAddress,
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: from,
        dst_addr: to,
        next_header: proto,
        payload_len: body.len(),
        hop_limit: 64,
    };
    let (mut buf, off) = ethernet(mac, EthernetProtocol::Ipv4, ip.buffer_len() + body.len());
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[off..]), &caps);
    let start = off + ip.buffer_len();
    buf[start..].copy_from_slice(body);
    buf
}

fn udp_frame(
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: &[u8],
    mac: EthernetAddress,
) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    let mut body = vec![0u8; udp.header_len() + payload.len()];
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut body[..]),
        &(*from.ip()).into(),
        &(*to.ip()).into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    ip_frame(*from.ip(), *to.ip(), IpProtocol::Udp, &body, mac)
}

fn now() -> Instant {
    Instant::now()
}

/// Serve the guest's NIC on `stream` until QEMU disconnects.
pub async fn run(
    stream: UnixStream,
    cfg: NetConfig,
    dns: Arc<DnsServer>,
    handler: Arc<dyn FlowHandler>,
    stats: Arc<NetStats>,
    dials: &mut mpsc::Receiver<DialRequest>,
) {
    let (rd, wr) = stream.into_split();
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(256);
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(OUT_FRAMES);
    let reader = tokio::spawn(async move {
        let mut frames = link::reader(rd, MAX_FRAME);
        while let Ok(Some(f)) = link::read_frame(&mut frames).await {
            if !f.is_empty() && in_tx.send(f).await.is_err() {
                break;
            }
        }
    });
    // Batches of up to 60 KiB: a write QEMU takes in one go.
    let writer = tokio::spawn(write_coalesced(wr, out_rx, 60 * 1024, |f: &Vec<u8>, b| {
        link::encode_frame(b, f)
    }));
    // Injected frames (forwarded DNS answers) come back through here.
    let (inject_tx, mut inject_rx) = mpsc::channel::<Vec<u8>>(64);
    let wake = Arc::new(Notify::new());
    let dns_slots = Arc::new(tokio::sync::Semaphore::new(MAX_DNS_IN_FLIGHT));
    let mut stack = Stack::new(cfg, dns, handler, stats, wake.clone(), now());
    let mut delay: Option<Duration> = None;
    loop {
        // Flush what the stack produced as far as the writer takes it.
        while let Some(f) = stack.dev.tx.pop_front() {
            match out_tx.try_send(f) {
                Ok(()) => {
                    stack.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(f)) => {
                    stack.dev.tx.push_front(f);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    reader.abort();
                    return;
                }
            }
        }
        let backlog = !stack.dev.tx.is_empty();
        let sleep = delay.map(|d| std::time::Duration::from_micros(d.total_micros()));
        tokio::select! {
            f = in_rx.recv() => match f {
                Some(f) => {
                    stack.ingest(f);
                    for _ in 0..64 {
                        match in_rx.try_recv() {
                            Ok(f) => stack.ingest(f),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            Some(f) = inject_rx.recv() => stack.dev.tx.push_back(f),
            Some(req) = dials.recv() => stack.dial(req),
            permit = out_tx.reserve(), if backlog => {
                if let (Ok(p), Some(f)) = (permit, stack.dev.tx.pop_front()) {
                    stack.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                    p.send(f);
                }
            }
            _ = wake.notified() => {}
            _ = async {
                match sleep {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        delay = stack.poll(now());
        for e in stack.take_effects() {
            let Effect::Dns {
                query,
                server,
                reply_from,
                reply_to,
            } = e;
            let Ok(permit) = dns_slots.clone().try_acquire_owned() else {
                continue;
            };
            let inject = inject_tx.clone();
            let mac = stack.guest_mac;
            tokio::spawn(async move {
                if let Some(answer) = forward_dns(&query, server).await {
                    let _ = inject.try_send(udp_frame(reply_from, reply_to, &answer, mac));
                }
                drop(permit);
            });
        }
    }
    reader.abort();
    drop(out_tx);
    let _ = writer.await;
}

async fn forward_dns(query: &[u8], server: SocketAddrV4) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
    sock.connect(server).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DNS_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    if n < 12 || buf[..2] != query[..2] {
        return None;
    }
    buf.truncate(n);
    Some(buf)
}

/// A flow's socket, guest-opened or dialed: buffers, idle timeout, no Nagle
/// (what the peer wrote goes out at once; it already chose the sizes).
fn flow_socket() -> tcp::Socket<'static> {
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    sock.set_timeout(Some(FLOW_TIMEOUT));
    sock.set_nagle_enabled(false);
    sock
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
