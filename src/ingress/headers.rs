//! Header work of the ingress gateway: hop-by-hop stripping (RFC 9110
//! §7.6.1), upgrade detection, the head sent to the guest, and the
//! pairs form the hooks see.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::listeners::Route;

pub(super) fn tokens(h: &HeaderMap, name: HeaderName) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `Connection: upgrade` with an `Upgrade` header: an upgrade request.
pub(super) fn is_upgrade_request(h: &HeaderMap) -> bool {
    tokens(h, header::CONNECTION).iter().any(|t| t == "upgrade") && h.contains_key(header::UPGRADE)
}

/// Upgrade intent without a proper upgrade request (426 upstream).
pub(super) fn has_upgrade_intent(h: &HeaderMap) -> bool {
    let nonempty = |n: &str| {
        h.get_all(n)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().is_empty())
    };
    nonempty("upgrade")
        || tokens(h, header::CONNECTION).iter().any(|t| t == "upgrade")
        || nonempty("sec-websocket-key")
}

pub(super) fn to_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub(super) fn from_pairs(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    h
}

/// Remove connection-level headers (and those `Connection` names); keep
/// `connection`/`upgrade` for a WebSocket upgrade.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    for n in tokens(h, header::CONNECTION) {
        if upgrade && n == "upgrade" {
            continue;
        }
        if let Ok(n) = HeaderName::from_bytes(n.as_bytes()) {
            h.remove(n);
        }
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "transfer-encoding",
        "te",
        "trailer",
    ] {
        h.remove(n);
    }
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// The head sent to the guest: the (patched) client headers without
/// hop-by-hop ones, the length re-decided, `connection: close` (or
/// `upgrade`), and the `x-forwarded-*` set.
pub(super) fn upstream_headers(
    pairs: &[(String, String)],
    client: &HeaderMap,
    route: &Route,
    client_ip: &str,
    upgrade: bool,
) -> HeaderMap {
    let mut h = from_pairs(pairs);
    strip_hop_by_hop(&mut h, upgrade);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::EXPECT);
    // A length next to Transfer-Encoding is ignored (the body is re-chunked).
    if !client.contains_key(header::TRANSFER_ENCODING) {
        if let Some(cl) = client.get(header::CONTENT_LENGTH) {
            h.insert(header::CONTENT_LENGTH, cl.clone());
        }
    }
    let client_host = client
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    if !h.contains_key(header::HOST) {
        h.insert(header::HOST, client_host.clone());
    }
    let connection = if upgrade { "upgrade" } else { "close" };
    h.insert(header::CONNECTION, HeaderValue::from_static(connection));
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client_ip}"),
        _ => client_ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-host", client_host);
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if route.strip_prefix && route.prefix != "/" {
        if let Ok(v) = HeaderValue::from_str(&route.prefix) {
            h.insert("x-forwarded-prefix", v);
        }
    }
    h
}
