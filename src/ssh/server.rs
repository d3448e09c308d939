//! The guest-facing SSH server (russh) for one guest flow, and the bridge
//! between a guest `exec` channel and its upstream channel.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, SshId};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::exec_info::default_policy_allows;
use super::upstream;
use super::{ExecDecision, ExecRequest, FlowContext, Route, SshConfig, HOOK_TIMEOUT};
use crate::http::{EgressEvent, Rewind};
use crate::log_limited;

/// Longest command text kept in an egress record.
const RECORD_COMMAND: usize = 256;

/// Serve one guest SSH connection (its first bytes already sniffed).
pub(crate) async fn serve(
    io: Rewind,
    route: Route,
    src: SocketAddrV4,
    ctx: FlowContext,
    events: Option<mpsc::Sender<EgressEvent>>,
) {
    let FlowContext {
        config,
        host_key,
        upstreams,
        mut gone,
        flow_slot,
    } = ctx;
    let server_cfg = server::Config {
        server_id: SshId::Standard(super::SERVER_ID.into()),
        keys: vec![host_key],
        auth_rejection_time: std::time::Duration::ZERO,
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        inactivity_timeout: Some(super::GUEST_IDLE),
        channel_buffer_size: 64,
        nodelay: true,
        ..Default::default()
    };
    let per_flow = Arc::new(Semaphore::new(config.limits.per_flow.max(1)));
    let shared = Arc::new(Shared {
        config,
        route,
        src,
        upstreams,
        per_flow,
        events,
        tasks: std::sync::Mutex::new(JoinSet::new()),
    });
    let handler = GuestSession {
        shared: shared.clone(),
        user: String::new(),
        channels: HashMap::new(),
    };
    // The identification exchange is bounded; after it, russh's inactivity timeout.
    let start = tokio::time::timeout(
        super::IDENT_TIMEOUT,
        server::run_stream(Arc::new(server_cfg), io, handler),
    );
    let started = tokio::select! {
        r = start => r,
        _ = gone.changed() => return,
    };
    let session = match started {
        Ok(Ok(s)) => s,
        Err(_) => {
            log_limited!(debug, target: "gondolin::net", %src, "ssh proxy: no identification line in time");
            return;
        }
        Ok(Err(e)) => {
            log_limited!(debug, target: "gondolin::net", %src, "ssh proxy handshake failed: {e}");
            return;
        }
    };
    let handle = session.handle();
    tokio::select! {
        r = session => {
            if let Err(e) = r {
                log_limited!(debug, target: "gondolin::net", %src, "ssh proxy session ended: {e}");
            }
        }
        // The VM's network is gone: the session (and its bridges) end.
        _ = gone.changed() => {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                handle.disconnect(russh::Disconnect::ByApplication, "vm closed".into(), "en".into()),
            )
            .await;
        }
    }
    // Bridges end with their guest connection (their upstream connections
    // close as they drop); aborting them also frees a session loop that
    // waits to hand a bridge data.
    shared.tasks.lock().unwrap().abort_all();
    drop(flow_slot);
}

struct Shared {
    config: Arc<SshConfig>,
    route: Route,
    src: SocketAddrV4,
    upstreams: Arc<Semaphore>,
    per_flow: Arc<Semaphore>,
    events: Option<mpsc::Sender<EgressEvent>>,
    /// The exec bridges of this connection.
    tasks: std::sync::Mutex<JoinSet<()>>,
}

impl Shared {
    fn record(&self, command: &str, allowed: bool, reason: Option<String>, bytes: u64) {
        let Some(tx) = &self.events else { return };
        let mut url = command.to_string();
        if url.len() > RECORD_COMMAND {
            let mut cut = RECORD_COMMAND;
            while !url.is_char_boundary(cut) {
                cut -= 1;
            }
            url.truncate(cut);
        }
        let _ = tx.try_send(EgressEvent {
            protocol: "ssh",
            host: format!("{}:{}", self.route.hostname, self.route.port),
            method: "exec".into(),
            url,
            allowed,
            reason,
            status: None,
            bytes,
        });
    }
}

