//! SSH egress (`ssh` option) as JS sees it: [`NativeSsh`] checks the
//! option at VM construction and holds the core config; `hostVerifier`
//! and `execPolicy` reach JS through one dispatcher ([`SshDispatch`],
//! `js/ssh.cjs`) that always resolves.
//!
//! The VM's network finds the config by the id JS passes in
//! `NativeNetOptions.sshId` (a weak registry entry: the config lives as
//! long as the JS object holding it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use napi::bindgen_prelude::{Buffer, Promise};
use napi::Env;
use napi_derive::napi;

use super::error::{IntoJs, JsFailure};
use super::js_callback::{Component, JsCallback};
use gondolin::error::ErrorCode;
use gondolin::net::dns::DnsMode;
use gondolin::ssh::known_hosts::{default_files, KnownHosts};
use gondolin::ssh::{
    decode_key, parse_target, Credential, ExecDecision, ExecRequest, Limits, SshConfig, SshHooks,
};

#[napi(object)]
pub struct NativeSshCredential {
    /// The `credentials` key: `pattern[:PORT]`.
    pub target: String,
    pub username: Option<String>,
    pub private_key: String,
    pub passphrase: Option<String>,
}

#[napi(object)]
pub struct NativeSshOptions {
    pub allowed_hosts: Vec<String>,
    pub credentials: Option<Vec<NativeSshCredential>>,
    pub agent: Option<String>,
    pub known_hosts_files: Option<Vec<String>>,
    pub host_verifier: bool,
    pub exec_policy: bool,
    pub max_upstream_connections_per_tcp_session: Option<u32>,
    pub max_upstream_connections_total: Option<u32>,
    pub upstream_ready_timeout_ms: Option<u32>,
    pub upstream_keepalive_interval_ms: Option<u32>,
    pub upstream_keepalive_count_max: Option<u32>,
    pub host_key: Option<String>,
    /// Our extension `ssh.upstreams` as `[guestHost[:port], "host:port"]` pairs.
    pub upstreams: Option<Vec<Vec<String>>>,
    /// The VM's DNS settings, for upstream's construction checks.
    pub dns_mode: Option<String>,
    pub per_host_mapping: Option<bool>,
}

#[napi(object)]
pub struct SshHookCall {
    /// `"hostVerifier"` or `"execPolicy"`.
    pub hook: String,
    pub hostname: String,
    pub port: u32,
    /// hostVerifier: the key in SSH wire form.
    pub key: Option<Buffer>,
    pub guest_username: Option<String>,
    pub command: Option<String>,
    pub src_ip: Option<String>,
    pub src_port: Option<u32>,
}

#[napi(object)]
pub struct SshHookOutcome {
    pub allow: bool,
    pub exit_code: Option<u32>,
    pub message: Option<String>,
    /// The callback threw (or returned something malformed).
    pub error: Option<String>,
}

/// `(call) => Promise<SshHookOutcome>`.
pub type SshDispatch = JsCallback<SshHookCall, Promise<SshHookOutcome>>;

struct JsSshHooks {
    dispatch: SshDispatch,
    host_verifier: bool,
    exec_policy: bool,
}

