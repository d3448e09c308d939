//! SSH egress proxy (upstream's `ssh` option, api.md §6, protocol.md §12.7).
//!
//! A guest flow to an allowed `host:port` (by its synthetic per-host DNS
//! name) whose first bytes are `SSH-` is terminated here by an in-process
//! SSH server ([`server`], russh) with a per-VM host key; every guest
//! authentication is accepted (the guest holds no secret). Each `exec`
//! passes the exec policy, then opens its own upstream SSH connection
//! ([`upstream`]) that authenticates with the host's private key or
//! ssh-agent after checking the upstream host key against `known_hosts`
//! ([`known_hosts`]) or the host program's verifier, and the two channels
//! are piped (stdout, stderr, exit status, EOF). Keys and the agent never
//! reach the guest: it only ever talks to the proxy.
//!
//! Bounds: [`MAX_SSH_FLOWS`] guest SSH connections per VM, channels per
//! connection ([`MAX_CHANNELS`]), upstream connections per guest flow and
//! per VM (`limits`), the upstream ready timeout, keepalives, and
//! russh's channel windows plus bounded channel queues for the data.

pub mod exec_info;
pub mod known_hosts;
mod server;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use russh::keys::{PrivateKey, PublicKey};
use tokio::sync::{watch, Semaphore};

use crate::http::policy::HostPattern;
use crate::net::dns::{DnsMode, DnsServer};

pub(crate) use server::serve;

/// Guest SSH connections open at once per VM; more are reset.
pub const MAX_SSH_FLOWS: usize = 32;
/// Session channels one guest connection may hold open.
pub const MAX_CHANNELS: usize = 8;
/// The proxy's identification string (upstream's).
pub const SERVER_ID: &str = "SSH-2.0-gondolin-ssh-proxy";
/// The guest's identification line must arrive within this.
pub const IDENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A guest connection that sends nothing for this long is closed.
pub const GUEST_IDLE: Duration = Duration::from_secs(600);
/// Bound on one `execPolicy` / `hostVerifier` call.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What the exec policy is told (upstream's `SshExecRequest`).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub hostname: String,
    pub port: u16,
    pub guest_username: String,
    pub command: String,
    pub src: SocketAddrV4,
}

/// An exec policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecDecision {
    Allow,
    /// `message` (plus a newline) goes to the guest's stderr.
    Deny {
        exit_code: u32,
        message: Option<String>,
    },
}

/// Host-program callbacks (JS `hostVerifier` / `execPolicy`).
#[async_trait]
pub trait SshHooks: Send + Sync {
    fn has_host_verifier(&self) -> bool;
    fn has_exec_policy(&self) -> bool;
    /// `key` is the SSH wire encoding of the upstream's public key.
    async fn verify_host(&self, hostname: &str, key: Vec<u8>, port: u16) -> Result<bool, String>;
    async fn exec_policy(&self, req: ExecRequest) -> Result<ExecDecision, String>;
}

/// One `credentials` entry, key decoded.
pub struct Credential {
    pub pattern: HostPattern,
    pub port: u16,
    pub username: Option<String>,
    pub key: Arc<PrivateKey>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("pattern", &self.pattern)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Upstream caps and timers (`ssh.max*` / `ssh.upstream*`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub per_flow: usize,
    pub total: usize,
    pub ready_timeout: Duration,
    /// `Duration::ZERO` = no keepalives.
    pub keepalive_interval: Duration,
    pub keepalive_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_flow: 4,
            total: 64,
            ready_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(10),
            keepalive_max: 3,
        }
    }
}

