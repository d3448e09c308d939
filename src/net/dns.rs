//! DNS for the guest (UDP port 53 to any address).
//!
//! `synthetic` (default) answers every A/AAAA query itself with a fixed
//! address: the HTTP layer decides by Host header and SNI, never by IP, so
//! the address only has to route to us. `per-host` mapping gives each name
//! its own address in 198.19.0.0/16 so a flow can be traced back to a name.
//! `trusted` forwards valid queries to the host's (or the configured)
//! IPv4 resolvers; `open` forwards to whatever address the guest asked.
//!
//! Queries come from the guest: parsing is bounded and strict, and anything
//! odd gets no answer at all.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    Synthetic,
    Trusted,
    Open,
}

impl DnsMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "synthetic" => Ok(Self::Synthetic),
            "trusted" => Ok(Self::Trusted),
            "open" => Ok(Self::Open),
            other => Err(format!(
                "dns.mode must be \"synthetic\", \"trusted\" or \"open\" (got {other:?})"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub mode: DnsMode,
    pub synthetic_v4: Ipv4Addr,
    pub synthetic_v6: Ipv6Addr,
    pub ttl: u32,
    pub per_host: bool,
    /// Resolvers for `trusted` (and `open` queries sent to the gateway).
    pub servers: Vec<Ipv4Addr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            mode: DnsMode::Synthetic,
            synthetic_v4: Ipv4Addr::new(192, 0, 2, 1),
            synthetic_v6: "2001:db8::1".parse().unwrap(),
            ttl: 60,
            per_host: false,
            servers: Vec::new(),
        }
    }
}

/// The host's own IPv4 resolvers from resolv.conf, without loopback ones
/// (a stub resolver on 127.0.0.53 is not reachable as the guest's peer).
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    parse_resolv_conf(&text)
}

fn parse_resolv_conf(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) {
            if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_broadcast() && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
    }
    out
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum DnsAction {
    Reply(Vec<u8>),
    Forward(SocketAddrV4),
    Drop,
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_REFUSED: u8 = 5;
const MAX_QUESTIONS: u16 = 16;
const MAX_LABELS: usize = 128;
/// Names per VM in per-host mode: 198.19.0.1 – 198.19.255.254.
const PER_HOST_CAPACITY: usize = 256 * 254;

/// A validated query: the first question's name, type, class and its raw
/// bytes (echoed in the answer).
#[derive(Debug)]
struct Query<'a> {
    id: [u8; 2],
    rd: bool,
    name: String,
    qtype: u16,
    qclass: u16,
    question: &'a [u8],
}

/// Parse a query by the rules in the module doc; `None` = drop it.
fn parse_query(q: &[u8]) -> Option<Query<'_>> {
    if q.len() < 12 || q.len() > 512 {
        return None;
    }
    let flags = q[2];
    if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 {
        return None; // a response, or not a standard query
    }
    let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    let (qd, an, ns) = (count(4), count(6), count(8));
    if qd == 0 || qd > MAX_QUESTIONS || an != 0 || ns != 0 {
        return None;
    }
    let mut pos = 12;
    let mut first = None;
    for i in 0..qd {
        let start = pos;
        let mut labels = Vec::new();
        loop {
            let len = *q.get(pos)? as usize;
            pos += 1;
            if len == 0 {
                break;
            }
            if len > 63 || labels.len() >= MAX_LABELS {
                return None; // includes compression pointers (0xC0)
            }
            let label = q.get(pos..pos + len)?;
            labels.push(label);
            pos += len;
        }
        let tail = q.get(pos..pos + 4)?;
        pos += 4;
        if i == 0 {
            let mut name = String::new();
            for l in &labels {
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(l).to_ascii_lowercase());
            }
            first = Some(Query {
                id: [q[0], q[1]],
                rd: flags & 0x01 != 0,
                name,
                qtype: u16::from_be_bytes([tail[0], tail[1]]),
                qclass: u16::from_be_bytes([tail[2], tail[3]]),
                question: &q[start..pos],
            });
        }
    }
    first
}

/// Answers and forwards DNS for one VM.
#[derive(Debug)]
pub struct DnsServer {
    cfg: DnsConfig,
    per_host: Mutex<HashMap<String, Ipv4Addr>>,
    by_ip: Mutex<HashMap<Ipv4Addr, String>>,
    next: AtomicUsize,
}

