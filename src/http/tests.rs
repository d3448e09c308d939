//! The bridge end to end on the host: a hyper client plays the guest over
//! an in-memory pipe, a real HTTP server on loopback plays the upstream.

use super::*;
use http_body_util::{BodyExt, Full};
use std::net::Ipv4Addr;

/// An upstream that echoes the request line and headers in its body, and
/// redirects `/redirect?to=URL`.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/redirect" {
                            let to = req
                                .uri()
                                .query()
                                .unwrap_or("")
                                .trim_start_matches("to=")
                                .to_string();
                            return Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(302)
                                    .header("location", to)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            );
                        }
                        let mut text = format!("{} {}\n", req.method(), req.uri());
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        text.push_str(&format!("body={}\n", body.len()));
                        Ok(http::Response::new(Full::new(Bytes::from(text))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

use hyper_util::rt::TokioIo;
use std::convert::Infallible;

fn egress(policy: Policy) -> Arc<Egress> {
    let dir = std::env::temp_dir().join(format!("gondolin-bridge-test-{}", std::process::id()));
    let ca = Arc::new(MitmCa::load_or_create(&dir).unwrap());
    Egress::new(
        policy,
        ca,
        Arc::new(DnsServer::new(Default::default())),
        None,
    )
}

/// Send one request through the bridge as the guest would.
async fn guest_get(
    eg: Arc<Egress>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (guest, host_end) = tokio::io::duplex(1 << 16);
    let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80);
    tokio::spawn(bridge::serve(eg, host_end, None, dst));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(guest))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = http::Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn open_internal() -> Policy {
    Policy {
        allowed_internal: policy::patterns(&["127.0.0.1", "localhost"]),
        ..Policy::default()
    }
}

#[tokio::test]
async fn allowed_requests_reach_upstream() {
    let up = upstream().await;
    let host = format!("127.0.0.1:{}", up.port());
    let (status, body) = guest_get(
        egress(open_internal()),
        &host,
        "/hello?x=1",
        &[("x-test", "yes")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("GET /hello?x=1\n"), "{body}");
    assert!(body.contains("x-test: yes"));
}

#[tokio::test]
async fn internal_addresses_are_blocked_by_default() {
    let up = upstream().await;
    for host in [
        format!("127.0.0.1:{}", up.port()),
        format!("localhost:{}", up.port()),
    ] {
        let (status, body) = guest_get(egress(Policy::default()), &host, "/", &[]).await;
        assert_eq!(status, 403, "{host}: {body}");
        assert!(body.contains("blocked by policy"), "{body}");
    }
}

#[tokio::test]
async fn allowlist_denies_other_hosts() {
    let up = upstream().await;
    let policy = Policy {
        allowed_hosts: Some(policy::patterns(&["*.example.com"])),
        ..open_internal()
    };
    let eg = egress(policy);
    let (status, body) = guest_get(eg.clone(), "evil.test", "/", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (403, "403 Forbidden: blocked by policy: evil.test\n")
    );
    // Allowed internal hosts are implicitly allowed.
    let (status, _) = guest_get(eg, &format!("127.0.0.1:{}", up.port()), "/", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn secrets_are_filled_in_only_for_their_hosts() {
    let up = upstream().await;
    let ph = secrets::new_placeholder();
    let secret = secrets::Secret {
        name: "TOKEN".into(),
        placeholder: ph.clone(),
        value: "real-token".into(),
        hosts: policy::patterns(&["127.0.0.1"]),
        deleted: false,
        revoked: vec![],
    };
    let policy = Policy {
        secrets: Arc::new(Secrets::new(vec![secret], false)),
        ..open_internal()
    };
    let eg = egress(policy);
    let auth = format!("Bearer {ph}");
    let (status, body) = guest_get(
        eg.clone(),
        &format!("127.0.0.1:{}", up.port()),
        "/",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("authorization: Bearer real-token"), "{body}");
    assert!(!body.contains(&ph));
    let (status, body) = guest_get(
        eg,
        &format!("localhost:{}", up.port()),
        "/",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        body.contains("secret TOKEN not allowed for host: localhost"),
        "{body}"
    );
}

#[tokio::test]
async fn redirects_are_followed_and_rechecked() {
    let up = upstream().await;
    let eg = egress(Policy {
        allowed_internal: policy::patterns(&["127.0.0.1"]),
        ..Policy::default()
    });
    let host = format!("127.0.0.1:{}", up.port());
    let ok = format!("/redirect?to=http://127.0.0.1:{}/final", up.port());
    let (status, body) = guest_get(eg.clone(), &host, &ok, &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("GET /final"), "{body}");
    let bad = "/redirect?to=http://169.254.169.254/latest/meta-data";
    let (status, body) = guest_get(eg, &host, bad, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("169.254.169.254"));
}

#[tokio::test]
async fn upgrades_other_than_websocket_are_refused() {
    let eg = egress(open_internal());
    let (status, _) = guest_get(
        eg,
        "example.com",
        "/",
        &[("upgrade", "h2c"), ("connection", "upgrade")],
    )
    .await;
    assert_eq!(status, 501);
}

/// Hooks that act on the path: /short → answered, /rewrite → /echo-rewritten,
/// /deny → isRequestAllowed false, /blocked → 451, /boom → hook failure;
/// responses get an extra header.
struct TestHooks;

#[async_trait::async_trait]
impl hooks::HttpHooks for TestHooks {
    fn has(&self, h: hooks::Hook) -> bool {
        h != hooks::Hook::Fetch
    }
    async fn is_request_allowed(
        &self,
        head: &hooks::HookRequest,
    ) -> Result<bool, hooks::HookError> {
        Ok(!head.url.ends_with("/deny"))
    }
    async fn is_ip_allowed(&self, _: &hooks::IpCheck) -> Result<bool, hooks::HookError> {
        Ok(true)
    }
    async fn on_request(
        &self,
        mut req: hooks::HookRequest,
    ) -> Result<hooks::OnRequest, hooks::HookError> {
        if req.url.ends_with("/short") {
            return Ok(hooks::OnRequest::Respond(hooks::HookResponse {
                status: 201,
                status_text: String::new(),
                headers: vec![("x-from".into(), "hook".into())],
                body: Bytes::from_static(b"short-circuited"),
            }));
        }
        if req.url.ends_with("/blocked") {
            return Err(hooks::HookError::Blocked {
                status: 451,
                status_text: "Unavailable For Legal Reasons".into(),
                message: "nope".into(),
            });
        }
        if req.url.ends_with("/boom") {
            return Err(hooks::HookError::Failed("onRequest threw: boom".into()));
        }
        if req.url.ends_with("/rewrite") {
            req.url = req.url.replace("/rewrite", "/echo-rewritten");
            req.headers.push(("x-added".into(), "1".into()));
            return Ok(hooks::OnRequest::Rewrite(req));
        }
        Ok(hooks::OnRequest::Keep)
    }
    async fn on_response(
        &self,
        mut resp: hooks::HookResponse,
        _req: &hooks::HookRequest,
    ) -> Result<Option<hooks::HookResponse>, hooks::HookError> {
        resp.body = Bytes::from(format!("seen:{}", String::from_utf8_lossy(&resp.body)));
        Ok(Some(resp))
    }
}

#[tokio::test]
async fn hooks_rewrite_short_circuit_deny_and_fail_one_request() {
    let up = upstream().await;
    let eg = egress(Policy {
        hooks: Some(Arc::new(TestHooks)),
        ..open_internal()
    });
    let host = format!("127.0.0.1:{}", up.port());
    let (s, b) = guest_get(eg.clone(), &host, "/short", &[]).await;
    assert_eq!(
        (s, b.as_str()),
        (201, "short-circuited"),
        "no upstream, no onResponse"
    );
    let (s, b) = guest_get(eg.clone(), &host, "/rewrite", &[]).await;
    assert_eq!(s, 200);
    assert!(b.starts_with("seen:GET /echo-rewritten"), "{b}");
    assert!(b.contains("x-added: 1"));
    let (s, b) = guest_get(eg.clone(), &host, "/deny", &[]).await;
    assert_eq!(s, 403);
    assert!(b.contains("blocked by request policy"));
    let (s, b) = guest_get(eg.clone(), &host, "/blocked", &[]).await;
    assert_eq!(s, 451, "{b}");
    let (s, b) = guest_get(eg.clone(), &host, "/boom", &[]).await;
    assert_eq!(s, 502);
    assert!(b.contains("boom"));
    // The VM's bridge still works after a failing hook.
    let (s, _) = guest_get(eg, &host, "/ok", &[]).await;
    assert_eq!(s, 200);
}
