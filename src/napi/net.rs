//! The guest network as JS sees it: options in, a secrets handle, the MITM
//! CA for the guest, egress events out.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use napi::Env;
use napi_derive::napi;
use tokio::sync::{mpsc, Mutex};

use super::error::{IntoJs, JsFailure};
use gondolin::error::ErrorCode;
use gondolin::http::policy::{check_glob, patterns};
use gondolin::http::secrets::{placeholders, PlaceholderMode, Secret, Secrets};
use gondolin::http::tcp_map::TcpMap;
use gondolin::http::{Egress, EgressEvent, EgressHandler, Policy};
use gondolin::net::dns::{host_resolvers, DnsConfig, DnsMode, DnsServer};
use gondolin::net::{NetConfig, NetStats};
use gondolin::tls::MitmCa;
use gondolin::vm::NetAttach;

#[napi(object)]
pub struct NativeNetOptions {
    pub dns_mode: Option<String>,
    pub trusted_servers: Option<Vec<String>>,
    pub synthetic_ipv4: Option<String>,
    pub synthetic_ipv6: Option<String>,
    pub synthetic_ttl_seconds: Option<u32>,
    pub per_host_mapping: Option<bool>,
    /// Absent = every host; empty = none.
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_internal_hosts: Option<Vec<String>>,
    pub block_internal_ranges: Option<bool>,
    pub allow_web_sockets: Option<bool>,
    pub max_http_body_bytes: Option<f64>,
    pub max_http_response_body_bytes: Option<f64>,
    pub max_flows: Option<u32>,
    /// Deliver egress events through `NativeVm.nextEgress()`.
    pub events: Option<bool>,
    // --- mapped TCP (tcp.hosts) ---
    /// `tcp.hosts` as `[key, value]` pairs, in object order (checked at
    /// construction by `resolveVmOptions`; `perHostMapping` unset then
    /// means on).
    pub tcp_hosts: Option<Vec<Vec<String>>>,
    // --- end mapped TCP ---
    /// SSH egress: the `NativeSsh.id` of the checked `ssh` option.
    pub ssh_id: Option<u32>,
}

#[napi(object)]
pub struct NativeSecretDef {
    pub name: String,
    pub value: String,
    pub hosts: Vec<String>,
    /// Chosen by the user (already produced, when it was a generator).
    pub placeholder: Option<String>,
}

#[napi(object)]
pub struct NativeSecretEntry {
    pub name: String,
    pub placeholder: String,
    pub hosts: Vec<String>,
    pub deleted: bool,
}

/// Secrets shared by every VM created with one `createHttpHooks` result.
#[napi]
pub struct NativeSecrets {
    pub(crate) inner: Arc<Secrets>,
}

#[napi]
impl NativeSecrets {
    /// `placeholder_mode`: "shared" (default) or "unique".
    #[napi(constructor)]
    pub fn new(
        env: &Env,
        defs: Vec<NativeSecretDef>,
        replace_in_query: Option<bool>,
        placeholder_mode: Option<String>,
    ) -> napi::Result<Self> {
        Self::build(defs, replace_in_query, placeholder_mode).js(env)
    }

