//! The bridge end to end on the host: a hyper client plays the guest over
//! an in-memory pipe, a real HTTP server on loopback plays the upstream.

use super::*;
use http_body_util::{BodyExt, Full};
use std::net::{Ipv4Addr, SocketAddr};

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
                            let v = v.to_str().unwrap_or("?");
                            text.push_str(&format!("{k}: {v}\n"));
                            // Reversed, so tests can see what arrived even
                            // though the response is scrubbed on its way back.
                            let rev: String = v.chars().rev().collect();
                            text.push_str(&format!("{k} reversed: {rev}\n"));
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
    assert!(
        body.contains("authorization reversed: nekot-laer reraeB"),
        "upstream got the real value: {body}"
    );
    assert!(
        body.contains(&format!("authorization: Bearer {ph}")),
        "the echo comes back with the placeholder: {body}"
    );
    assert!(!body.contains("real-token"));
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

/// Raw bytes from the guest (what a hyper client would never send); the
/// whole answer, up to the host closing or 5 s.
async fn guest_raw(eg: Arc<Egress>, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut guest, host_end) = tokio::io::duplex(1 << 20);
    let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80);
    tokio::spawn(bridge::serve(eg, host_end, None, dst));
    guest.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), guest.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn fronting_and_duplicate_host_are_refused() {
    let up = upstream().await;
    let policy = Policy {
        allowed_hosts: Some(policy::patterns(&["127.0.0.1"])),
        ..open_internal()
    };
    let eg = egress(policy);
    let p = up.port();
    // Absolute-form target checked, another Host would go upstream: 421.
    let r = guest_raw(
        eg.clone(),
        format!("GET http://127.0.0.1:{p}/x HTTP/1.1\r\nHost: refused.example\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&r), "421", "{r}");
    assert!(
        !r.contains("refused.example\n"),
        "nothing came back from upstream"
    );
    // The same authority spelled with its default port is the same host.
    let r = guest_raw(
        eg.clone(),
        format!("GET http://127.0.0.1:{p}/x HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&r), "200", "{r}");
    for sep in ["\r\n", "\n"] {
        let raw = format!(
            "GET /x HTTP/1.1{sep}Host: 127.0.0.1:{p}{sep}Host: refused.example{sep}Connection: close{sep}{sep}"
        );
        let r = guest_raw(eg.clone(), raw.as_bytes()).await;
        assert_eq!(status_of(&r), "400", "{sep:?}: {r}");
        assert!(r.contains("more than one Host header"), "{r}");
    }
}

#[tokio::test]
async fn trace_track_and_oversize_heads_never_leave() {
    let up = upstream().await;
    let eg = egress(open_internal());
    let p = up.port();
    for m in ["TRACE", "TRACK", "CONNECT"] {
        let r = guest_raw(
            eg.clone(),
            format!("{m} / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&r), "405", "{m}: {r}");
    }
    // One 100 KiB header; and 200 small ones.
    let big = "a".repeat(100 * 1024);
    let r = guest_raw(
        eg.clone(),
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&r), "431", "{}", &r[..r.len().min(200)]);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = guest_raw(
        eg.clone(),
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&r), "431", "{r}");
}

#[tokio::test]
async fn oversize_chunked_body_is_413() {
    let up = upstream().await;
    let eg = egress(Policy {
        max_request_body: 1024,
        ..open_internal()
    });
    let p = up.port();
    let chunk = "b".repeat(4000);
    let raw = format!(
        "POST /up HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let r = guest_raw(eg, raw.as_bytes()).await;
    assert_eq!(status_of(&r), "413", "{r}");
}

/// Records every hook call, in order; refuses paths containing `/deny`
/// and every address but `allow_ip` (when set).
struct Recorder {
    allow_ip: Option<std::net::IpAddr>,
    calls: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl hooks::HttpHooks for Recorder {
    fn has(&self, h: hooks::Hook) -> bool {
        matches!(h, hooks::Hook::IsRequestAllowed | hooks::Hook::IsIpAllowed)
    }
    async fn is_request_allowed(
        &self,
        head: &hooks::HookRequest,
    ) -> Result<bool, hooks::HookError> {
        let headers: Vec<String> = head
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.calls
            .lock()
            .unwrap()
            .push(format!("request {} {}", head.url, headers.join(",")));
        let path = url::Url::parse(&head.url).map(|u| u.path().to_string());
        Ok(!path.is_ok_and(|p| p.ends_with("/deny")))
    }
    async fn is_ip_allowed(&self, info: &hooks::IpCheck) -> Result<bool, hooks::HookError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("ip {}:{}", info.ip, info.port));
        Ok(self.allow_ip.is_none_or(|a| a == info.ip))
    }
}

fn recorder(allow_ip: Option<&str>) -> Arc<Recorder> {
    Arc::new(Recorder {
        allow_ip: allow_ip.map(|a| a.parse().unwrap()),
        calls: Default::default(),
    })
}

#[tokio::test]
async fn every_hop_is_admitted_in_one_order() {
    let up = upstream().await;
    let p = up.port();
    let rec = recorder(None);
    let eg = egress(Policy {
        allowed_hosts: Some(policy::patterns(&["127.0.0.1", "localhost", "10.0.0.1"])),
        hooks: Some(rec.clone()),
        ..open_internal()
    });
    let host = format!("127.0.0.1:{p}");
    // Built-in host rule first: no hook is asked.
    let (s, _) = guest_get(eg.clone(), "other.test", "/", &[]).await;
    assert_eq!(s, 403);
    assert!(rec.calls.lock().unwrap().is_empty());
    // Then the built-in IP rule: an allowed name, an internal address;
    // still no hook is asked.
    let (s, b) = guest_get(eg.clone(), "10.0.0.1", "/", &[]).await;
    assert_eq!(s, 403, "{b}");
    assert!(rec.calls.lock().unwrap().is_empty());
    // Then isRequestAllowed, then isIpAllowed on the dialled address.
    let (s, _) = guest_get(eg.clone(), &format!("localhost:{p}"), "/ok", &[]).await;
    assert_eq!(s, 200);
    let calls = std::mem::take(&mut *rec.calls.lock().unwrap());
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with(&format!("request http://localhost:{p}/ok")));
    assert_eq!(calls[1], format!("ip 127.0.0.1:{p}"), "the address dialled");
    // A redirect to a path isRequestAllowed refuses is refused.
    let (s, b) = guest_get(
        eg.clone(),
        &host,
        &format!("/redirect?to=http://localhost:{p}/deny"),
        &[],
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("blocked by request policy"), "{b}");
    let calls = std::mem::take(&mut *rec.calls.lock().unwrap());
    assert_eq!(
        calls.len(),
        3,
        "first hop (request, ip), second hop refused: {calls:?}"
    );
    // A redirect to a host outside the allowlist never reaches the hooks.
    let (s, _) = guest_get(eg.clone(), &host, "/redirect?to=http://evil.test/", &[]).await;
    assert_eq!(s, 403);
    assert_eq!(
        rec.calls.lock().unwrap().len(),
        2,
        "only the first hop asked"
    );
}

#[tokio::test]
async fn is_ip_allowed_refusals_hold_on_redirects() {
    let up = upstream().await;
    let p = up.port();
    // Allows only an address 127.0.0.1 is not: every dial is refused.
    let rec = recorder(Some("192.0.2.99"));
    let eg = egress(Policy {
        hooks: Some(rec.clone()),
        ..open_internal()
    });
    let (s, b) = guest_get(eg.clone(), &format!("127.0.0.1:{p}"), "/", &[]).await;
    assert_eq!(
        (s, b.contains("blocked by policy: 127.0.0.1")),
        (403, true),
        "{b}"
    );
    // Allowed first hop, refused address on the redirect.
    let rec = recorder(Some("127.0.0.1"));
    let eg = egress(Policy {
        hooks: Some(rec.clone()),
        allowed_internal: policy::patterns(&["127.0.0.1", "127.0.0.2"]),
        ..Policy::default()
    });
    let (s, b) = guest_get(
        eg,
        &format!("127.0.0.1:{p}"),
        &format!("/redirect?to=http://127.0.0.2:{p}/"),
        &[],
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("blocked by policy: 127.0.0.2"), "{b}");
    assert_eq!(
        rec.calls.lock().unwrap().last().unwrap(),
        &format!("ip 127.0.0.2:{p}")
    );
}

#[tokio::test]
async fn the_dialer_connects_only_to_admitted_destinations() {
    use tower_service::Service;
    let eg = egress(open_internal());
    let mut d = admission::Dialer(Arc::downgrade(&eg));
    let err = d
        .call("http://127.0.0.1:9/".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
}

fn secret_policy(in_query: bool, hosts: &[&str]) -> (Policy, String) {
    secret_valued("real-token", in_query, hosts)
}

fn secret_valued(value: &str, in_query: bool, hosts: &[&str]) -> (Policy, String) {
    let ph = secrets::new_placeholder();
    let secret = secrets::Secret {
        name: "TOKEN".into(),
        placeholder: ph.clone(),
        value: value.into(),
        hosts: policy::patterns(hosts),
        deleted: false,
        revoked: vec![],
    };
    let policy = Policy {
        secrets: Arc::new(Secrets::new(vec![secret], in_query)),
        ..open_internal()
    };
    (policy, ph)
}

#[tokio::test]
async fn redirects_never_carry_real_values_off_their_hosts() {
    let up = upstream().await;
    let p = up.port();
    let (policy, ph) = secret_policy(true, &["127.0.0.1"]);
    let eg = egress(policy);
    let host = format!("127.0.0.1:{p}");
    // The secret's host reflects the query into a redirect elsewhere.
    let target = format!("http://localhost:{p}/?stolen={ph}");
    let (s, b) = guest_get(eg.clone(), &host, &format!("/redirect?to={target}"), &[]).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains("secret TOKEN not allowed for host: localhost"),
        "{b}"
    );
    assert!(!b.contains("real-token"));
    // A value that travels percent-encoded is found too.
    let (policy, ph2) = secret_valued("real token", true, &["127.0.0.1"]);
    let (s, b) = guest_get(
        egress(policy),
        &host,
        &format!("/redirect?to=http://localhost:{p}/?stolen={ph2}"),
        &[],
    )
    .await;
    assert_eq!(s, 403, "{b}");
    // To its own host it may go (and comes back as the placeholder).
    let (s, b) = guest_get(eg, &host, &format!("/redirect?to=/final?k={ph}"), &[]).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.starts_with(&format!("GET /final?k={ph}")), "{b}");
}

#[tokio::test]
async fn hooks_on_redirect_hops_see_placeholders() {
    let up = upstream().await;
    let p = up.port();
    let (mut policy, ph) = secret_policy(false, &["127.0.0.1"]);
    let rec = recorder(None);
    policy.hooks = Some(rec.clone());
    let eg = egress(policy);
    let auth = format!("Bearer {ph}");
    let (s, b) = guest_get(
        eg,
        &format!("127.0.0.1:{p}"),
        "/redirect?to=/next",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[2].contains(&ph), "{calls:?}");
    assert!(calls.iter().all(|c| !c.contains("real-token")), "{calls:?}");
}

#[tokio::test]
async fn a_placeholder_off_its_hosts_is_refused_before_resolving() {
    let (policy, ph) = secret_policy(false, &["127.0.0.1"]);
    let eg = egress(policy);
    let auth = format!("Bearer {ph}");
    // The name does not resolve: the secret rule answers first.
    let (s, b) = guest_get(eg, "nowhere.invalid", "/", &[("authorization", &auth)]).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains("secret TOKEN not allowed for host: nowhere.invalid"),
        "{b}"
    );
}

/// `onRequestHead` only: answers /head-short, otherwise adds a header; it
/// records whether it was ever handed a body.
struct HeadHooks(std::sync::Mutex<Vec<bool>>);

#[async_trait::async_trait]
impl hooks::HttpHooks for HeadHooks {
    fn has(&self, h: hooks::Hook) -> bool {
        h == hooks::Hook::OnRequestHead
    }
    async fn on_request_head(
        &self,
        mut head: hooks::HookRequest,
    ) -> Result<hooks::OnRequest, hooks::HookError> {
        self.0.lock().unwrap().push(head.body.is_some());
        if head.url.ends_with("/head-short") {
            return Ok(hooks::OnRequest::Respond(hooks::HookResponse {
                status: 203,
                status_text: String::new(),
                headers: Vec::new(),
                body: Bytes::from_static(b"head answer"),
            }));
        }
        head.headers.push(("x-head".into(), "1".into()));
        Ok(hooks::OnRequest::Rewrite(head))
    }
}

#[tokio::test]
async fn the_head_hook_rewrites_or_answers_and_the_body_streams_on() {
    let up = upstream().await;
    let h = Arc::new(HeadHooks(Default::default()));
    let eg = egress(Policy {
        hooks: Some(h.clone()),
        ..open_internal()
    });
    let host = format!("127.0.0.1:{}", up.port());
    let (s, b) = guest_get(eg.clone(), &host, "/head-short", &[]).await;
    assert_eq!((s, b.as_str()), (203, "head answer"));
    let raw = format!(
        "POST /p HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let out = guest_raw(eg, raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("x-head: 1"),
        "the rewritten head went upstream: {out}"
    );
    assert!(out.contains("body=5"), "with the guest's body: {out}");
    assert_eq!(*h.0.lock().unwrap(), vec![false, false], "never a body");
}

#[test]
fn secrets_applied_for_js_are_the_bridges() {
    let ph = secrets::new_placeholder();
    let s = Secrets::new(
        vec![secrets::Secret {
            name: "K".into(),
            placeholder: ph.clone(),
            value: "real".into(),
            hosts: policy::patterns(&["api.test"]),
            deleted: false,
            revoked: Vec::new(),
        }],
        true,
    );
    let headers = vec![("x-k".to_string(), format!("a {ph}"))];
    let (url, h) = apply_secrets(&s, &format!("https://api.test/p?k={ph}"), &headers)
        .unwrap()
        .unwrap();
    assert_eq!(url, "https://api.test/p?k=real");
    assert_eq!(h, vec![("x-k".to_string(), "a real".to_string())]);
    assert_eq!(apply_secrets(&s, "https://api.test/", &[]).unwrap(), None);
    assert_eq!(
        apply_secrets(&s, "https://evil.test/", &headers).unwrap_err(),
        "secret K not allowed for host: evil.test"
    );
}

/// A user `fetch` that answers every request itself (a mock upstream).
struct MockFetch;

#[async_trait::async_trait]
impl hooks::HttpHooks for MockFetch {
    fn has(&self, h: hooks::Hook) -> bool {
        h == hooks::Hook::Fetch
    }
    async fn fetch(
        &self,
        req: hooks::HookRequest,
    ) -> Result<hooks::HookResponse, hooks::HookError> {
        Ok(hooks::HookResponse {
            status: 200,
            status_text: String::new(),
            headers: vec![],
            body: Bytes::from(format!("mock:{}", req.url)),
        })
    }
}

#[tokio::test]
async fn a_user_fetch_serves_names_the_host_cannot_resolve_but_internal_ones_stay_refused() {
    let eg = egress(Policy {
        hooks: Some(Arc::new(MockFetch)),
        allowed_hosts: Some(policy::patterns(&[
            "api.example.invalid",
            "*.wild.invalid",
            "127.0.0.1",
            "localhost",
        ])),
        ..Policy::default()
    });
    // `.invalid` never resolves (RFC 6761): only the user's fetch knows it.
    let (s, b) = guest_get(eg.clone(), "api.example.invalid", "/x", &[]).await;
    assert_eq!((s, b.as_str()), (200, "mock:http://api.example.invalid/x"));
    // Through a wildcard, an unresolvable name stays refused.
    let (s, _) = guest_get(eg.clone(), "x.wild.invalid", "/x", &[]).await;
    assert_ne!(s, 200);
    // A name or address that is internal is still judged and refused.
    let (s, _) = guest_get(eg.clone(), "127.0.0.1", "/x", &[]).await;
    assert_eq!(s, 403);
    let (s, _) = guest_get(eg, "localhost", "/x", &[]).await;
    assert_eq!(s, 403);
}