#[async_trait]
impl SshHooks for JsSshHooks {
    fn has_host_verifier(&self) -> bool {
        self.host_verifier
    }
    fn has_exec_policy(&self) -> bool {
        self.exec_policy
    }
    async fn verify_host(&self, hostname: &str, key: Vec<u8>, port: u16) -> Result<bool, String> {
        let call = SshHookCall {
            hook: "hostVerifier".into(),
            hostname: hostname.to_string(),
            port: port.into(),
            key: Some(key.into()),
            guest_username: None,
            command: None,
            src_ip: None,
            src_port: None,
        };
        let out = self
            .dispatch
            .call(Component::Net, "hostVerifier", call)
            .await
            .map_err(|e| e.to_string())?;
        match out.error {
            Some(e) => Err(e),
            None => Ok(out.allow),
        }
    }
    async fn exec_policy(&self, req: ExecRequest) -> Result<ExecDecision, String> {
        let call = SshHookCall {
            hook: "execPolicy".into(),
            hostname: req.hostname,
            port: req.port.into(),
            key: None,
            guest_username: Some(req.guest_username),
            command: Some(req.command),
            src_ip: Some(req.src.ip().to_string()),
            src_port: Some(req.src.port().into()),
        };
        let out = self
            .dispatch
            .call(Component::Net, "execPolicy", call)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(e) = out.error {
            return Err(e);
        }
        Ok(if out.allow {
            ExecDecision::Allow
        } else {
            ExecDecision::Deny {
                exit_code: out.exit_code.unwrap_or(1),
                message: out.message,
            }
        })
    }
}

fn bad(msg: impl std::fmt::Display) -> JsFailure {
    JsFailure::new(ErrorCode::InvalidOption, msg)
}

/// The last id handed out, and the live configs by id.
type Registry = Mutex<(u32, HashMap<u32, Weak<SshConfig>>)>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The config registered under `id` (by a live [`NativeSsh`]).
pub(crate) fn lookup(id: u32) -> Result<Arc<SshConfig>, JsFailure> {
    registry()
        .lock()
        .unwrap()
        .1
        .get(&id)
        .and_then(Weak::upgrade)
        .ok_or_else(|| bad("ssh: the checked ssh options are gone (internal)"))
}

/// A checked `ssh` option.
#[napi]
pub struct NativeSsh {
    config: Arc<SshConfig>,
    id: u32,
}

#[napi]
impl NativeSsh {
    /// Check the option (upstream's messages) and load known_hosts.
    #[napi(constructor)]
    pub fn new(
        env: &Env,
        options: NativeSshOptions,
        #[napi(
            ts_arg_type = "((call: SshHookCall) => Promise<SshHookOutcome>) | undefined | null"
        )]
        dispatch: Option<SshDispatch>,
    ) -> napi::Result<Self> {
        let config = build(options, dispatch).js(env)?;
        let config = Arc::new(config);
        let mut r = registry().lock().unwrap();
        r.1.retain(|_, w| w.strong_count() > 0);
        r.0 = r.0.wrapping_add(1);
        let id = r.0;
        r.1.insert(id, Arc::downgrade(&config));
        Ok(NativeSsh { config, id })
    }

    /// Passed to `startVm` as `net.sshId`.
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether any host is allowed.
    #[napi(getter)]
    pub fn enabled(&self) -> bool {
        self.config.enabled()
    }
}

fn positive(v: Option<u32>, default: usize, name: &str) -> Result<usize, JsFailure> {
    match v {
        None => Ok(default),
        Some(0) => Err(bad(format!("ssh.{name} must be an integer > 0"))),
        Some(n) => Ok(n as usize),
    }
}

