//! The client side: dial `ws://` or `wss://` (rustls: the system's roots
//! plus an optional extra CA), upgrade with the bearer token, and hand back
//! a [`Connection`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::conn::{self, ConnOptions, Connection};
use super::{
    check_max_message, ws_config, RemoteError, DEFAULT_MAX_MESSAGE_BYTES, IDLE_TIMEOUT,
    PING_INTERVAL, PROTOCOL_PATH, WRITE_TIMEOUT,
};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// An extra CA (PEM) trusted for `wss://`, besides the system's roots.
    pub ca_pem: Option<String>,
    pub max_message_bytes: usize,
    /// TCP, TLS and the upgrade together.
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// The server reading nothing for this long while messages wait closes
    /// the connection (1008).
    pub write_timeout: Duration,
}

impl Default for ClientConfig {
    /// No token, no extra CA, 16 MiB messages, 10 s to connect, 10 s
    /// pings, 30 s idle and write timeouts.
    fn default() -> Self {
        ClientConfig {
            token: None,
            ca_pem: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(10),
            ping_interval: PING_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// `url` with `/v1` as its path when it has none; only ws/wss.
pub(crate) fn endpoint(url: &str) -> Result<url::Url, RemoteError> {
    let bad = |reason: &str| RemoteError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let mut u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "ws" | "wss") {
        return Err(bad("the scheme must be ws:// or wss://"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "credentials in the URL are not used; give the token separately",
        ));
    }
    if u.path().is_empty() || u.path() == "/" {
        u.set_path(PROTOCOL_PATH);
    }
    Ok(u)
}

fn tls_connector(ca_pem: Option<&str>) -> Result<tokio_rustls::TlsConnector, RemoteError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = crate::tls::native_roots();
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RemoteError::InvalidOption(format!("ca: not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(RemoteError::InvalidOption(
                "ca: no CERTIFICATE block in the PEM".into(),
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| RemoteError::InvalidOption(format!("ca: {e}")))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RemoteError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Connect to a `gondolin ws-server`. Errors: a bad URL or option
/// (`InvalidOption`), 401 ([`RemoteError::Unauthorized`]), 503 with the
/// server's reason ([`RemoteError::Unavailable`]), a timeout, or the
/// network's error.
pub async fn connect(url: &str, config: ClientConfig) -> Result<Connection, RemoteError> {
    let max_message_bytes = check_max_message(config.max_message_bytes)?;
    let u = endpoint(url)?;
    let tls = if u.scheme() == "wss" {
        Some(tls_connector(config.ca_pem.as_deref())?)
    } else {
        None
    };
    let mut request = u
        .as_str()
        .into_client_request()
        .map_err(|e| RemoteError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if let Some(token) = &config.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            RemoteError::InvalidOption("the token holds characters not allowed in a header".into())
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let opts = ConnOptions {
        max_message_bytes,
        ping_interval: config.ping_interval,
        idle_timeout: config.idle_timeout,
        write_timeout: config.write_timeout,
        counters: None,
        shutdown: None,
    };
    let dial = async {
        let host = u.host_str().unwrap_or_default();
        // url keeps IPv6 literals bracketed; the resolver wants them bare.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = u.port_or_known_default().unwrap_or(80);
        let tcp =
            TcpStream::connect((host, port))
                .await
                .map_err(|source| RemoteError::Connect {
                    url: u.to_string(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        let remote = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        match tls {
            None => upgrade(request, tcp, remote, &u, opts).await,
            Some(connector) => {
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                        RemoteError::Url {
                            url: u.to_string(),
                            reason: format!("not a TLS server name: {e}"),
                        }
                    })?;
                let stream = connector.connect(name, tcp).await.map_err(|source| {
                        // A plain ws:// server answers the ClientHello with HTTP.
                        let hint = if source.to_string().contains("InvalidContentType") {
                            " (the server does not speak TLS: use ws:// for a server without --tls-cert)"
                        } else {
                            ""
                        };
                        RemoteError::Connect {
                            url: u.to_string(),
                            source: std::io::Error::new(source.kind(), format!("{source}{hint}")),
                        }
                    })?;
                upgrade(request, stream, remote, &u, opts).await
            }
        }
    };
    match tokio::time::timeout(config.connect_timeout, dial).await {
        Ok(r) => r,
        Err(_) => Err(RemoteError::Timeout {
            url: u.to_string(),
            ms: config.connect_timeout.as_millis(),
        }),
    }
}

async fn upgrade<S>(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
    remote: String,
    u: &url::Url,
    opts: ConnOptions,
) -> Result<Connection, RemoteError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = ws_config(opts.max_message_bytes);
    match tokio_tungstenite::client_async_with_config(
        request,
        super::progress::ProgressIo::new(stream),
        Some(config),
    )
    .await
    {
        Ok((ws, _response)) => {
            let (conn, _tasks) = conn::start(ws, remote, opts);
            Ok(conn)
        }
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(512)])
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            Err(match resp.status().as_u16() {
                401 => RemoteError::Unauthorized,
                503 => RemoteError::Unavailable { reason: body },
                404 => RemoteError::Handshake {
                    url: u.to_string(),
                    message: format!(
                        "HTTP 404: {body} (a gondolin ws-server speaks {} at {}; \
                         give the URL without a path)",
                        super::PROTOCOL_PATH.trim_start_matches('/'),
                        super::PROTOCOL_PATH
                    ),
                },
                s => RemoteError::Handshake {
                    url: u.to_string(),
                    message: format!("HTTP {s}: {body}"),
                },
            })
        }
        Err(WsError::Io(source)) => Err(RemoteError::Connect {
            url: u.to_string(),
            source,
        }),
        Err(e) => Err(RemoteError::Handshake {
            url: u.to_string(),
            message: e.to_string(),
        }),
    }
}
