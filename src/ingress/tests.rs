//! The gateway against "guest" servers on host loopback (a connector that
//! dials `127.0.0.1:<port>` on the host), spoken to with raw HTTP/1.1.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::hooks::*;
use super::listeners::Route;
use super::*;
use crate::net::dial::{BoxStream, GuestConnector};
use crate::vfs::memory::MemoryProvider;

struct Loopback;
#[async_trait]
impl GuestConnector for Loopback {
    async fn connect(&self, port: u16, _t: Duration) -> io::Result<BoxStream> {
        Ok(Box::new(TcpStream::connect(("127.0.0.1", port)).await?))
    }
}

/// A one-behaviour server: each connection's request head is read, then
/// `answer(head, stream)` runs.
async fn guest<F, Fut>(answer: F) -> u16
where
    F: Fn(String, BufReader<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                answer(head, r).await;
            });
        }
    });
    port
}

/// Answers 200 with the request head as the body.
async fn echo_head() -> u16 {
    guest(|head, mut s| async move {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-guest: 1\r\n\r\n{head}",
            head.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
    })
    .await
}

async fn gateway(
    routes: Vec<Route>,
    hooks: Option<Arc<dyn IngressHooks>>,
    opts: GatewayOptions,
) -> Gateway {
    let l = Listeners::new(Arc::new(MemoryProvider::new()))
        .await
        .unwrap();
    l.set_routes(routes).await.unwrap();
    Gateway::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Loopback),
        l,
        hooks,
        opts,
    )
    .await
    .unwrap()
}

fn route(prefix: &str, port: u16) -> Route {
    Route {
        prefix: prefix.into(),
        port,
        strip_prefix: true,
    }
}

/// Send raw bytes, read until the gateway closes.
async fn raw(g: &Gateway, request: &str) -> String {
    let mut c = TcpStream::connect(g.local_addr()).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n\r\n")
}

#[tokio::test]
async fn routes_by_longest_prefix_and_strips() {
    let (a, b) = (echo_head().await, echo_head().await);
    let g = gateway(
        vec![
            route("/", a),
            route("/api", b),
            Route {
                strip_prefix: false,
                ..route("/keep", b)
            },
        ],
        None,
        GatewayOptions::default(),
    )
    .await;
    let r = raw(&g, &get("/api/users?x=1")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("GET /users?x=1 HTTP/1.1"), "{r}");
    assert!(r.contains("x-forwarded-prefix: /api"), "{r}");
    assert!(r.contains("x-forwarded-for: 127.0.0.1"), "{r}");
    assert!(r.contains("x-forwarded-host: example.test"), "{r}");
    assert!(r.contains("host: example.test"), "{r}");
    assert!(r.contains("connection: close"), "{r}");
    assert!(raw(&g, &get("/api")).await.contains("GET / HTTP/1.1"));
    assert!(raw(&g, &get("/keep/x"))
        .await
        .contains("GET /keep/x HTTP/1.1"));
    let r = raw(&g, &get("/other")).await;
    assert!(
        r.contains("GET /other HTTP/1.1") && !r.contains("x-forwarded-prefix"),
        "{r}"
    );
}