/// The checked `ssh` option.
pub struct SshConfig {
    pub targets: Vec<(HostPattern, u16)>,
    pub credentials: Vec<Arc<Credential>>,
    pub agent: Option<PathBuf>,
    /// Used unless the hooks verify host keys.
    pub known_hosts: Option<known_hosts::KnownHosts>,
    pub hooks: Option<Arc<dyn SshHooks>>,
    pub limits: Limits,
    /// The guest-facing host key; `None` = generated per VM on first use.
    pub host_key: Option<PrivateKey>,
    /// Our extension (`ssh.upstreams`): where to dial for a guest name
    /// (`host` or `host:port` key), instead of the name itself.
    pub upstreams: HashMap<(String, Option<u16>), (String, u16)>,
}

impl std::fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConfig")
            .field("targets", &self.targets)
            .field("credentials", &self.credentials)
            .field("agent", &self.agent)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// `pattern`, `pattern:PORT` or `[pattern]:PORT` (default port 22), as
/// upstream parses `allowedHosts` and `credentials` keys; `None` when
/// malformed (upstream skips those).
pub fn parse_target(raw: &str) -> Option<(HostPattern, u16)> {
    let t = raw.trim();
    if t.is_empty() {
        return None;
    }
    let (host, port) = if let Some(inner) = t.strip_prefix('[') {
        let end = inner.find(']')?;
        let (host, rest) = (&inner[..end], &inner[end + 1..]);
        if host.is_empty() {
            return None;
        }
        let port = if rest.is_empty() {
            22
        } else {
            let p = rest.strip_prefix(':')?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u32>().ok()?
        };
        (host, port)
    } else {
        match t.rfind(':') {
            Some(i) if !t[i + 1..].is_empty() && t[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
                (&t[..i], t[i + 1..].parse::<u32>().ok()?)
            }
            _ => (t, 22),
        }
    };
    if !(1..=65535).contains(&port) {
        return None;
    }
    let host = host.trim_end_matches('.');
    Some((HostPattern::new(host)?, port as u16))
}

impl SshConfig {
    /// Whether SSH egress is on (any allowed host).
    pub fn enabled(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Upstream's construction checks, in its order and words: synthetic
    /// DNS with per-host mapping (`per_host`: `dns.syntheticHostMapping`,
    /// `None` when unset, which SSH turns on), a credential or an agent,
    /// a host verifier. Returns whether per-host mapping is on.
    pub fn check_dns(&self, mode: DnsMode, per_host: Option<bool>) -> Result<bool, String> {
        if !self.enabled() {
            return Ok(per_host.unwrap_or(false));
        }
        if mode != DnsMode::Synthetic {
            return Err("ssh egress requires dns mode 'synthetic'".into());
        }
        if per_host == Some(false) {
            return Err("ssh egress requires dns syntheticHostMapping='per-host'".into());
        }
        if self.credentials.is_empty() && self.agent.is_none() {
            return Err(
                "ssh egress requires at least one credential or ssh agent (direct ssh is not supported)"
                    .into(),
            );
        }
        let hook_verifies = self.hooks.as_ref().is_some_and(|h| h.has_host_verifier());
        if !hook_verifies && self.known_hosts.is_none() {
            return Err(
                "ssh egress requires ssh.hostVerifier to validate upstream host keys".into(),
            );
        }
        Ok(true)
    }

    fn credential_for(&self, host: &str, port: u16) -> Option<Arc<Credential>> {
        self.credentials
            .iter()
            .find(|c| c.port == port && c.pattern.matches(host))
            .cloned()
    }

    fn allowed(&self, host: &str, port: u16) -> bool {
        self.targets
            .iter()
            .any(|(p, tp)| *tp == port && p.matches(host))
    }

    /// Where to dial for the guest's `host:port`.
    fn dial_for(&self, host: &str, port: u16) -> (String, u16) {
        self.upstreams
            .get(&(host.to_string(), Some(port)))
            .or_else(|| self.upstreams.get(&(host.to_string(), None)))
            .cloned()
            .unwrap_or_else(|| (host.to_string(), port))
    }
}

/// A flow SSH egress may take.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The guest's name for the upstream (lowercase, no trailing dot).
    pub hostname: String,
    pub port: u16,
    pub credential: Option<Arc<Credential>>,
    /// Where the upstream connection goes.
    pub dial: (String, u16),
}