struct GuestSession {
    shared: Arc<Shared>,
    user: String,
    /// Opened session channels waiting for their request.
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl server::Handler for GuestSession {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.user = user.to_string();
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.user = user.to_string();
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.user = user.to_string();
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let running = {
            let mut tasks = self.shared.tasks.lock().unwrap();
            // Finished bridges leave the set here.
            while tasks.try_join_next().is_some() {}
            tasks.len()
        };
        if self.channels.len() + running >= super::MAX_CHANNELS {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        session.channel_success(channel)?;
        session.extended_data(
            channel,
            1,
            &b"gondolin ssh proxy: interactive shells are not supported\n"[..],
        )?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ch) = self.channels.remove(&channel) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let shared = self.shared.clone();
        let user = self.user.clone();
        let command = data.to_vec();
        let handle = session.handle();
        let task = bridge(shared.clone(), user, ch, command, handle);
        shared.tasks.lock().unwrap().spawn(task);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

/// Tell the guest why its exec ended, then close the channel.
async fn finish(ch: &Channel<Msg>, stderr: Option<String>, code: u32) {
    if let Some(msg) = stderr {
        let _ = ch.extended_data_bytes(1, msg.into_bytes()).await;
    }
    let _ = ch.exit_status(code).await;
    let _ = ch.eof().await;
    let _ = ch.close().await;
}

async fn decide(shared: &Shared, user: &str, command: &str) -> ExecDecision {
    match &shared.config.hooks {
        Some(h) if h.has_exec_policy() => {
            let req = ExecRequest {
                hostname: shared.route.hostname.clone(),
                port: shared.route.port,
                guest_username: user.to_string(),
                command: command.to_string(),
                src: shared.src,
            };
            match tokio::time::timeout(HOOK_TIMEOUT, h.exec_policy(req)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => ExecDecision::Deny {
                    exit_code: 255,
                    message: Some(format!("gondolin ssh proxy error: execPolicy failed: {e}")),
                },
                Err(_) => ExecDecision::Deny {
                    exit_code: 255,
                    message: Some("gondolin ssh proxy error: execPolicy timed out".into()),
                },
            }
        }
        _ if default_policy_allows(command) => ExecDecision::Allow,
        _ => ExecDecision::Deny {
            exit_code: 1,
            message: Some(format!(
                "gondolin ssh proxy: command not allowed: only git-upload-pack, git-receive-pack and git-upload-archive may run on {} (set ssh.execPolicy to allow more)",
                shared.route.hostname
            )),
        },
    }
}

/// One guest exec: policy, caps, upstream, then the pipe.
async fn bridge(
    shared: Arc<Shared>,
    user: String,
    guest: Channel<Msg>,
    command: Vec<u8>,
    handle: server::Handle,
) {
    let text = String::from_utf8_lossy(&command).into_owned();
    if let ExecDecision::Deny { exit_code, message } = decide(&shared, &user, &text).await {
        shared.record(&text, false, Some("exec-policy-deny".into()), 0);
        finish(&guest, message.map(|m| format!("{m}\n")), exit_code).await;
        return;
    }
    let fail = |msg: String| format!("gondolin ssh proxy error: {msg}\n");
    let limits = &shared.config.limits;
    let Ok(_flow_slot) = shared.per_flow.clone().try_acquire_owned() else {
        let msg = format!(
            "too many concurrent upstream ssh connections for this guest flow (limit {})",
            limits.per_flow
        );
        shared.record(&text, false, Some(msg.clone()), 0);
        return finish(&guest, Some(fail(msg)), 255).await;
    };
    let Ok(_total_slot) = shared.upstreams.clone().try_acquire_owned() else {
        let msg = format!(
            "too many concurrent upstream ssh connections on host (limit {})",
            limits.total
        );
        shared.record(&text, false, Some(msg.clone()), 0);
        return finish(&guest, Some(fail(msg)), 255).await;
    };
    let opened = tokio::time::timeout(
        limits.ready_timeout,
        upstream::open(shared.config.clone(), &shared.route, &user, &command),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "timed out after {} ms waiting for the upstream ssh connection",
            limits.ready_timeout.as_millis()
        ))
    });
    let up = match opened {
        Ok(up) => up,
        Err(msg) => {
            log_limited!(debug, target: "gondolin::net", host = %shared.route.hostname, "ssh upstream failed: {msg}");
            shared.record(&text, false, Some(msg.clone()), 0);
            return finish(&guest, Some(fail(msg)), 255).await;
        }
    };
    let (bytes, reason, up_handle) = pipe(guest, up, handle).await;
    shared.record(&text, true, reason, bytes);
    let _ = up_handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
}

/// Copy guest stdin to the upstream and the upstream's stdout, stderr,
/// exit status and EOF to the guest. Writes wait for the peer's channel
/// window (russh), reads are bounded by the channel queues: a slow side
/// slows the other down instead of buffering. Returns the bytes sent to
/// the guest, why it ended early (if it did) and the upstream connection.
async fn pipe(
    guest: Channel<Msg>,
    up: upstream::Upstream,
    handle: server::Handle,
) -> (
    u64,
    Option<String>,
    russh::client::Handle<upstream::Verifier>,
) {
    let upstream::Upstream {
        handle: up_handle,
        channel: up_ch,
    } = up;
    let guest_id = guest.id();
    let (mut guest_rd, guest_wr) = guest.split();
    let (mut up_rd, up_wr) = up_ch.split();

    // Guest -> upstream.
    let to_upstream = async {
        let mut w = up_wr.make_writer();
        while let Some(msg) = guest_rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let written = w.write_all(&data).await;
                    if written.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = w.flush().await;
                    let _ = up_wr.eof().await;
                }
                ChannelMsg::Signal { signal } => {
                    let _ = up_wr.signal(signal).await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };

    // Upstream -> guest.
    let mut sent = 0u64;
    let to_guest = async {
        let mut out = guest_wr.make_writer();
        let mut err = guest_wr.make_writer_ext(Some(1));
        let mut status = None;
        while let Some(msg) = up_rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    if out.write_all(&data).await.is_err() {
                        return Some("guest channel closed".to_string());
                    }
                    sent += data.len() as u64;
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    let written = err.write_all(&data).await;
                    if written.is_err() {
                        return Some("guest channel closed".to_string());
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    let _ = out.flush().await;
                    let _ = err.flush().await;
                    let _ = handle
                        .exit_signal_request(
                            guest_id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await;
                }
                ChannelMsg::Eof => {
                    let _ = out.flush().await;
                    let _ = err.flush().await;
                    let _ = guest_wr.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = out.flush().await;
        let _ = err.flush().await;
        if let Some(code) = status {
            let _ = guest_wr.exit_status(code).await;
        }
        let _ = guest_wr.eof().await;
        let _ = guest_wr.close().await;
        None
    };

    // The exec is over when the upstream side is, or when the guest
    // closes its channel.
    let reason = tokio::select! {
        r = to_guest => r,
        _ = to_upstream => None,
    };
    (sent, reason, up_handle)
}
