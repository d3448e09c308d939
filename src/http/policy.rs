//! Who may be reached: host patterns, internal address ranges, secrets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A host pattern: case-insensitive, `*` alone matches every host, `*`
/// inside matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn new(p: &str) -> Option<HostPattern> {
        let p = p.trim().to_ascii_lowercase();
        (!p.is_empty()).then_some(HostPattern(p))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        glob(self.0.as_bytes(), host.as_bytes())
    }
}

/// Refuse a pattern written as a regular expression (`.*`, `^api\.`,
/// `(a|b)`): patterns are globs, and a regex would silently match nothing
/// (or, read as a glob, something else). A host name never starts with a
/// dot nor holds any of `^$()[]{}+?|\`.
pub fn check_glob(p: &str) -> Result<(), String> {
    let t = p.trim();
    if t.starts_with('.')
        || t.contains(['^', '$', '(', ')', '[', ']', '{', '}', '+', '?', '|', '\\'])
    {
        return Err(format!(
            "host pattern {p:?} looks like a regular expression: patterns are globs; use '*' (\"*\" for every host, \"*.example.com\" for subdomains)"
        ));
    }
    Ok(())
}

/// `*` matches any run (including empty); everything else literally.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Normalized, deduplicated patterns.
pub fn patterns<S: AsRef<str>>(list: &[S]) -> Vec<HostPattern> {
    let mut out: Vec<HostPattern> = Vec::new();
    for p in list.iter().filter_map(|p| HostPattern::new(p.as_ref())) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

pub fn any_match(list: &[HostPattern], host: &str) -> bool {
    list.iter().any(|p| p.matches(host))
}

/// Loopback, private, link-local (cloud metadata), CGNAT, "this network",
/// broadcast; IPv6 loopback/unspecified/ULA/link-local/site-local, the
/// local-use NAT64 prefix, and every IPv6 form that embeds an IPv4 address
/// (judged by that address).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 0
        || a == 10
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..128).contains(&b))
        || a == 255
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    if embedded_v4(ip).iter().any(|v4| internal_v4(*v4)) {
        return true;
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // ULA
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
        // RFC 8215 local-use NAT64: the operator picks where the IPv4
        // address sits (any prefix length /48../96), so the whole /48 is
        // a way into the local network.
        || (s[0], s[1], s[2]) == (0x64, 0xff9b, 0x0001)
}

/// The IPv4 addresses an IPv6 address stands for, in every standard
/// embedding: v4-mapped `::ffff:a.b.c.d`, v4-compatible `::a.b.c.d`,
/// v4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:AABB:CCDD::`, and Teredo `2001:0::` (server, and the client
/// address stored inverted).
pub fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    let low = v4(s[6], s[7]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => vec![low],
        // `::` and `::1` are IPv6's own; the rest of ::/96 is v4-compatible.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => vec![],
        [0, 0, 0, 0, 0, 0, ..] => vec![low],
        [0, 0, 0, 0, 0xffff, 0, ..] => vec![low],
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => vec![low],
        [0x2002, hi, lo, ..] => vec![v4(hi, lo)],
        [0x2001, 0, hi, lo, ..] => vec![v4(hi, lo), v4(!s[6], !s[7])],
        _ => vec![],
    }
}

/// Whether `ip` is one of this machine's own interface addresses (a
/// service bound to 0.0.0.0 answers on every one of them). Interfaces
/// change, so the list is re-read at most once a second.
pub fn is_own_address(ip: IpAddr) -> bool {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static CACHE: Mutex<Option<(Instant, Vec<IpAddr>)>> = Mutex::new(None);
    let ip = canonical(ip);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = cache
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
    if !fresh {
        *cache = Some((Instant::now(), own_addresses()));
    }
    cache.as_ref().is_some_and(|(_, list)| list.contains(&ip))
}

