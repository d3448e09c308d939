//! Mapped TCP egress (upstream's `tcp.hosts`, api.md §6, protocol.md §12.3).
//!
//! `tcp: { hosts: { "db.internal:5432": "127.0.0.1:5432" } }` lets the
//! guest reach a host-side service by a name: the guest resolves the name
//! through synthetic per-host DNS (a `198.19.x.y` address that names it),
//! connects, and the host opens a TCP connection to the mapped upstream
//! and copies raw bytes both ways. The flow is decided before sniffing,
//! so protocols where the server speaks first (MySQL, SSH, SMTP) work;
//! no HTTP hook, secret or policy applies to it (the host program named
//! the upstream itself). Everything unmapped is classified as before.
//!
//! Bounds: at most [`MAX_MAPPED_FLOWS`] mapped flows per VM (more are
//! reset and recorded as refused), one 64 KiB buffer each way (the guest
//! side is bounded by the flow channels, the upstream side by the
//! kernel's socket buffers: a slow upstream closes the guest's window),
//! [`CONNECT_TIMEOUT`] for the upstream connect (name resolution
//! included), and [`HALF_CLOSED_IDLE`] for a flow whose guest side has
//! ended while the upstream says nothing. A flow holds no reference to
//! the [`Egress`]: when the VM's network goes away (the Egress is
//! dropped), its open mapped flows end and their upstream sockets close.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};

use super::{Egress, EgressEvent};
use crate::log_limited;
use crate::net::dns::{DnsMode, DnsServer};
use crate::net::Flow;

/// Concurrent mapped flows per VM; more are reset (each holds a host socket).
pub const MAX_MAPPED_FLOWS: usize = 128;
/// Bound on the upstream connect, name resolution included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A flow the guest has finished sending on ends when the upstream has
/// then sent nothing for this long: a backstop (a closed VM's flows end
/// at once, see `Mapped::alive`) that also bounds a half-closed flow to an
/// upstream that never closes.
pub const HALF_CLOSED_IDLE: Duration = Duration::from_secs(300);
/// Bytes moved per read, each way.
const BUF: usize = 64 * 1024;

/// Where a mapped flow goes: an upstream host (name or IP literal) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTarget {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for TcpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The parsed `tcp.hosts` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpMap {
    by_host_port: HashMap<(String, u16), TcpTarget>,
    by_host: HashMap<String, TcpTarget>,
}

/// A `HOST[:PORT]` as upstream parses it.
struct HostPort {
    host: String,
    port: Option<u16>,
}