/// A VM's SSH egress state.
#[derive(Debug)]
pub(crate) struct SshEgress {
    config: OnceLock<Arc<SshConfig>>,
    host_key: OnceLock<Result<PrivateKey, String>>,
    flows: Arc<Semaphore>,
    upstreams: OnceLock<Arc<Semaphore>>,
    /// Dropped with the Egress: open SSH flows end with the VM's network.
    alive: watch::Sender<()>,
}

impl Default for SshEgress {
    fn default() -> Self {
        SshEgress {
            config: OnceLock::new(),
            host_key: OnceLock::new(),
            flows: Arc::new(Semaphore::new(MAX_SSH_FLOWS)),
            upstreams: OnceLock::new(),
            alive: watch::channel(()).0,
        }
    }
}

/// What a flow being served needs, without the Egress.
pub(crate) struct FlowContext {
    pub config: Arc<SshConfig>,
    pub host_key: PrivateKey,
    pub upstreams: Arc<Semaphore>,
    pub gone: watch::Receiver<()>,
    pub flow_slot: tokio::sync::OwnedSemaphorePermit,
}

impl SshEgress {
    pub(crate) fn set(&self, config: Arc<SshConfig>) {
        let total = config.limits.total.max(1);
        let _ = self.upstreams.set(Arc::new(Semaphore::new(total)));
        let _ = self.config.set(config);
    }

    /// The destination ports on which an `SSH-` banner means SSH.
    pub(crate) fn is_ssh_port(&self, port: u16) -> bool {
        self.config
            .get()
            .is_some_and(|c| c.targets.iter().any(|(_, p)| *p == port))
    }

    /// The route for a flow to `dst`: a per-host synthetic address whose
    /// name is allowed on that port, with a credential or the agent.
    pub(crate) fn route(&self, dns: &DnsServer, dst: SocketAddrV4) -> Option<Route> {
        let cfg = self.config.get().filter(|c| c.enabled())?;
        let name = dns.name_for(*dst.ip())?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if !cfg.allowed(&name, dst.port()) {
            return None;
        }
        let credential = cfg.credential_for(&name, dst.port());
        if credential.is_none() && cfg.agent.is_none() {
            return None;
        }
        Some(Route {
            dial: cfg.dial_for(&name, dst.port()),
            hostname: name,
            port: dst.port(),
            credential,
        })
    }

    /// Everything a flow needs, or why it may not start (flow cap, key).
    pub(crate) fn context(&self) -> Result<FlowContext, String> {
        let config = self.config.get().ok_or("ssh egress is off")?.clone();
        let flow_slot = self
            .flows
            .clone()
            .try_acquire_owned()
            .map_err(|_| "too-many-ssh-flows".to_string())?;
        let host_key = self
            .host_key
            .get_or_init(|| match &config.host_key {
                Some(k) => Ok(k.clone()),
                None => generate_host_key()
                    .map_err(|e| format!("cannot generate the ssh proxy host key: {e}")),
            })
            .clone()?;
        Ok(FlowContext {
            upstreams: self
                .upstreams
                .get()
                .cloned()
                .unwrap_or_else(|| Arc::new(Semaphore::new(Limits::default().total))),
            config,
            host_key,
            gone: self.alive.subscribe(),
            flow_slot,
        })
    }
}

/// A fresh ed25519 key (upstream generates RSA-3072; ed25519 is what
/// every current OpenSSH client accepts and is instant to make).
fn generate_host_key() -> Result<PrivateKey, String> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| "no randomness".to_string())?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    Ok(PrivateKey::from(pair))
}

/// Decode a private key (OpenSSH or PEM) with an optional passphrase.
pub fn decode_key(pem: &str, passphrase: Option<&str>) -> Result<PrivateKey, String> {
    russh::keys::decode_secret_key(pem, passphrase).map_err(|e| e.to_string())
}