    fn build(
        defs: Vec<NativeSecretDef>,
        replace_in_query: Option<bool>,
        placeholder_mode: Option<String>,
    ) -> Result<Self, JsFailure> {
        let mode =
            PlaceholderMode::parse(placeholder_mode.as_deref().unwrap_or("shared")).map_err(bad)?;
        for d in &defs {
            if d.name.is_empty() || !d.name.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
                return Err(bad(format!(
                    "secrets: invalid environment variable name {:?}",
                    d.name
                )));
            }
            globs(&d.hosts, &format!("secrets.{}.hosts", d.name))?;
        }
        let named: Vec<(String, Option<String>)> = defs
            .iter()
            .map(|d| (d.name.clone(), d.placeholder.clone()))
            .collect();
        let made = placeholders(mode, &named).map_err(bad)?;
        let list = defs
            .into_iter()
            .zip(made)
            .map(|(d, placeholder)| Secret {
                name: d.name,
                placeholder,
                value: d.value,
                hosts: patterns(&d.hosts),
                deleted: false,
                revoked: Vec::new(),
            })
            .collect();
        Ok(NativeSecrets {
            inner: Arc::new(Secrets::new(list, replace_in_query.unwrap_or(false))),
        })
    }

    #[napi]
    pub fn list(&self) -> Vec<NativeSecretEntry> {
        self.inner
            .snapshot()
            .into_iter()
            .map(|s| NativeSecretEntry {
                name: s.name,
                placeholder: s.placeholder,
                hosts: s.hosts.iter().map(|h| h.as_str().to_string()).collect(),
                deleted: s.deleted,
            })
            .collect()
    }

    #[napi]
    pub fn update(
        &self,
        env: &Env,
        name: String,
        value: Option<String>,
        hosts: Option<Vec<String>>,
    ) -> napi::Result<()> {
        if let Some(h) = &hosts {
            globs(h, "updateSecret: hosts").js(env)?;
        }
        self.inner.update(&name, value, hosts).map_err(bad).js(env)
    }

    #[napi]
    pub fn delete(&self, env: &Env, name: String) -> napi::Result<()> {
        self.inner.delete(&name).map_err(bad).js(env)
    }
}

