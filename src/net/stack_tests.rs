//! The stack against a second smoltcp interface playing the guest, with a
//! fake clock: frames move only when the test pumps them.

use super::super::GUEST_IP;
use super::*;
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Collect(Mutex<Vec<Flow>>);
impl FlowHandler for Collect {
    fn handle(&self, flow: Flow) {
        self.0.lock().unwrap().push(flow);
    }
}

struct Net {
    host: Stack,
    flows: Arc<Collect>,
    guest: Interface,
    gdev: QueueDevice,
    gsockets: SocketSet<'static>,
    now: Instant,
    /// Frames the host sent that the test wants to inspect itself.
    seen: Vec<Vec<u8>>,
}

impl Net {
    fn new(max_flows: usize) -> Net {
        let flows = Arc::new(Collect::default());
        let now = Instant::from_millis(1000);
        let host = Stack::new(
            NetConfig {
                max_flows,
                ..NetConfig::default()
            },
            Arc::new(DnsServer::new(Default::default())),
            flows.clone(),
            Arc::new(NetStats::default()),
            Arc::new(Notify::new()),
            now,
        );
        let mut gdev = QueueDevice::default();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(
            super::super::GUEST_MAC,
        )));
        let mut guest = Interface::new(config, &mut gdev, now);
        guest.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(GUEST_IP.into(), 24));
        });
        guest
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .unwrap();
        Net {
            host,
            flows,
            guest,
            gdev,
            gsockets: SocketSet::new(Vec::new()),
            now,
            seen: Vec::new(),
        }
    }

    /// One round: guest polls, its frames reach the host, the host's reach
    /// the guest. `keep` diverts host frames into `seen` instead.
    fn pump_with(&mut self, keep: bool) {
        self.now += Duration::from_millis(1);
        self.guest
            .poll(self.now, &mut self.gdev, &mut self.gsockets);
        while let Some(f) = self.gdev.tx.pop_front() {
            self.host.ingest(f);
        }
        self.host.poll(self.now);
        while let Some(f) = self.host.take_tx() {
            if keep {
                self.seen.push(f);
            } else {
                self.gdev.rx.push_back(f);
            }
        }
    }

    fn pump(&mut self) {
        self.pump_with(false);
    }

    fn connect(&mut self, dst: SocketAddrV4, local_port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        s.connect(self.guest.context(), (*dst.ip(), dst.port()), local_port)
            .unwrap();
        self.gsockets.add(s)
    }

    fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.gsockets.get_mut::<tcp::Socket>(h)
    }
}

fn guest_frame(to: Ipv4Addr, proto: IpProtocol, body: &[u8]) -> Vec<u8> {
    let mut f = ip_frame(GUEST_IP, to, proto, body, EthernetAddress(GATEWAY_MAC));
    // ip_frame writes the gateway as the source MAC; make it the guest's.
    f[6..12].copy_from_slice(&super::super::GUEST_MAC);
    f
}

#[test]
fn arp_for_the_gateway_is_answered() {
    let mut net = Net::new(8);
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(super::super::GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY_IP,
    };
    let (mut f, off) = ethernet(
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
        arp.buffer_len(),
    );
    f[6..12].copy_from_slice(&super::super::GUEST_MAC);
    arp.emit(&mut ArpPacket::new_unchecked(&mut f[off..]));
    net.host.ingest(f);
    net.pump_with(true);
    let reply = net.seen.iter().find_map(|f| {
        let eth = EthernetFrame::new_checked(&f[..]).ok()?;
        let p = ArpPacket::new_checked(eth.payload()).ok()?;
        ArpRepr::parse(&p).ok()
    });
    match reply {
        Some(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr,
            source_protocol_addr,
            ..
        }) => {
            assert_eq!(source_hardware_addr, EthernetAddress(GATEWAY_MAC));
            assert_eq!(source_protocol_addr, GATEWAY_IP);
        }
        other => panic!("no ARP reply: {other:?}"),
    }
}

#[test]
fn echo_to_any_address_is_answered() {
    let mut net = Net::new(8);
    let req = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 3,
        data: b"ping!",
    };
    let mut body = vec![0u8; req.buffer_len()];
    req.emit(
        &mut Icmpv4Packet::new_unchecked(&mut body[..]),
        &ChecksumCapabilities::default(),
    );
    let far = Ipv4Addr::new(203, 0, 113, 9);
    net.host.ingest(guest_frame(far, IpProtocol::Icmp, &body));
    net.pump_with(true);
    let f = net.seen.first().expect("a reply");
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.src_addr(), far);
    assert_eq!(ip.dst_addr(), GUEST_IP);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap() {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        } => {
            assert_eq!((ident, seq_no, data), (7, 3, &b"ping!"[..]));
        }
        other => panic!("{other:?}"),
    }
}

