//! `tcp` (upstream's `TcpOptions`, host-mapped raw TCP egress): the shape
//! of the option, the table itself (`http::tcp_map::TcpMap::parse`, with
//! upstream's messages) and the DNS settings it needs, checked when the VM
//! is constructed. The network reads the same table again when it starts.

use super::{check_keys, OptValue, OptionError};
use crate::http::tcp_map::TcpMap;
use crate::net::dns::DnsMode;

/// `tcp` (or `sandbox.tcp`, which wins) checked against `dns` (likewise).
/// `Ok(None)` when there is no mapping.
pub fn check(tcp: &OptValue, dns: &OptValue) -> Result<Option<TcpMap>, OptionError> {
    let hosts = match tcp {
        OptValue::Undefined | OptValue::Null => return Ok(None),
        OptValue::Object(_) => {
            check_keys(tcp.keys(), "tcp", "tcp")?;
            tcp.get("hosts")
        }
        _ => return Err(OptionError(
            "tcp must be an object like { hosts: { \"db.internal:5432\": \"127.0.0.1:5432\" } }"
                .into(),
        )),
    };
    let OptValue::Object(entries) = hosts else {
        return Err(OptionError(format!(
            "tcp.hosts must be an object mapping \"GUEST_HOST[:PORT]\" to \"UPSTREAM_HOST:PORT\" (got {})",
            hosts.to_json()
        )));
    };
    let mut pairs = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        match v {
            OptValue::String(v) => pairs.push((k.as_str(), v.as_str())),
            v => {
                return Err(OptionError(format!(
                    "tcp.hosts[{}] must be a string \"UPSTREAM_HOST:PORT\" (got {})",
                    serde_json::to_string(k).unwrap_or_default(),
                    v.to_json()
                )))
            }
        }
    }
    let map = TcpMap::parse(pairs).map_err(OptionError)?;
    // Upstream's default mode is synthetic; a mode or mapping JS refuses
    // as unknown is left to that check (js/net.cjs netOptions).
    let mode = match dns.get("mode") {
        OptValue::Undefined => DnsMode::Synthetic,
        OptValue::String(m) => match DnsMode::parse(m) {
            Ok(m) => m,
            Err(_) => return Ok(Some(map)),
        },
        _ => return Ok(Some(map)),
    };
    let per_host = match dns.get("syntheticHostMapping") {
        OptValue::String(m) if m == "per-host" => Some(true),
        OptValue::String(m) if m == "single" => Some(false),
        _ => None,
    };
    map.dns_per_host(mode, per_host).map_err(OptionError)?;
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::super::resolve;
    use super::super::tests::{obj, s};
    use super::*;

    fn refused(o: OptValue) -> String {
        resolve(&o, None).unwrap_err().0
    }
    fn hosts(entries: &[(&str, OptValue)]) -> OptValue {
        obj(&[("hosts", obj(entries))])
    }

    #[test]
    fn tcp_is_checked_at_construction() {
        let ok = resolve(
            &obj(&[("tcp", hosts(&[("db.internal:5432", s("127.0.0.1:5432"))]))]),
            None,
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(
            refused(obj(&[("tcp", hosts(&[("db", s("127.0.0.1"))]))])),
            "tcp.hosts value requires an explicit :PORT: 127.0.0.1"
        );
        // sandbox.tcp wins over tcp.
        assert_eq!(
            refused(obj(&[
                ("tcp", hosts(&[("db", s("127.0.0.1:1"))])),
                ("sandbox", obj(&[("tcp", hosts(&[("*.x", s("a:1"))]))])),
            ])),
            "tcp.hosts key does not support wildcard '*': *.x"
        );
        assert_eq!(
            refused(obj(&[("tcp", hosts(&[("db", OptValue::Number(5.0))]))])),
            "tcp.hosts[\"db\"] must be a string \"UPSTREAM_HOST:PORT\" (got 5)"
        );
        assert!(refused(obj(&[("tcp", obj(&[]))])).starts_with("tcp.hosts must be an object"));
        assert!(refused(obj(&[("tcp", s("x"))])).starts_with("tcp must be an object"));
        assert_eq!(
            refused(obj(&[("tcp", obj(&[("host", obj(&[]))]))])),
            "unknown option tcp.host; did you mean tcp.hosts?"
        );
    }

    #[test]
    fn tcp_needs_synthetic_per_host_dns() {
        let tcp = hosts(&[("db", s("127.0.0.1:1"))]);
        let with_dns = |dns: OptValue| obj(&[("tcp", tcp.clone()), ("dns", dns)]);
        assert_eq!(
            refused(with_dns(obj(&[("mode", s("trusted"))]))),
            "tcp host mapping requires dns mode 'synthetic'"
        );
        assert_eq!(
            refused(with_dns(obj(&[("syntheticHostMapping", s("single"))]))),
            "tcp host mapping requires dns syntheticHostMapping='per-host'"
        );
        assert!(resolve(
            &with_dns(obj(&[("syntheticHostMapping", s("per-host"))])),
            None
        )
        .is_ok());
        // An empty table needs nothing.
        assert!(resolve(
            &obj(&[("tcp", hosts(&[])), ("dns", obj(&[("mode", s("open"))]))]),
            None
        )
        .is_ok());
    }
}