impl DnsServer {
    pub fn new(cfg: DnsConfig) -> Self {
        DnsServer {
            cfg,
            per_host: Mutex::new(HashMap::new()),
            by_ip: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    /// The name a per-host synthetic address was handed out for.
    pub fn name_for(&self, ip: Ipv4Addr) -> Option<String> {
        self.by_ip.lock().unwrap().get(&ip).cloned()
    }

    /// Decide what to do with a query the guest sent to `dst`.
    pub fn handle(&self, query: &[u8], dst: Ipv4Addr) -> DnsAction {
        match self.cfg.mode {
            DnsMode::Open => {
                if query.len() < 12 {
                    return DnsAction::Drop;
                }
                let target = if dst == super::GATEWAY_IP {
                    match self.pick_server() {
                        Some(s) => s,
                        None => return DnsAction::Drop,
                    }
                } else {
                    dst
                };
                DnsAction::Forward(SocketAddrV4::new(target, 53))
            }
            DnsMode::Trusted => match (parse_query(query), self.pick_server()) {
                (Some(_), Some(s)) => DnsAction::Forward(SocketAddrV4::new(s, 53)),
                _ => DnsAction::Drop,
            },
            DnsMode::Synthetic => match parse_query(query) {
                Some(q) => DnsAction::Reply(self.synthesize(&q)),
                None => DnsAction::Drop,
            },
        }
    }

    fn pick_server(&self) -> Option<Ipv4Addr> {
        let s = &self.cfg.servers;
        if s.is_empty() {
            return None;
        }
        Some(s[self.next.fetch_add(1, Ordering::Relaxed) % s.len()])
    }

    fn synthetic_v4(&self, name: &str) -> Ipv4Addr {
        if !self.cfg.per_host || name.is_empty() || name.len() > 253 {
            return self.cfg.synthetic_v4;
        }
        let mut map = self.per_host.lock().unwrap();
        if let Some(ip) = map.get(name) {
            return *ip;
        }
        let i = map.len();
        if i >= PER_HOST_CAPACITY {
            return self.cfg.synthetic_v4;
        }
        let ip = Ipv4Addr::new(198, 19, (i / 254) as u8, (i % 254 + 1) as u8);
        map.insert(name.to_string(), ip);
        self.by_ip.lock().unwrap().insert(ip, name.to_string());
        ip
    }

    fn synthesize(&self, q: &Query<'_>) -> Vec<u8> {
        let name = q.name.trim_end_matches('.');
        let local = name == "localhost" || name.ends_with(".localhost");
        let rdata: Option<Vec<u8>> = match (q.qclass, q.qtype) {
            (CLASS_IN, TYPE_A) if local => Some(Ipv4Addr::LOCALHOST.octets().to_vec()),
            (CLASS_IN, TYPE_AAAA) if local => Some(Ipv6Addr::LOCALHOST.octets().to_vec()),
            (CLASS_IN, TYPE_A) => Some(self.synthetic_v4(name).octets().to_vec()),
            (CLASS_IN, TYPE_AAAA) => Some(self.cfg.synthetic_v6.octets().to_vec()),
            _ => None,
        };
        let mut out = Vec::with_capacity(12 + q.question.len() + 28);
        out.extend_from_slice(&q.id);
        out.push(0x80 | u8::from(q.rd)); // QR, opcode 0, RD copied
        out.push(0x80 | if rdata.is_some() { 0 } else { RCODE_REFUSED }); // RA
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&u16::from(rdata.is_some()).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(q.question);
        if let Some(rd) = rdata {
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&q.qtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&self.cfg.ttl.to_be_bytes());
            out.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            out.extend_from_slice(&rd);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(names: &[&str], qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00];
        q.extend_from_slice(&(names.len() as u16).to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        for n in names {
            for l in n.split('.') {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.push(0);
            q.extend_from_slice(&qtype.to_be_bytes());
            q.extend_from_slice(&CLASS_IN.to_be_bytes());
        }
        q
    }

    fn reply(s: &DnsServer, q: &[u8]) -> Vec<u8> {
        match s.handle(q, super::super::GATEWAY_IP) {
            DnsAction::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// The answer's rdata (A or AAAA), found by its length field.
    fn answer(r: &[u8]) -> &[u8] {
        for n in [4usize, 16] {
            if r.len() >= n + 2 && r[r.len() - n - 2..r.len() - n] == (n as u16).to_be_bytes() {
                return &r[r.len() - n..];
            }
        }
        panic!("no A/AAAA rdata in {r:?}")
    }

    #[test]
    fn synthetic_a_and_aaaa_with_ttl() {
        let s = DnsServer::new(DnsConfig::default());
        let r = reply(&s, &query(&["example.com"], TYPE_A));
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2], 0x81, "QR|RD");
        assert_eq!(r[3], 0x80, "RA, NOERROR");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 10..r.len() - 6], &60u32.to_be_bytes());
        assert_eq!(answer(&r), &[192, 0, 2, 1]);
        let r = reply(&s, &query(&["example.com"], TYPE_AAAA));
        assert_eq!(
            answer(&r),
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn localhost_is_loopback() {
        let s = DnsServer::new(DnsConfig::default());
        assert_eq!(
            answer(&reply(&s, &query(&["localhost"], TYPE_A))),
            &[127, 0, 0, 1]
        );
        assert_eq!(
            answer(&reply(&s, &query(&["api.localhost"], TYPE_A))),
            &[127, 0, 0, 1]
        );
        assert_eq!(
            answer(&reply(&s, &query(&["x.localhost"], TYPE_AAAA))),
            &Ipv6Addr::LOCALHOST.octets()
        );
    }

    #[test]
    fn only_the_first_question_is_answered() {
        let s = DnsServer::new(DnsConfig::default());
        let r = reply(&s, &query(&["a.com", "b.com"], TYPE_A));
        assert_eq!(&r[4..6], &[0, 1], "QDCOUNT=1");
        assert_eq!(&r[6..8], &[0, 1]);
    }

    #[test]
    fn other_types_are_refused() {
        let s = DnsServer::new(DnsConfig::default());
        let r = reply(&s, &query(&["example.com"], 16));
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
        assert_eq!(&r[6..8], &[0, 0]);
    }

    #[test]
    fn hostile_queries_get_no_answer() {
        let s = DnsServer::new(DnsConfig::default());
        let mut compressed = query(&["a.com"], TYPE_A);
        compressed.truncate(12);
        compressed.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let mut response = query(&["a.com"], TYPE_A);
        response[2] |= 0x80;
        let mut with_answer = query(&["a.com"], TYPE_A);
        with_answer[7] = 1;
        let mut too_many = query(&["a.com"], TYPE_A);
        too_many[5] = 17;
        let mut truncated = query(&["example.com"], TYPE_A);
        truncated.truncate(20);
        let long_label = query(&[&"x".repeat(64)], TYPE_A);
        let many_labels = query(&[&vec!["a"; 129].join(".")], TYPE_A);
        for (what, q) in [
            ("compression", compressed),
            ("response", response),
            ("answer count", with_answer),
            ("17 questions", too_many),
            ("truncated", truncated),
            ("64-byte label", long_label),
            ("129 labels", many_labels),
            ("short", vec![0; 11]),
        ] {
            assert_eq!(
                s.handle(&q, super::super::GATEWAY_IP),
                DnsAction::Drop,
                "{what}"
            );
        }
    }

    #[test]
    fn per_host_mapping_is_stable_and_reversible() {
        let s = DnsServer::new(DnsConfig {
            per_host: true,
            ..DnsConfig::default()
        });
        let a = answer(&reply(&s, &query(&["A.example.com"], TYPE_A))).to_vec();
        let b = answer(&reply(&s, &query(&["b.example.com"], TYPE_A))).to_vec();
        let a2 = answer(&reply(&s, &query(&["a.example.com"], TYPE_A))).to_vec();
        assert_eq!(a, vec![198, 19, 0, 1]);
        assert_eq!(b, vec![198, 19, 0, 2]);
        assert_eq!(a, a2, "case-insensitive and stable");
        assert_eq!(
            s.name_for(Ipv4Addr::new(198, 19, 0, 2)).as_deref(),
            Some("b.example.com")
        );
    }

    #[test]
    fn trusted_forwards_only_valid_queries() {
        let s = DnsServer::new(DnsConfig {
            mode: DnsMode::Trusted,
            servers: vec![Ipv4Addr::new(9, 9, 9, 9), Ipv4Addr::new(1, 1, 1, 1)],
            ..DnsConfig::default()
        });
        let q = query(&["a.com"], TYPE_A);
        let gw = super::super::GATEWAY_IP;
        assert_eq!(
            s.handle(&q, gw),
            DnsAction::Forward("9.9.9.9:53".parse().unwrap())
        );
        assert_eq!(
            s.handle(&q, gw),
            DnsAction::Forward("1.1.1.1:53".parse().unwrap())
        );
        assert_eq!(s.handle(&[0; 5], gw), DnsAction::Drop);
        let open = DnsServer::new(DnsConfig {
            mode: DnsMode::Open,
            ..DnsConfig::default()
        });
        assert_eq!(
            open.handle(&q, Ipv4Addr::new(8, 8, 4, 4)),
            DnsAction::Forward("8.8.4.4:53".parse().unwrap())
        );
    }

    #[test]
    fn resolv_conf_skips_loopback_and_ipv6() {
        let r = parse_resolv_conf(
            "# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 10.0.0.2\nnameserver 1.1.1.1\n",
        );
        assert_eq!(
            r,
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }
}