/// Upstream's host normalization: lowercase; trailing dots go, except on
/// IP literals.
fn normalize_host(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.parse::<IpAddr>().is_ok() {
        h
    } else {
        h.trim_end_matches('.').to_string()
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parse `HOST[:PORT]` or `[V6]:PORT`; `what` is `tcp.hosts key` or
/// `tcp.hosts value`, and messages are upstream's.
fn parse_host_port(raw: &str, what: &str, require_port: bool) -> Result<HostPort, String> {
    let input = raw.trim();
    if input.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let (host, port) = if let Some(inner) = input.strip_prefix('[') {
        let end = inner
            .find(']')
            .ok_or_else(|| format!("{what} has invalid bracket syntax: {raw}"))?;
        let rest = &inner[end + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            let p = rest
                .strip_prefix(':')
                .ok_or_else(|| format!("{what} has invalid bracket syntax: {raw}"))?;
            if !digits(p) {
                return Err(format!("{what} has invalid port: {raw}"));
            }
            Some(p)
        };
        (&inner[..end], port)
    } else {
        match input.rfind(':') {
            Some(i) if digits(&input[i + 1..]) => (&input[..i], Some(&input[i + 1..])),
            _ => (input, None),
        }
    };
    let host = normalize_host(host);
    if host.is_empty() {
        return Err(format!("{what} host must not be empty: {raw}"));
    }
    let port = match port {
        None => None,
        // Digits only: anything that does not fit is out of range too.
        Some(p) => match p.parse::<u32>() {
            Ok(n @ 1..=65535) => Some(n as u16),
            _ => return Err(format!("{what} port must be in range 1..65535: {raw}")),
        },
    };
    if require_port && port.is_none() {
        return Err(format!("{what} requires an explicit :PORT: {raw}"));
    }
    Ok(HostPort { host, port })
}

impl TcpMap {
    /// Parse `tcp.hosts` entries (key, value) in the caller's order, with
    /// upstream's checks and messages: keys `HOST`, `HOST:PORT` or
    /// `[V6]:PORT`, lowercased, trailing dots stripped, no `*`; values
    /// `UPSTREAM_HOST:PORT` (explicit port); two keys that normalize to
    /// the same `HOST[:PORT]` are refused.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TcpMap, String> {
        let mut map = TcpMap::default();
        for (key, value) in entries {
            let k = parse_host_port(key, "tcp.hosts key", false)?;
            if k.host.contains('*') {
                return Err(format!(
                    "tcp.hosts key does not support wildcard '*': {key}"
                ));
            }
            let v = parse_host_port(value, "tcp.hosts value", true)?;
            if v.host.contains('*') {
                return Err(format!(
                    "tcp.hosts value does not support wildcard '*': {value}"
                ));
            }
            let target = TcpTarget {
                host: v.host,
                port: v.port.expect("required above"),
            };
            let dup = match k.port {
                Some(p) => map
                    .by_host_port
                    .insert((k.host.clone(), p), target)
                    .map(|_| format!("{}:{p}", k.host)),
                None => map
                    .by_host
                    .insert(k.host.clone(), target)
                    .map(|_| k.host.clone()),
            };
            if let Some(dup) = dup {
                return Err(format!("duplicate tcp.hosts mapping for {dup}"));
            }
        }
        Ok(map)
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty() && self.by_host_port.is_empty()
    }

    /// The target for a guest name and destination port: `HOST:PORT`
    /// beats `HOST`.
    pub fn lookup(&self, name: &str, port: u16) -> Option<&TcpTarget> {
        let name = normalize_host(name);
        self.by_host_port
            .get(&(name.clone(), port))
            .or_else(|| self.by_host.get(&name))
    }

    /// Mapping needs synthetic DNS with per-host addresses (a flow's
    /// destination names the host only then). Returns whether per-host
    /// mapping is on: `per_host` (`dns.syntheticHostMapping`, `None` when
    /// unset) defaults to on when this map is not empty, as upstream; an
    /// explicit conflict is refused with upstream's message.
    pub fn dns_per_host(&self, mode: DnsMode, per_host: Option<bool>) -> Result<bool, String> {
        if self.is_empty() {
            return Ok(per_host.unwrap_or(false));
        }
        if mode != DnsMode::Synthetic {
            return Err("tcp host mapping requires dns mode 'synthetic'".into());
        }
        if per_host == Some(false) {
            return Err("tcp host mapping requires dns syntheticHostMapping='per-host'".into());
        }
        Ok(true)
    }
}

/// A VM's mapped-TCP state: the table (set once, before the VM starts)
/// and the flow cap.
#[derive(Debug)]
pub(crate) struct Mapped {
    map: OnceLock<TcpMap>,
    slots: Arc<Semaphore>,
    /// Dropped with the [`Egress`], i.e. once the VM's network is gone
    /// (flows hold none of it): every open mapped flow then ends, so a
    /// closed VM leaves no upstream socket behind.
    alive: watch::Sender<()>,
}

impl Default for Mapped {
    fn default() -> Self {
        Mapped {
            map: OnceLock::new(),
            slots: Arc::new(Semaphore::new(MAX_MAPPED_FLOWS)),
            alive: watch::channel(()).0,
        }
    }
}

/// A flow that matched the table.
pub(crate) struct Route {
    /// `guest-name:port`, for the egress record.
    label: String,
    target: TcpTarget,
}

impl Mapped {
    /// The route for a flow to `dst`, when `dst` is a per-host synthetic
    /// address whose name (and port) the table maps.
    pub(crate) fn route(&self, dns: &DnsServer, dst: SocketAddrV4) -> Option<Route> {
        let map = self.map.get().filter(|m| !m.is_empty())?;
        let name = dns.name_for(*dst.ip())?;
        let target = map.lookup(&name, dst.port())?.clone();
        Some(Route {
            label: format!("{name}:{}", dst.port()),
            target,
        })
    }
}

impl Egress {
    /// Install the VM's `tcp.hosts` table (before the VM starts; once).
    pub fn set_tcp_map(&self, map: TcpMap) {
        let _ = self.tcp.map.set(map);
    }
}

/// A mapped flow's egress record, sent without holding the [`Egress`].
struct Recorder {
    events: Option<mpsc::Sender<EgressEvent>>,
    label: String,
}

impl Recorder {
    fn record(&self, allowed: bool, reason: Option<String>, bytes: u64) {
        if let Some(tx) = &self.events {
            let _ = tx.try_send(EgressEvent {
                protocol: "tcp",
                host: self.label.clone(),
                method: String::new(),
                url: String::new(),
                allowed,
                reason,
                status: None,
                bytes,
            });
        }
    }
}

/// Serve one mapped flow: connect upstream, then copy both ways with
/// half-close. One egress record when it ends.
pub(crate) async fn serve(eg: Arc<Egress>, flow: Flow, route: Route) {
    let Flow { dst, stream, .. } = flow;
    let rec = Recorder {
        events: eg.events.clone(),
        label: route.label,
    };
    let mut gone = eg.tcp.alive.subscribe();
    let slot = eg.tcp.slots.clone().try_acquire_owned();
    drop(eg);
    let Ok(_slot) = slot else {
        log_limited!(warn, target: "gondolin::net", %dst, "mapped TCP: {MAX_MAPPED_FLOWS} flows already open");
        rec.record(false, Some("too-many-mapped-flows".into()), 0);
        stream.reset();
        return;
    };
    let target = &route.target;
    let upstream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            log_limited!(debug, target: "gondolin::net", %dst, %target, "mapped TCP connect failed: {e}");
            rec.record(
                false,
                Some(format!("upstream connect failed: {target}: {e}")),
                0,
            );
            stream.reset();
            return;
        }
        Err(_) => {
            rec.record(
                false,
                Some(format!(
                    "upstream connect failed: {target}: timed out after {} s",
                    CONNECT_TIMEOUT.as_secs()
                )),
                0,
            );
            stream.reset();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut guest_rd, mut guest_wr) = tokio::io::split(stream);
    let (mut up_rd, mut up_wr) = upstream.into_split();
    let guest_done = AtomicBool::new(false);
    let mut to_guest = 0u64;
    let result = {
        let up = async {
            pump(&mut guest_rd, &mut up_wr, None, |_| {}).await?;
            guest_done.store(true, Ordering::Relaxed);
            Ok::<_, std::io::Error>(())
        };
        let down = pump(&mut up_rd, &mut guest_wr, Some(&guest_done), |n| {
            to_guest += n as u64
        });
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
            // Only a dropped sender ends this wait.
            _ = gone.changed() => Err(std::io::Error::other("the VM's network is gone")),
        }
    };
    let reason = match result {
        Ok(()) => None,
        Err(e) => {
            // An upstream reset (or a stall) resets the guest's flow too.
            guest_rd.unsplit(guest_wr).reset();
            Some(format!("flow aborted: {e}"))
        }
    };
    rec.record(true, reason, to_guest);
}

