//! What a new TCP flow speaks, from its first bytes.

/// Bytes buffered while deciding.
pub const SNIFF_LIMIT: usize = 8 * 1024;

/// TRACE and TRACK are recognised so the bridge can answer them 405.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE", "TRACK",
];

#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read more.
    Undecided,
    Http,
    Tls,
    /// An `SSH-` banner on a port SSH egress listens on.
    Ssh,
    /// Reset the flow; the reason is reported.
    Deny(&'static str),
}

pub fn classify(b: &[u8]) -> Kind {
    classify_on(b, false)
}

/// [`classify`], where `ssh_port` says the destination port is one SSH
/// egress is configured for: only there does `SSH-` mean SSH.
pub fn classify_on(b: &[u8], ssh_port: bool) -> Kind {
    if b.is_empty() {
        return Kind::Undecided;
    }
    if ssh_port {
        let n = b.len().min(4);
        if b[..n] == b"SSH-"[..n] {
            return if n == 4 { Kind::Ssh } else { Kind::Undecided };
        }
    }
    if b[0] == 0x16 {
        if b.len() < 3 {
            return Kind::Undecided;
        }
        return if b[1] == 0x03 && b[2] <= 0x03 {
            Kind::Tls
        } else {
            Kind::Deny("unknown-protocol")
        };
    }
    // An HTTP method, a space, and eventually a whole request line.
    let could_be_method = METHODS.iter().any(|m| {
        let m = m.as_bytes();
        let n = b.len().min(m.len() + 1);
        let mut want = m.to_vec();
        want.push(b' ');
        b[..n] == want[..n]
    });
    if !could_be_method {
        return Kind::Deny("unknown-protocol");
    }
    let Some(eol) = b.iter().position(|&c| c == b'\n') else {
        return if b.len() >= SNIFF_LIMIT {
            Kind::Deny("sniff-limit-exceeded")
        } else {
            Kind::Undecided
        };
    };
    let line = String::from_utf8_lossy(&b[..eol]);
    let line = line.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Kind::Deny("unknown-protocol");
    };
    if target.is_empty() || !version.starts_with("HTTP/1.") {
        return Kind::Deny("unknown-protocol");
    }
    if method == "CONNECT" {
        return Kind::Deny("connect-not-allowed");
    }
    Kind::Http
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n"), Kind::Http);
        assert_eq!(classify(b"POST /x HTTP/1.0\n"), Kind::Http);
        assert_eq!(classify(b"GE"), Kind::Undecided);
        assert_eq!(classify(b"GET /very/long"), Kind::Undecided);
        assert_eq!(
            classify(b"CONNECT a.com:443 HTTP/1.1\r\n"),
            Kind::Deny("connect-not-allowed")
        );
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH\r\n"),
            Kind::Deny("unknown-protocol")
        );
        assert_eq!(
            classify(b"GET / SPDY/3\r\n"),
            Kind::Deny("unknown-protocol")
        );
        assert_eq!(classify_on(b"SSH-2.0-OpenSSH\r\n", true), Kind::Ssh);
        assert_eq!(classify_on(b"SS", true), Kind::Undecided);
        assert_eq!(classify_on(b"GET / HTTP/1.1\r\n", true), Kind::Http);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Kind::Tls);
        assert_eq!(classify(&[0x16, 0x03]), Kind::Undecided);
        assert_eq!(
            classify(&[0x16, 0x04, 0x01]),
            Kind::Deny("unknown-protocol")
        );
        let mut long = b"GET /".to_vec();
        long.resize(SNIFF_LIMIT, b'a');
        assert_eq!(classify(&long), Kind::Deny("sniff-limit-exceeded"));
    }
}