/// A public key in SSH wire form (what `hostVerifier` receives).
pub fn public_key_blob(key: &PublicKey) -> Vec<u8> {
    key.to_bytes().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |s: &str| parse_target(s).map(|(p, port)| (p.as_str().to_string(), port));
        assert_eq!(t("github.com"), Some(("github.com".into(), 22)));
        assert_eq!(t("GitHub.com:443"), Some(("github.com".into(), 443)));
        assert_eq!(t("[*.corp]:2222"), Some(("*.corp".into(), 2222)));
        assert_eq!(t("[h]"), Some(("h".into(), 22)));
        assert_eq!(t("h:0"), None);
        assert_eq!(t("h:70000"), None);
        assert_eq!(t("[h]x"), None);
        assert_eq!(t("[]:22"), None);
        assert_eq!(t(" "), None);
    }

    fn config(creds: bool, agent: bool, known: bool) -> SshConfig {
        let key = decode_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACCN6U73BjTsF8VlkHTaCvSXIygg0oyCtZnM4WtKRUPHnwAAAJAGhDLsBoQy\n7AAAAAtzc2gtZWQyNTUxOQAAACCN6U73BjTsF8VlkHTaCvSXIygg0oyCtZnM4WtKRUPHnw\nAAAEBKLSWtuVFlAEE7ET5CJW+hVUD6Ou43zaZoPmm+SWYTgI3pTvcGNOwXxWWQdNoK9Jcj\nKCDSjIK1mczha0pFQ8efAAAAB3Jvb3RAdm0BAgMEBQY=\n-----END OPENSSH PRIVATE KEY-----\n",
            None,
        );
        SshConfig {
            targets: vec![parse_target("git.test").unwrap()],
            credentials: if creds {
                vec![Arc::new(Credential {
                    pattern: HostPattern::new("git.test").unwrap(),
                    port: 22,
                    username: None,
                    key: Arc::new(key.unwrap()),
                })]
            } else {
                vec![]
            },
            agent: agent.then(|| PathBuf::from("/tmp/agent")),
            known_hosts: known.then(known_hosts::KnownHosts::default),
            hooks: None,
            limits: Limits::default(),
            host_key: None,
            upstreams: HashMap::new(),
        }
    }

    #[test]
    fn construction_checks() {
        let c = config(true, false, true);
        assert_eq!(c.check_dns(DnsMode::Synthetic, None), Ok(true));
        assert_eq!(
            c.check_dns(DnsMode::Open, None).unwrap_err(),
            "ssh egress requires dns mode 'synthetic'"
        );
        assert_eq!(
            c.check_dns(DnsMode::Synthetic, Some(false)).unwrap_err(),
            "ssh egress requires dns syntheticHostMapping='per-host'"
        );
        assert_eq!(
            config(false, false, true)
                .check_dns(DnsMode::Synthetic, None)
                .unwrap_err(),
            "ssh egress requires at least one credential or ssh agent (direct ssh is not supported)"
        );
        assert!(config(false, true, true)
            .check_dns(DnsMode::Synthetic, None)
            .is_ok());
        assert_eq!(
            config(true, false, false)
                .check_dns(DnsMode::Synthetic, None)
                .unwrap_err(),
            "ssh egress requires ssh.hostVerifier to validate upstream host keys"
        );
    }

    #[test]
    fn upstream_override() {
        let mut c = config(true, false, true);
        c.upstreams
            .insert(("git.test".into(), None), ("127.0.0.1".into(), 2222));
        assert_eq!(c.dial_for("git.test", 22), ("127.0.0.1".into(), 2222));
        assert_eq!(c.dial_for("other.test", 22), ("other.test".into(), 22));
        assert!(c.allowed("git.test", 22));
        assert!(!c.allowed("git.test", 2222));
        assert!(c.credential_for("git.test", 22).is_some());
    }
}