#[tokio::test]
async fn errors_are_upstreams_texts() {
    let g = gateway(vec![route("/a", 1)], None, GatewayOptions::default()).await;
    let r = raw(&g, &get("/b")).await;
    assert!(
        r.starts_with("HTTP/1.1 404") && r.ends_with("no route\n"),
        "{r}"
    );
    // Port 1 refuses: 502 without details.
    let r = raw(&g, &get("/a")).await;
    assert!(
        r.starts_with("HTTP/1.1 502") && r.ends_with("\r\n\r\nbad gateway\n"),
        "{r}"
    );
    let r = raw(
        &g,
        "GET /a HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 426") && r.contains("upgrade: websocket"),
        "{r}"
    );
    assert!(r.ends_with("use websocket upgrade\n"), "{r}");
    let r = raw(&g, "garbage\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

#[tokio::test]
async fn close_delimited_chunked_and_large_bodies_pass() {
    let close_delimited = guest(|_, mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")
            .await;
        for i in 0..100 {
            let _ = s.write_all(format!("line {i}\n").as_bytes()).await;
        }
        // EOF ends the body.
    })
    .await;
    let big = guest(|_, mut s| async move {
        let n = 8 << 20;
        let _ = s
            .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").as_bytes())
            .await;
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..n / chunk.len() {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let g = gateway(
        vec![route("/cd", close_delimited), route("/big", big)],
        None,
        GatewayOptions::default(),
    )
    .await;
    let r = raw(&g, &get("/cd")).await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert!(r.contains("transfer-encoding: chunked"), "{r}");
    assert!(r.contains("line 0\n") && r.contains("line 99\n"), "{r}");
    let r = raw(
        &g,
        "HEAD /big HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.contains("content-length: 8388608") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    let r = raw(&g, &get("/big")).await;
    assert!(r.contains("content-length: 8388608"), "{}", &r[..200]);
    let body = &r[r.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body.len(), 8 << 20);
}

#[tokio::test]
async fn chunks_stream_before_the_body_ends_and_idle_bodies_time_out() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let sse = guest(move |_, mut s| {
        let rx = rx.clone();
        async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
                .await;
            if let Some(rx) = rx.lock().await.take() {
                let _ = rx.await;
            }
            let _ = s.write_all(b"7\r\ndata: 2\r\n0\r\n\r\n").await;
        }
    })
    .await;
    let silent = guest(|_, mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let headless = guest(|_, _s| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let opts = GatewayOptions {
        upstream_header_timeout: Duration::from_millis(300),
        upstream_response_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let g = gateway(
        vec![
            route("/sse", sse),
            route("/silent", silent),
            route("/headless", headless),
        ],
        None,
        opts,
    )
    .await;
    let mut c = TcpStream::connect(g.local_addr()).await.unwrap();
    c.write_all(get("/sse").as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: 1") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the first event arrives while the stream is open")
            .unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    tx.send(()).unwrap();
    c.read_to_end(&mut seen).await.unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("data: 2"));

    let r = raw(&g, &get("/headless")).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    // The head went out: the connection just ends, short.
    let r = raw(&g, &get("/silent")).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("12345"), "{r}");
}

#[tokio::test]
async fn request_bodies_stream_and_keep_or_drop_their_length() {
    let echo_body = guest(|head, s| async move {
        // Read what the gateway sends after the head, answer with it.
        let mut s = s;
        let mut body = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(500), s.read(&mut body))
            .await
            .map(|r| r.unwrap_or(0))
            .unwrap_or(0);
        let text = format!("{head}{}", String::from_utf8_lossy(&body[..n]));
        let _ = s
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )
            .await;
    })
    .await;
    let g = gateway(vec![route("/", echo_body)], None, GatewayOptions::default()).await;
    let r = raw(
        &g,
        "POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await;
    assert!(
        r.contains("content-length: 5\r\n") && r.ends_with("hello"),
        "{r}"
    );
    // Content-Length is ignored next to Transfer-Encoding; re-chunked.
    let r = raw(
        &g,
        "POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        r.contains("transfer-encoding: chunked") && r.contains("hello"),
        "{r}"
    );
}

struct TestHooks;
#[async_trait]
impl IngressHooks for TestHooks {
    fn has_is_allowed(&self) -> bool {
        true
    }
    fn has_on_request(&self) -> bool {
        true
    }
    fn has_on_response(&self) -> bool {
        true
    }
    async fn is_allowed(&self, info: AllowInfo) -> Result<bool, HookError> {
        if info.path.starts_with("/custom") {
            return Err(HookError::Blocked {
                status: 451,
                status_message: "Nope".into(),
                body: "blocked by test\n".into(),
            });
        }
        Ok(!info.path.starts_with("/deny"))
    }
    async fn on_request(&self, req: HookRequest) -> Result<Option<RequestPatch>, HookError> {
        Ok(Some(RequestPatch {
            backend_target: req
                .path
                .starts_with("/rewrite")
                .then(|| "/rewritten".into()),
            headers: vec![("x-added".into(), Some(vec!["yes".into()]))],
            buffer_response_body: Some(req.path.starts_with("/buffer")),
            max_buffered_response_body_bytes: req.path.starts_with("/buffer/small").then_some(4),
            ..Default::default()
        }))
    }
    async fn on_response(
        &self,
        resp: HookResponse,
        req: HookRequest,
    ) -> Result<Option<ResponsePatch>, HookError> {
        let body = resp
            .body
            .map(|b| Bytes::from(String::from_utf8_lossy(&b).to_uppercase()));
        Ok(Some(ResponsePatch {
            status: req.path.starts_with("/teapot").then_some(418),
            headers: vec![
                ("x-guest".into(), None),
                ("x-patched".into(), Some(vec!["1".into()])),
            ],
            body,
            ..Default::default()
        }))
    }
}

#[tokio::test]
async fn hooks_deny_block_and_patch() {
    let port = echo_head().await;
    let g = gateway(
        vec![route("/", port)],
        Some(Arc::new(TestHooks)),
        GatewayOptions::default(),
    )
    .await;
    let r = raw(&g, &get("/deny")).await;
    assert!(
        r.starts_with("HTTP/1.1 403 Forbidden") && r.ends_with("forbidden\n"),
        "{r}"
    );
    let r = raw(&g, &get("/custom")).await;
    assert!(
        r.starts_with("HTTP/1.1 451 Nope") && r.ends_with("blocked by test\n"),
        "{r}"
    );
    let r = raw(&g, &get("/rewrite/x")).await;
    assert!(
        r.contains("GET /rewritten HTTP/1.1") && r.contains("x-added: yes"),
        "{r}"
    );
    assert!(r.contains("x-patched: 1") && !r.contains("x-guest"), "{r}");
    let r = raw(&g, &get("/teapot")).await;
    assert!(r.starts_with("HTTP/1.1 418"), "{r}");
    let r = raw(&g, &get("/buffer/x")).await;
    assert!(r.contains("GET /BUFFER/X HTTP/1.1"), "{r}");
    let r = raw(&g, &get("/buffer/small")).await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
}

#[tokio::test]
async fn websockets_are_piped_after_101() {
    let ws = guest(|head, mut s| async move {
        assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: x\r\n\r\n")
            .await;
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let g = gateway(vec![route("/ws", ws)], None, GatewayOptions::default()).await;
    let mut c = TcpStream::connect(g.local_addr()).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: a2V5\r\nsec-websocket-version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"ping-bytes").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping-bytes");

    let r = raw(
        &g,
        "POST /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.ends_with("websocket upgrade requires GET\n"),
        "{r}"
    );
    let off = gateway(
        vec![route("/ws", ws)],
        None,
        GatewayOptions {
            allow_websockets: false,
            ..Default::default()
        },
    )
    .await;
    let r = raw(
        &off,
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 501") && r.ends_with("websocket upgrades disabled\n"),
        "{r}"
    );
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_the_response() {
    let port = echo_head().await;
    let g = gateway(vec![route("/", port)], None, GatewayOptions::default()).await;
    let mut c = TcpStream::connect(g.local_addr()).await.unwrap();
    c.write_all(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let r = String::from_utf8_lossy(&out);
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("GET /x HTTP/1.1"),
        "{r}"
    );
}

#[tokio::test]
async fn close_stops_listening() {
    let g = gateway(vec![], None, GatewayOptions::default()).await;
    let addr = g.local_addr();
    g.close();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}
