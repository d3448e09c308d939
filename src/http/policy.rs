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
/// broadcast; IPv6 loopback/unspecified/ULA/link-local and IPv4-mapped
/// forms of the IPv4 ranges.
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
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
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
            "::ffff:127.0.0.1",
            "::ffff:10.1.1.1",
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
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }
}