/// Copy `from` to `to` until EOF, then half-close `to`. With `idle_after`,
/// a read that waits longer than [`HALF_CLOSED_IDLE`] once that flag is
/// set fails (`TimedOut`).
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    idle_after: Option<&AtomicBool>,
    mut count: impl FnMut(usize),
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match idle_after {
            None => from.read(&mut buf).await?,
            Some(flag) => loop {
                // `read` is cancel safe: a timed-out read loses nothing.
                match tokio::time::timeout(HALF_CLOSED_IDLE, from.read(&mut buf)).await {
                    Ok(r) => break r?,
                    Err(_) if flag.load(Ordering::Relaxed) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "upstream idle after the guest finished",
                        ))
                    }
                    Err(_) => continue,
                }
            },
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        count(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[(&str, &str)]) -> Result<TcpMap, String> {
        TcpMap::parse(entries.iter().copied())
    }
    fn refused(entries: &[(&str, &str)]) -> String {
        parse(entries).unwrap_err()
    }
    fn t(host: &str, port: u16) -> TcpTarget {
        TcpTarget {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn keys_are_normalized_and_host_port_beats_host() {
        let m = parse(&[
            ("DB.Internal.", "127.0.0.1:5432"),
            ("db.internal:6379", "localhost:6380"),
            ("[2001:DB8::1]:22", "[::1]:2222"),
        ])
        .unwrap();
        assert_eq!(m.lookup("db.internal", 5432), Some(&t("127.0.0.1", 5432)));
        assert_eq!(m.lookup("db.internal", 1), Some(&t("127.0.0.1", 5432)));
        assert_eq!(m.lookup("db.internal", 6379), Some(&t("localhost", 6380)));
        assert_eq!(m.lookup("DB.INTERNAL.", 6379), Some(&t("localhost", 6380)));
        assert_eq!(m.lookup("2001:db8::1", 22), Some(&t("::1", 2222)));
        assert_eq!(m.lookup("2001:db8::1", 23), None);
        assert_eq!(m.lookup("other.internal", 5432), None);
        assert_eq!(t("::1", 2222).to_string(), "[::1]:2222");
    }

    #[test]
    fn upstream_messages() {
        assert_eq!(refused(&[(" ", "a:1")]), "tcp.hosts key must not be empty");
        assert_eq!(
            refused(&[("[::1", "a:1")]),
            "tcp.hosts key has invalid bracket syntax: [::1"
        );
        assert_eq!(
            refused(&[("[::1]x", "a:1")]),
            "tcp.hosts key has invalid bracket syntax: [::1]x"
        );
        assert_eq!(
            refused(&[("[::1]:x", "a:1")]),
            "tcp.hosts key has invalid port: [::1]:x"
        );
        assert_eq!(
            refused(&[("a:0", "a:1")]),
            "tcp.hosts key port must be in range 1..65535: a:0"
        );
        assert_eq!(
            refused(&[("a:99999999999999999999", "a:1")]),
            "tcp.hosts key port must be in range 1..65535: a:99999999999999999999"
        );
        assert_eq!(
            refused(&[(":80", "a:1")]),
            "tcp.hosts key host must not be empty: :80"
        );
        assert_eq!(
            refused(&[("a", "127.0.0.1")]),
            "tcp.hosts value requires an explicit :PORT: 127.0.0.1"
        );
        assert_eq!(
            refused(&[("a", "b:65536")]),
            "tcp.hosts value port must be in range 1..65535: b:65536"
        );
        assert_eq!(refused(&[("a", "")]), "tcp.hosts value must not be empty");
        assert_eq!(
            refused(&[("*.example.com", "a:1")]),
            "tcp.hosts key does not support wildcard '*': *.example.com"
        );
        assert_eq!(
            refused(&[("a", "*.x:1")]),
            "tcp.hosts value does not support wildcard '*': *.x:1"
        );
        assert_eq!(
            refused(&[("Db.x.", "a:1"), ("db.x", "b:2")]),
            "duplicate tcp.hosts mapping for db.x"
        );
        assert_eq!(
            refused(&[("db.x:5", "a:1"), ("DB.X:5", "b:2")]),
            "duplicate tcp.hosts mapping for db.x:5"
        );
        // A key without a numeric port keeps its colon in the name (upstream).
        assert!(parse(&[("a:b", "c:1")]).unwrap().lookup("a:b", 9).is_some());
    }

    #[test]
    fn dns_must_be_synthetic_per_host() {
        let m = parse(&[("a", "b:1")]).unwrap();
        assert_eq!(m.dns_per_host(DnsMode::Synthetic, None), Ok(true));
        assert_eq!(m.dns_per_host(DnsMode::Synthetic, Some(true)), Ok(true));
        assert_eq!(
            m.dns_per_host(DnsMode::Synthetic, Some(false)).unwrap_err(),
            "tcp host mapping requires dns syntheticHostMapping='per-host'"
        );
        assert_eq!(
            m.dns_per_host(DnsMode::Trusted, None).unwrap_err(),
            "tcp host mapping requires dns mode 'synthetic'"
        );
        let empty = TcpMap::default();
        assert_eq!(empty.dns_per_host(DnsMode::Open, None), Ok(false));
        assert_eq!(empty.dns_per_host(DnsMode::Synthetic, Some(true)), Ok(true));
    }

    /// A flow end to end on the host: the guest side is the stack's end
    /// of a flow pair, the upstream a real server on 127.0.0.1.
    mod forwarding {
        use super::*;
        use crate::net::flow;
        use crate::tls::MitmCa;
        use bytes::Bytes;
        use std::net::Ipv4Addr;
        use tokio::sync::Notify;

        fn egress() -> (Arc<Egress>, mpsc::Receiver<EgressEvent>) {
            let dir =
                std::env::temp_dir().join(format!("gondolin-tcpmap-test-{}", std::process::id()));
            let ca = Arc::new(MitmCa::load_or_create(&dir).unwrap());
            let (tx, rx) = mpsc::channel(16);
            let eg = Egress::new(
                crate::http::Policy::default(),
                ca,
                Arc::new(DnsServer::new(Default::default())),
                Some(tx),
            );
            (eg, rx)
        }

        fn route(port: u16) -> Route {
            Route {
                label: "db.internal:5432".into(),
                target: t("127.0.0.1", port),
            }
        }

        fn guest_flow() -> (Flow, flow::FlowPeer) {
            let (stream, peer) = flow::pair(Arc::new(Notify::new()));
            let any = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 5432);
            (
                Flow {
                    src: any,
                    dst: any,
                    stream,
                },
                peer,
            )
        }

        /// Reads until EOF, then answers everything it got, uppercased.
        async fn shouting_server() -> u16 {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                s.write_all(b"banner\n").await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&got.to_ascii_uppercase()).await.unwrap();
            });
            port
        }

        #[tokio::test]
        async fn banner_then_half_close_then_answer() {
            let (eg, mut events) = egress();
            let port = shouting_server().await;
            let (f, mut peer) = guest_flow();
            let task = tokio::spawn(serve(eg.clone(), f, route(port)));
            let first = peer.from_handler.recv().await.unwrap();
            assert_eq!(&first[..], b"banner\n", "the server speaks first");
            peer.to_handler
                .send(Bytes::from_static(b"hello "))
                .await
                .unwrap();
            peer.to_handler
                .send(Bytes::from_static(b"world"))
                .await
                .unwrap();
            drop(peer.to_handler); // the guest's FIN
            let mut rest = Vec::new();
            while let Some(b) = peer.from_handler.recv().await {
                rest.extend_from_slice(&b);
            }
            assert_eq!(rest, b"HELLO WORLD");
            task.await.unwrap();
            assert!(!peer.shared.reset.load(Ordering::Acquire));
            let e = events.recv().await.unwrap();
            assert_eq!(
                (e.protocol, e.host.as_str(), e.allowed, e.reason, e.bytes),
                ("tcp", "db.internal:5432", true, None, 18)
            );
        }

        #[tokio::test]
        async fn a_refused_upstream_resets_the_guest_and_says_why() {
            let (eg, mut events) = egress();
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            let (f, peer) = guest_flow();
            serve(eg, f, route(port)).await;
            assert!(peer.shared.reset.load(Ordering::Acquire));
            let e = events.recv().await.unwrap();
            assert!(!e.allowed);
            let why = e.reason.unwrap();
            assert!(
                why.starts_with(&format!("upstream connect failed: 127.0.0.1:{port}: ")),
                "{why}"
            );
        }

        #[tokio::test]
        async fn flows_beyond_the_cap_are_reset() {
            let (eg, mut events) = egress();
            let held = eg
                .tcp
                .slots
                .clone()
                .acquire_many_owned(MAX_MAPPED_FLOWS as u32)
                .await
                .unwrap();
            let (f, peer) = guest_flow();
            serve(eg.clone(), f, route(1)).await;
            assert!(peer.shared.reset.load(Ordering::Acquire));
            let e = events.recv().await.unwrap();
            assert_eq!(
                (e.allowed, e.reason.as_deref()),
                (false, Some("too-many-mapped-flows"))
            );
            drop(held);
        }

        #[tokio::test]
        async fn the_vm_network_going_away_ends_open_flows() {
            let (eg, mut events) = egress();
            // Keeps its end open and silent: only our close ends it.
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
                let _ = seen_tx.send(sink);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(s);
            });
            let (f, peer) = guest_flow();
            let task = tokio::spawn(serve(eg.clone(), f, route(port)));
            peer.to_handler
                .send(Bytes::from_static(b"ping"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!task.is_finished(), "an idle open flow stays open");
            drop(eg); // the stack's handler (and so the Egress) is gone
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the flow ended")
                .unwrap();
            let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx)
                .await
                .expect("the upstream saw its connection end")
                .unwrap();
            assert_eq!(seen, b"ping");
            let e = events.recv().await.unwrap();
            assert_eq!(
                e.reason.as_deref(),
                Some("flow aborted: the VM's network is gone")
            );
            drop(peer);
        }

        #[tokio::test]
        async fn only_per_host_names_in_the_table_route() {
            let (eg, _) = egress();
            let dns = DnsServer::new(crate::net::dns::DnsConfig {
                per_host: true,
                ..Default::default()
            });
            eg.set_tcp_map(parse(&[("db.internal:5432", "127.0.0.1:1")]).unwrap());
            // A query for db.internal hands out its per-host address.
            let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in ["db", "internal"] {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            let crate::net::dns::DnsAction::Reply(r) = dns.handle(&q, crate::net::GATEWAY_IP)
            else {
                panic!("no reply")
            };
            let ip = Ipv4Addr::new(
                r[r.len() - 4],
                r[r.len() - 3],
                r[r.len() - 2],
                r[r.len() - 1],
            );
            let r = eg.tcp.route(&dns, SocketAddrV4::new(ip, 5432)).unwrap();
            assert_eq!((r.label.as_str(), r.target.port), ("db.internal:5432", 1));
            assert!(eg.tcp.route(&dns, SocketAddrV4::new(ip, 5433)).is_none());
            let other = Ipv4Addr::new(198, 19, 0, 200);
            assert!(eg.tcp.route(&dns, SocketAddrV4::new(other, 5432)).is_none());
        }
    }
}