/// Refuse regex-looking host patterns (see [`check_glob`]).
pub(crate) fn globs(list: &[String], what: &str) -> Result<(), JsFailure> {
    for p in list {
        check_glob(p).map_err(|e| bad(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// The MITM CA certificate (PEM) guests are told to trust.
#[napi]
pub fn mitm_ca_pem(env: &Env) -> napi::Result<String> {
    MitmCa::shared()
        .map(|ca| ca.ca_pem())
        .map_err(ca_failed)
        .js(env)
}

fn ca_failed(e: impl std::fmt::Display) -> JsFailure {
    JsFailure::new(ErrorCode::MitmCaFailed, e)
}

#[napi(object)]
pub struct NativeEgressEvent {
    pub protocol: String,
    pub host: String,
    pub method: String,
    pub url: String,
    pub allowed: bool,
    pub reason: Option<String>,
    pub status: Option<u32>,
    pub bytes: f64,
}

impl From<EgressEvent> for NativeEgressEvent {
    fn from(e: EgressEvent) -> Self {
        NativeEgressEvent {
            protocol: e.protocol.to_string(),
            host: e.host,
            method: e.method,
            url: e.url,
            allowed: e.allowed,
            reason: e.reason,
            status: e.status.map(u32::from),
            bytes: e.bytes as f64,
        }
    }
}

pub(crate) type EgressEvents = Arc<Mutex<mpsc::Receiver<EgressEvent>>>;

fn bad(msg: impl std::fmt::Display) -> JsFailure {
    JsFailure::new(ErrorCode::InvalidOption, msg)
}

/// Build the VM's network from JS options.
pub(crate) fn attach(
    o: NativeNetOptions,
    secrets: Option<&NativeSecrets>,
    hooks: Option<Arc<dyn gondolin::http::hooks::HttpHooks>>,
) -> Result<(NetAttach, Option<EgressEvents>), JsFailure> {
    let mode = DnsMode::parse(o.dns_mode.as_deref().unwrap_or("synthetic")).map_err(bad)?;
    // --- mapped TCP: the table, and the per-host DNS it turns on ---
    let tcp_pairs = o.tcp_hosts.as_deref().unwrap_or(&[]).iter().map(|p| {
        let at = |i: usize| p.get(i).map_or("", String::as_str);
        (at(0), at(1))
    });
    let tcp_map = TcpMap::parse(tcp_pairs).map_err(bad)?;
    let mut per_host = tcp_map
        .dns_per_host(mode, o.per_host_mapping)
        .map_err(bad)?;
    // --- end mapped TCP ---
    // SSH egress: its config, and the per-host DNS it turns on.
    let ssh = o.ssh_id.map(crate::ssh::lookup).transpose()?;
    if let Some(ssh) = &ssh {
        per_host |= ssh.check_dns(mode, o.per_host_mapping).map_err(bad)?;
    }
    let mut dns = DnsConfig {
        mode,
        per_host,
        ..DnsConfig::default()
    };
    if let Some(v4) = &o.synthetic_ipv4 {
        dns.synthetic_v4 = v4.parse::<Ipv4Addr>().map_err(|_| {
            bad(format!(
                "dns.syntheticIPv4 must be an IPv4 address (got {v4:?})"
            ))
        })?;
    }
    if let Some(v6) = &o.synthetic_ipv6 {
        dns.synthetic_v6 = v6.parse::<Ipv6Addr>().map_err(|_| {
            bad(format!(
                "dns.syntheticIPv6 must be an IPv6 address (got {v6:?})"
            ))
        })?;
    }
    if let Some(ttl) = o.synthetic_ttl_seconds {
        dns.ttl = ttl;
    }
    dns.servers = match &o.trusted_servers {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|s| {
                s.parse::<Ipv4Addr>().map_err(|_| {
                    bad(format!(
                        "dns.trustedServers entries must be IPv4 addresses (got {s:?})"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        _ => host_resolvers(),
    };
    if mode == DnsMode::Trusted && dns.servers.is_empty() {
        return Err(bad("dns mode 'trusted' requires at least one IPv4 resolver (none found). Provide an IPv4 resolver via --dns-trusted-server or configure an IPv4 DNS server on the host"));
    }
    if mode == DnsMode::Open && dns.servers.is_empty() {
        dns.servers.push(Ipv4Addr::new(8, 8, 8, 8));
    }
    let max_body = match o.max_http_body_bytes {
        None => 64 * 1024 * 1024,
        Some(v) if v.is_finite() && v >= 0.0 => v as u64,
        Some(v) => {
            return Err(bad(format!(
                "maxHttpBodyBytes must be a non-negative number (got {v})"
            )))
        }
    };
    let max_response = match o.max_http_response_body_bytes {
        None => 64 * 1024 * 1024,
        Some(v) if v.is_finite() && v >= 0.0 => v as u64,
        Some(v) => {
            return Err(bad(format!(
                "maxHttpResponseBodyBytes must be a non-negative number (got {v})"
            )))
        }
    };
    let policy = Policy {
        allowed_hosts: o.allowed_hosts.as_ref().map(|l| patterns(l)),
        allowed_internal: patterns(o.allowed_internal_hosts.as_deref().unwrap_or(&[])),
        block_internal: o.block_internal_ranges.unwrap_or(true),
        secrets: secrets.map(|s| s.inner.clone()).unwrap_or_default(),
        allow_websockets: o.allow_web_sockets.unwrap_or(true),
        max_request_body: max_body,
        max_response_body: max_response,
        hooks,
    };
    let ca = MitmCa::shared().map_err(ca_failed)?;
    let dns_server = Arc::new(DnsServer::new(dns.clone()));
    let (events_tx, events) = if o.events.unwrap_or(false) {
        let (tx, rx) = mpsc::channel(1024);
        (Some(tx), Some(Arc::new(Mutex::new(rx))))
    } else {
        (None, None)
    };
    let egress = Egress::new(policy, ca, dns_server.clone(), events_tx);
    egress.set_tcp_map(tcp_map); // mapped TCP
    if let Some(ssh) = ssh {
        egress.set_ssh(ssh); // SSH egress
    }
    let config = NetConfig {
        dns,
        max_flows: o
            .max_flows
            .map(|n| n.max(1) as usize)
            .unwrap_or(gondolin::net::DEFAULT_MAX_FLOWS),
    };
    Ok((
        NetAttach {
            config,
            dns: dns_server,
            handler: Arc::new(EgressHandler(egress)),
            stats: Arc::new(NetStats::default()),
            dial: Default::default(),
        },
        events,
    ))
}