fn build(o: NativeSshOptions, dispatch: Option<SshDispatch>) -> Result<SshConfig, JsFailure> {
    let mut targets = Vec::new();
    for raw in &o.allowed_hosts {
        if let Some(t) = parse_target(raw) {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    let mut credentials = Vec::new();
    for c in o.credentials.unwrap_or_default() {
        let Some((pattern, port)) = parse_target(&c.target) else {
            continue;
        };
        let key = decode_key(&c.private_key, c.passphrase.as_deref()).map_err(|e| {
            bad(format!(
                "ssh.credentials[{:?}]: cannot read the private key: {e}",
                c.target
            ))
        })?;
        credentials.push(Arc::new(Credential {
            pattern,
            port,
            username: c.username,
            key: Arc::new(key),
        }));
    }
    let d = Limits::default();
    let limits = Limits {
        per_flow: positive(
            o.max_upstream_connections_per_tcp_session,
            d.per_flow,
            "maxUpstreamConnectionsPerTcpSession",
        )?,
        total: positive(
            o.max_upstream_connections_total,
            d.total,
            "maxUpstreamConnectionsTotal",
        )?,
        ready_timeout: Duration::from_millis(positive(
            o.upstream_ready_timeout_ms,
            d.ready_timeout.as_millis() as usize,
            "upstreamReadyTimeoutMs",
        )? as u64),
        keepalive_interval: o
            .upstream_keepalive_interval_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(d.keepalive_interval),
        keepalive_max: o
            .upstream_keepalive_count_max
            .map(|n| n as usize)
            .unwrap_or(d.keepalive_max),
    };
    let host_key = o
        .host_key
        .as_deref()
        .map(|pem| decode_key(pem, None).map_err(|e| bad(format!("ssh.hostKey: {e}"))))
        .transpose()?;
    let mut upstreams = HashMap::new();
    for pair in o.upstreams.unwrap_or_default() {
        let (k, v) = (
            pair.first().map_or("", String::as_str),
            pair.get(1).map_or("", String::as_str),
        );
        let key = match k.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| bad(format!("ssh.upstreams key has invalid port: {k}")))?;
                (h.trim_end_matches('.').to_ascii_lowercase(), Some(port))
            }
            _ => (k.trim_end_matches('.').to_ascii_lowercase(), None),
        };
        let value = v
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|&p| p > 0)?)))
            .filter(|(h, _)| !h.is_empty())
            .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p))
            .ok_or_else(|| bad(format!("ssh.upstreams value requires HOST:PORT: {v}")))?;
        if key.0.is_empty() || key.0.contains('*') {
            return Err(bad(format!(
                "ssh.upstreams key must be a host name (no wildcard): {k}"
            )));
        }
        upstreams.insert(key, value);
    }
    let hooks: Option<Arc<dyn SshHooks>> = dispatch
        .filter(|_| o.host_verifier || o.exec_policy)
        .map(|d| {
            Arc::new(JsSshHooks {
                dispatch: d,
                host_verifier: o.host_verifier,
                exec_policy: o.exec_policy,
            }) as Arc<dyn SshHooks>
        });
    let agent = o.agent.filter(|a| !a.is_empty()).map(PathBuf::from);
    // Upstream: known_hosts is loaded (and must load) when SSH is on with
    // a way to authenticate and no verifier of the host program's.
    let mut known_hosts = None;
    if !targets.is_empty() && !o.host_verifier && (agent.is_some() || !credentials.is_empty()) {
        let files: Vec<PathBuf> = match o.known_hosts_files {
            Some(f) if !f.is_empty() => {
                let mut out: Vec<PathBuf> = Vec::new();
                for p in f.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
                    if !out.iter().any(|x| x.as_os_str() == p) {
                        out.push(PathBuf::from(p));
                    }
                }
                out
            }
            _ => default_files(),
        };
        known_hosts = Some(KnownHosts::load(&files).map_err(|e| {
            bad(format!(
                "ssh egress requires ssh.hostVerifier to validate upstream host keys (failed to load known_hosts: {e})"
            ))
        })?);
    }
    let config = SshConfig {
        targets,
        credentials,
        agent,
        known_hosts,
        hooks,
        limits,
        host_key,
        upstreams,
    };
    let mode = DnsMode::parse(o.dns_mode.as_deref().unwrap_or("synthetic")).map_err(bad)?;
    config.check_dns(mode, o.per_host_mapping).map_err(bad)?;
    Ok(config)
}

/// `getInfoFromSshExecRequest`'s result.
#[napi(object)]
pub struct GitSshExecInfo {
    pub service: String,
    pub repo: String,
}

/// The git service and repo of an SSH exec command, or null.
#[napi]
pub fn git_exec_info(command: String) -> Option<GitSshExecInfo> {
    gondolin::ssh::exec_info::git_exec_info(&command).map(|i| GitSshExecInfo {
        service: i.service,
        repo: i.repo,
    })
}
