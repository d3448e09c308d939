//! The host's SSH connection to the real upstream for one guest `exec`:
//! TCP connect, host key check (known_hosts or the host program's
//! verifier), authentication with the configured key or the ssh-agent,
//! then an `exec` channel. All of it bounded by the ready timeout.

use std::sync::Arc;

use russh::client::{self, Handle, Msg};
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::Channel;
use tokio::net::TcpStream;

use super::{public_key_blob, Route, SshConfig, HOOK_TIMEOUT};

/// Checks the upstream's host key; remembers why it refused.
pub(crate) struct Verifier {
    config: Arc<SshConfig>,
    hostname: String,
    port: u16,
    refusal: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refusal.lock().unwrap() =
                Some("upstream host presented a certificate (not supported)".into());
            return Ok(false);
        };
        let ok = match &self.config.hooks {
            Some(h) if h.has_host_verifier() => {
                let call = h.verify_host(&self.hostname, public_key_blob(key), self.port);
                match tokio::time::timeout(HOOK_TIMEOUT, call).await {
                    Ok(Ok(ok)) => ok,
                    Ok(Err(e)) => {
                        *self.refusal.lock().unwrap() = Some(format!("hostVerifier failed: {e}"));
                        return Ok(false);
                    }
                    Err(_) => {
                        *self.refusal.lock().unwrap() = Some("hostVerifier timed out".into());
                        return Ok(false);
                    }
                }
            }
            _ => self
                .config
                .known_hosts
                .as_ref()
                .is_some_and(|kh| kh.verify(&self.hostname, self.port, key)),
        };
        if !ok {
            *self.refusal.lock().unwrap() = Some(format!(
                "upstream host key for {}:{} is not trusted ({} {})",
                self.hostname,
                self.port,
                key.algorithm(),
                key.fingerprint(Default::default())
            ));
        }
        Ok(ok)
    }
}

/// An open upstream exec channel and the connection that carries it.
pub(crate) struct Upstream {
    pub handle: Handle<Verifier>,
    pub channel: Channel<Msg>,
}

/// Connect, verify, authenticate and start `command`. Errors are the text
/// the guest sees after `gondolin ssh proxy error: `.
pub(crate) async fn open(
    config: Arc<SshConfig>,
    route: &Route,
    guest_user: &str,
    command: &[u8],
) -> Result<Upstream, String> {
    let (dial_host, dial_port) = &route.dial;
    let tcp = TcpStream::connect((dial_host.as_str(), *dial_port))
        .await
        .map_err(|e| format!("connect {dial_host}:{dial_port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let limits = &config.limits;
    let cfg = client::Config {
        keepalive_interval: (!limits.keepalive_interval.is_zero())
            .then_some(limits.keepalive_interval),
        keepalive_max: limits.keepalive_max,
        inactivity_timeout: None,
        channel_buffer_size: 64,
        nodelay: true,
        ..Default::default()
    };
    let refusal = Arc::new(std::sync::Mutex::new(None));
    let verifier = Verifier {
        config: config.clone(),
        hostname: route.hostname.clone(),
        port: route.port,
        refusal: refusal.clone(),
    };
    let mut handle = match client::connect_stream(Arc::new(cfg), tcp, verifier).await {
        Ok(h) => h,
        Err(e) => {
            return Err(match refusal.lock().unwrap().take() {
                Some(why) => why,
                None => format!("ssh handshake with {}:{}: {e}", route.hostname, route.port),
            })
        }
    };
    let ok = match &route.credential {
        Some(cred) => {
            let user = cred.username.clone().unwrap_or_else(|| "git".into());
            let hash = rsa_hash(&handle, cred.key.algorithm()).await?;
            handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(cred.key.clone(), hash))
                .await
                .map_err(|e| format!("authentication failed: {e}"))?
                .success()
        }
        None => {
            let path = config
                .agent
                .as_ref()
                .ok_or("no credential and no ssh agent")?;
            let user = if guest_user.is_empty() {
                "git"
            } else {
                guest_user
            };
            let mut agent = AgentClient::connect_uds(path)
                .await
                .map_err(|e| format!("ssh agent {}: {e}", path.display()))?;
            let ids = agent
                .request_identities()
                .await
                .map_err(|e| format!("ssh agent: {e}"))?;
            let mut ok = false;
            for id in ids {
                let key = id.public_key().into_owned();
                let hash = rsa_hash(&handle, key.algorithm()).await?;
                match handle
                    .authenticate_publickey_with(user, key, hash, &mut agent)
                    .await
                {
                    Ok(r) if r.success() => {
                        ok = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(format!("ssh agent: {e}")),
                }
            }
            ok
        }
    };
    if !ok {
        return Err(format!(
            "authentication to {}:{} failed",
            route.hostname, route.port
        ));
    }
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| format!("open session: {e}"))?;
    channel
        .exec(true, command.to_vec())
        .await
        .map_err(|e| format!("exec: {e}"))?;
    Ok(Upstream { handle, channel })
}

/// For an RSA key, the signature hash the server prefers (SHA-2 when it
/// says so); `None` for other key types.
async fn rsa_hash(
    handle: &Handle<Verifier>,
    alg: russh::keys::Algorithm,
) -> Result<Option<russh::keys::HashAlg>, String> {
    if !alg.is_rsa() {
        return Ok(None);
    }
    Ok(handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| e.to_string())?
        .flatten())
}