fn udp_from_guest(dst: SocketAddrV4, src_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = udp_frame(
        SocketAddrV4::new(GUEST_IP, src_port),
        dst,
        payload,
        EthernetAddress(GATEWAY_MAC),
    );
    f[6..12].copy_from_slice(&super::super::GUEST_MAC);
    f
}

fn udp_payloads(frames: &[Vec<u8>]) -> Vec<(SocketAddrV4, SocketAddrV4, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            Some((
                SocketAddrV4::new(ip.src_addr(), udp.src_port()),
                SocketAddrV4::new(ip.dst_addr(), udp.dst_port()),
                udp.payload().to_vec(),
            ))
        })
        .collect()
}

#[test]
fn dhcp_offers_the_guest_address() {
    let mut net = Net::new(8);
    let discover = super::super::dhcp::request(DhcpMessageType::Discover, super::super::GUEST_MAC);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut f = udp_frame(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        bcast,
        &discover,
        EthernetAddress::BROADCAST,
    );
    f[6..12].copy_from_slice(&super::super::GUEST_MAC);
    net.host.ingest(f);
    net.pump_with(true);
    let replies = udp_payloads(&net.seen);
    assert_eq!(replies.len(), 1);
    let (from, to, payload) = &replies[0];
    assert_eq!(*from, SocketAddrV4::new(GATEWAY_IP, 67));
    assert_eq!(to.port(), 68);
    let p = DhcpPacket::new_checked(&payload[..]).unwrap();
    let r = DhcpRepr::parse(&p).unwrap();
    assert_eq!(r.message_type, DhcpMessageType::Offer);
    assert_eq!(r.your_ip, GUEST_IP);
    assert_eq!(r.dns_servers.unwrap().to_vec(), vec![GATEWAY_IP]);
}

#[test]
fn dns_is_answered_and_other_udp_dropped() {
    let mut net = Net::new(8);
    let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
    let resolver = SocketAddrV4::new(GATEWAY_IP, 53);
    net.host.ingest(udp_from_guest(resolver, 5353, &q));
    net.host.ingest(udp_from_guest(
        SocketAddrV4::new(Ipv4Addr::new(1, 1, 1, 1), 443),
        5354,
        b"quic",
    ));
    net.pump_with(true);
    let replies = udp_payloads(&net.seen);
    assert_eq!(replies.len(), 1, "only the DNS query is answered");
    assert_eq!(replies[0].0, resolver);
    assert_eq!(&replies[0].2[..2], &[0xab, 0xcd]);
    assert_eq!(&replies[0].2[replies[0].2.len() - 4..], &[192, 0, 2, 1]);
    assert_eq!(net.host.stats.dropped.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn syn_to_any_address_becomes_a_flow() {
    let mut net = Net::new(8);
    let dst = SocketAddrV4::new(Ipv4Addr::new(93, 184, 216, 34), 80);
    let h = net.connect(dst, 40000);
    for _ in 0..10 {
        net.pump();
    }
    assert_eq!(
        net.sock(h).state(),
        tcp::State::Established,
        "SYN/ACK before any data"
    );
    let flow = net
        .flows
        .0
        .lock()
        .unwrap()
        .pop()
        .expect("handed to the handler");
    assert_eq!(flow.dst, dst);
    assert_eq!(flow.src, SocketAddrV4::new(GUEST_IP, 40000));
    let mut stream = flow.stream;

    // Guest → host.
    net.sock(h).send_slice(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    for _ in 0..5 {
        net.pump();
    }
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");

    // Host → guest, larger than one socket buffer, then FIN.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let big = big.clone();
        tokio::spawn(async move {
            stream.write_all(&big).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        })
    };
    let mut got = Vec::new();
    for _ in 0..5000 {
        tokio::task::yield_now().await;
        net.pump();
        let s = net.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if !s.may_recv() {
            break;
        }
    }
    assert_eq!(got.len(), big.len());
    assert!(got == big, "bytes arrive in order, none lost or repeated");
    let _stream = writer.await.unwrap();
}

#[tokio::test]
async fn reset_and_flow_limit() {
    let mut net = Net::new(1);
    let a = net.connect(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 22), 40001);
    for _ in 0..10 {
        net.pump();
    }
    assert_eq!(net.sock(a).state(), tcp::State::Established);
    // The second flow is over the limit: refused with an RST.
    let b = net.connect(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 23), 40002);
    for _ in 0..10 {
        net.pump();
    }
    assert_eq!(net.sock(b).state(), tcp::State::Closed);
    assert_eq!(net.host.stats.flows_refused.load(Ordering::Relaxed), 1);
    // The handler resets the first.
    let flow = net.flows.0.lock().unwrap().pop().unwrap();
    flow.stream.reset();
    for _ in 0..10 {
        net.pump();
    }
    assert_eq!(net.sock(a).state(), tcp::State::Closed);
    assert_eq!(net.host.open_flows(), 0, "closed flows are dropped");
}