/// An IPv6 address that embeds IPv4 the way the kernel would route it
/// (v4-mapped) compares as that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn own_addresses() -> Vec<IpAddr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        // Unknown: the built-in ranges still apply.
        tracing::warn!(target: "gondolin::net", "cannot read the host's interface addresses");
        return Vec::new();
    };
    list.filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| canonical(IpAddr::V6(v6.ip())))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::new(s).unwrap()
    }

    #[test]
    fn patterns_match_like_upstream() {
        assert!(p("example.com").matches("EXAMPLE.com"));
        assert!(p("example.com").matches("example.com."));
        assert!(!p("example.com").matches("api.example.com"));
        assert!(p("*.example.org").matches("a.b.Example.org"));
        assert!(!p("*.example.org").matches("example.org"));
        assert!(p("api.*.net").matches("api.eu.net"));
        assert!(!p("api.*.net").matches("api.eu.com"));
        assert!(p("*").matches("anything.at.all"));
        assert!(p("a**b.com").matches("ab.com"));
        assert!(!p("a*b").matches("ac"));
        assert_eq!(patterns(&[" A.com ", "a.com", "", "b.com"]).len(), 2);
    }

    #[test]
    fn regex_looking_patterns_are_refused() {
        for bad in [
            ".*",
            ".example.com",
            "^api\\.example\\.com$",
            "(a|b).com",
            "api.example.com?",
            "a+.com",
            "[ab].com",
        ] {
            assert!(
                check_glob(bad)
                    .unwrap_err()
                    .contains("patterns are globs; use '*'"),
                "{bad}"
            );
        }
        for good in [
            "*",
            "*.example.com",
            "api.*.net",
            "example.com",
            "foo.*",
            "a**b.com",
        ] {
            assert!(check_glob(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.1.1",
            "64:ff9b:1::808:808",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "93.184.216.34",
            "2606:4700::1",
            "::ffff:8.8.8.8",
            "::808:808",
            "::ffff:0:808:808",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:808:808::f7f7:f7f7",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// Every IPv6 embedding of each internal IPv4 address is internal.
    #[test]
    fn ipv6_embeddings_are_judged_by_their_ipv4_address() {
        for v4 in ["127.0.0.1", "169.254.169.254", "10.0.0.1", "192.168.0.1"] {
            let a: Ipv4Addr = v4.parse().unwrap();
            let [p, q, r, t] = a.octets();
            let (hi, lo) = (u16::from_be_bytes([p, q]), u16::from_be_bytes([r, t]));
            let forms = [
                format!("::ffff:{v4}"),                                    // v4-mapped
                format!("::{v4}"),                                         // v4-compatible
                format!("::{hi:x}:{lo:x}"),                                // v4-compatible, hex
                format!("::ffff:0:{v4}"),                                  // v4-translated
                format!("64:ff9b::{v4}"),                                  // NAT64 well-known
                format!("64:ff9b::{hi:x}:{lo:x}"),                         // NAT64, hex
                format!("64:ff9b:1::{hi:x}:{lo:x}"),                       // NAT64 local-use
                format!("2002:{hi:x}:{lo:x}::"),                           // 6to4
                format!("2002:{hi:x}:{lo:x}:1::1"),                        // 6to4, a host behind it
                format!("2001:0:{hi:x}:{lo:x}::"),                         // Teredo server
                format!("2001:0:4136:e378:8000:63bf:{:x}:{:x}", !hi, !lo), // Teredo client
            ];
            for f in forms {
                let ip: IpAddr = f.parse().unwrap_or_else(|_| panic!("{f} parses"));
                assert!(is_internal(ip), "{f} embeds {v4}");
            }
        }
        assert_eq!(
            embedded_v4("2002:7f00:1::".parse().unwrap()),
            vec![Ipv4Addr::LOCALHOST]
        );
        assert!(embedded_v4("2606:4700::1".parse().unwrap()).is_empty());
    }

    #[test]
    fn own_interface_addresses_are_recognised() {
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        assert!(is_own_address("::ffff:127.0.0.1".parse().unwrap()));
        let mine: Vec<IpAddr> = own_addresses();
        for ip in &mine {
            assert!(is_own_address(*ip), "{ip}");
        }
        assert!(!is_own_address("203.0.113.77".parse().unwrap()));
    }
}