#[test]
fn a_syn_flood_is_bounded() {
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
    let mut net = Net::new(1000);
    let dst = Ipv4Addr::new(203, 0, 113, 7);
    for port in 0..(MAX_PENDING as u16 + 10) {
        let syn = TcpRepr {
            src_port: 20000 + port,
            dst_port: 443,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1),
            ack_number: None,
            window_len: 64240,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let mut body = vec![0u8; syn.buffer_len()];
        syn.emit(
            &mut TcpPacket::new_unchecked(&mut body[..]),
            &GUEST_IP.into(),
            &dst.into(),
            &ChecksumCapabilities::default(),
        );
        net.host.ingest(guest_frame(dst, IpProtocol::Tcp, &body));
    }
    net.pump_with(true);
    assert_eq!(
        net.host.open_flows(),
        MAX_PENDING,
        "half-open flows are capped"
    );
    assert_eq!(net.host.stats.flows_refused.load(Ordering::Relaxed), 10);
}

/// Mutated and truncated versions of every frame kind the stack handles:
/// whatever the guest sends, the host neither panics nor grows.
#[test]
fn hostile_frames_never_panic() {
    let mut net = Net::new(16);
    let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
    let echo = {
        let r = Icmpv4Repr::EchoRequest {
            ident: 1,
            seq_no: 1,
            data: b"x",
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(
            &mut Icmpv4Packet::new_unchecked(&mut b[..]),
            &ChecksumCapabilities::default(),
        );
        b
    };
    let seeds = [
        udp_from_guest(SocketAddrV4::new(GATEWAY_IP, 53), 5353, &q),
        udp_from_guest(
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
            68,
            &super::super::dhcp::request(DhcpMessageType::Discover, super::super::GUEST_MAC),
        ),
        guest_frame(Ipv4Addr::new(8, 8, 8, 8), IpProtocol::Icmp, &echo),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..(rand() % 6) {
            let at = (rand() as usize) % f.len();
            f[at] = rand() as u8;
        }
        if rand() % 4 == 0 {
            let keep = (rand() as usize) % (f.len() + 1);
            f.truncate(keep);
        }
        net.host.ingest(f);
        if i % 64 == 0 {
            net.host.poll(net.now);
            while net.host.take_tx().is_some() {}
        }
    }
    assert!(net.host.open_flows() <= 16);
}

fn dial(net: &mut Net, port: u16) -> tokio::sync::oneshot::Receiver<std::io::Result<FlowStream>> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    net.host.dial(DialRequest { port, reply });
    answer
}

#[tokio::test]
async fn dials_reach_the_guest_loopback_and_a_closed_port_is_refused() {
    let mut net = Net::new(8);
    // The guest plays a kernel with route_localnet: 127.0.0.1 on its NIC.
    net.guest.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(Ipv4Addr::LOCALHOST.into(), 8));
    });
    let mut server = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    );
    server.listen(8080).unwrap();
    let sh = net.gsockets.add(server);
    let mut open = dial(&mut net, 8080);
    let mut closed = dial(&mut net, 8081);
    let (mut open_result, mut closed_result) = (None, None);
    for _ in 0..50 {
        net.pump();
        if open_result.is_none() {
            open_result = open.try_recv().ok();
        }
        if closed_result.is_none() {
            closed_result = closed.try_recv().ok();
        }
    }
    let refused = closed_result.expect("answered").expect_err("refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let mut stream = open_result.expect("answered").expect("connected");
    assert_eq!(net.sock(sh).state(), tcp::State::Established);
    assert_eq!(
        net.sock(sh).remote_endpoint().unwrap().addr,
        GATEWAY_IP.into()
    );
    stream.write_all(b"ping").await.unwrap();
    for _ in 0..5 {
        net.pump();
    }
    let mut got = [0u8; 4];
    net.sock(sh).recv_slice(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    net.sock(sh).send_slice(b"pong").unwrap();
    for _ in 0..5 {
        net.pump();
    }
    let n = stream.read(&mut got).await.unwrap();
    assert_eq!(&got[..n], b"pong");
    assert_eq!(net.host.stats.dials.load(Ordering::Relaxed), 2);
}

#[test]
fn dials_are_capped_and_abandoned_ones_are_aborted() {
    let mut net = Net::new(8);
    // Nobody answers: every dial stays in SYN-SENT.
    let mut pending: Vec<_> = (0..MAX_DIALS).map(|_| dial(&mut net, 9)).collect();
    let mut over = dial(&mut net, 9);
    let e = over.try_recv().expect("answered at once").err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    // Guest flows have their own budget.
    assert_eq!(net.host.open_flows(), MAX_DIALS);
    // The callers give up: their sockets go.
    pending.clear();
    net.pump();
    net.pump();
    assert_eq!(net.host.open_flows(), 0);
}
