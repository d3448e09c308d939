//! Server and client on 127.0.0.1 ephemeral ports; raw TCP where the test
//! needs to speak HTTP (or broken WebSocket) itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn server(
    token: Option<&str>,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, mpsc::Receiver<Connection>) {
    let mut cfg = ServerConfig::new(loopback(), token.map(str::to_string));
    tweak(&mut cfg);
    bind(cfg).await.expect("bind")
}

/// Echo every message of every accepted connection.
fn echo(mut rx: mpsc::Receiver<Connection>) {
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            tokio::spawn(async move {
                loop {
                    let got = c.recv_many(64).await;
                    if got.is_empty() {
                        break;
                    }
                    for m in got {
                        if c.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

fn url(h: &ServerHandle) -> String {
    format!("ws://127.0.0.1:{}", h.local_addr().port())
}

fn with_token(t: &str) -> ClientConfig {
    ClientConfig {
        token: Some(t.to_string()),
        ..ClientConfig::default()
    }
}

/// One raw HTTP/1.1 request; the whole response as text.
async fn http(h: &ServerHandle, method: &str, path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    out
}

async fn recv_one(c: &Connection) -> Message {
    let mut got = tokio::time::timeout(Duration::from_secs(5), c.recv_many(1))
        .await
        .expect("a message in time");
    assert_eq!(got.len(), 1, "connection closed: {:?}", c.close_status());
    got.remove(0)
}

/// Waits until `recv_many` reports the end; the close status then.
async fn closed(c: &Connection) -> CloseStatus {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !c.recv_many(64).await.is_empty() {}
    })
    .await
    .expect("closed in time");
    c.close_status().expect("a status once closed")
}

#[tokio::test]
async fn health_ready_metrics_and_404() {
    let (h, _rx) = server(Some("t"), |_| {}).await;
    let r = http(&h, "GET", "/healthz", "").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok\n"),
        "{r}"
    );
    let r = http(&h, "GET", "/readyz", "").await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("ready\n"),
        "{r}"
    );
    h.set_ready(false);
    assert!(http(&h, "GET", "/readyz", "")
        .await
        .starts_with("HTTP/1.1 503"));
    h.set_ready(true);

    h.set_metrics("# TYPE gondolin_vms gauge\ngondolin_vms 3\n");
    let r = http(&h, "GET", "/metrics", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("text/plain; version=0.0.4"), "{r}");
    for name in [
        "gondolin_remote_connections 0",
        "gondolin_remote_connections_total 0",
        "gondolin_remote_auth_failures_total 0",
        "gondolin_remote_bytes_received_total 0",
        "gondolin_remote_bytes_sent_total 0",
    ] {
        assert!(r.contains(&format!("\n{name}\n")), "{name} in {r}");
    }
    assert!(r.ends_with("gondolin_vms 3\n"), "{r}");

    for path in ["/", "/v2", "/healthz/x", "/v1/"] {
        let r = http(&h, "GET", path, "Authorization: Bearer t\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }
    h.close().await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_401_and_nothing_is_accepted() {
    let (h, mut rx) = server(Some("s3cret"), |_| {}).await;
    for cfg in [
        ClientConfig::default(),
        with_token("s3cre"),
        with_token("s3cretx"),
    ] {
        let e = connect(&url(&h), cfg).await.unwrap_err();
        assert!(matches!(e, RemoteError::Unauthorized), "{e}");
        assert!(e.to_string().contains("401"), "{e}");
    }
    let r = http(&h, "GET", "/v1", "Authorization: Basic czNjcmV0\r\n").await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{r}"
    );
    assert!(rx.try_recv().is_err(), "nothing handed over");
    let m = http(&h, "GET", "/metrics", "").await;
    assert!(
        m.contains("\ngondolin_remote_auth_failures_total 4\n"),
        "{m}"
    );

    let c = connect(&url(&h), with_token("s3cret"))
        .await
        .expect("right token");
    let s = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.remote_addr().starts_with("127.0.0.1:"),
        "{}",
        s.remote_addr()
    );
    assert_eq!(c.remote_addr(), h.local_addr().to_string());
    h.close().await;
}

#[tokio::test]
async fn echo_text_and_binary_then_close_codes_both_ways() {
    let (h, rx) = server(Some("t"), |_| {}).await;
    echo(rx);
    let c = connect(&url(&h), with_token("t")).await.unwrap();
    assert!(c.remote_addr().starts_with("127.0.0.1:"));
    c.send(Message::Text("héllo".into())).await.unwrap();
    c.send(Message::Binary(Bytes::from_static(&[0, 1, 2, 255])))
        .await
        .unwrap();
    assert_eq!(recv_one(&c).await, Message::Text("héllo".into()));
    assert_eq!(
        recv_one(&c).await,
        Message::Binary(Bytes::from_static(&[0, 1, 2, 255]))
    );
    c.close(4000, "bye");
    let st = closed(&c).await;
    assert_eq!((st.code, st.reason.as_str()), (4000, "bye"));
    assert!(matches!(
        c.send(Message::Text("late".into())).await,
        Err(RemoteError::Closed)
    ));

    // The server closes: the client sees its code and reason.
    let (h2, mut rx2) = server(Some("t"), |_| {}).await;
    let c = connect(&url(&h2), with_token("t")).await.unwrap();
    let s = rx2.recv().await.unwrap();
    s.close(4001, "done here");
    let st = closed(&c).await;
    assert_eq!((st.code, st.reason.as_str()), (4001, "done here"));
    assert_eq!(closed(&s).await.code, 4001);

    // Server shutdown: 1001 "server shutting down".
    let c = connect(&url(&h2), with_token("t")).await.unwrap();
    let _s = rx2.recv().await.unwrap();
    h2.close().await;
    let st = closed(&c).await;
    assert_eq!(
        (st.code, st.reason.as_str()),
        (1001, "server shutting down")
    );
    assert!(
        TcpStream::connect(h2.local_addr()).await.is_err(),
        "still listening"
    );
    h.close().await;
}

#[tokio::test]
async fn oversized_message_closes_1009_and_the_server_serves_others() {
    let (h, rx) = server(None, |c| c.max_message_bytes = 4096).await;
    let (side_tx, mut side_rx) = mpsc::channel(4);
    let mut rx = rx;
    tokio::spawn(async move {
        // The first connection goes to the test, the rest echo.
        let first = rx.recv().await.unwrap();
        side_tx.send(first).await.unwrap();
        echo(rx);
    });
    let big = ClientConfig {
        max_message_bytes: 1 << 20,
        ..ClientConfig::default()
    };
    let c = connect(&url(&h), big.clone()).await.unwrap();
    let s = side_rx.recv().await.unwrap();
    c.send(Message::Binary(Bytes::from(vec![7u8; 8192])))
        .await
        .unwrap();
    let st = closed(&c).await;
    assert_eq!(st.code, 1009, "{st:?}");
    assert!(st.reason.contains("4096"), "{st:?}");
    assert_eq!(closed(&s).await.code, 1009);

    // Sending over our own limit fails before the wire.
    let c2 = connect(&url(&h), ClientConfig::default()).await.unwrap();
    let e = c2
        .send(Message::Binary(Bytes::from(vec![0u8; (16 << 20) + 1])))
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::TooLarge { .. }), "{e}");
    c2.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(recv_one(&c2).await, Message::Text("still here".into()));
    h.close().await;
}

/// A raw upgrade; returns the socket after the 101 head.
async fn raw_upgrade(h: &ServerHandle) -> TcpStream {
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    s.write_all(
        b"GET /v1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// Reads frames until the server's close frame; its code.
async fn close_code(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    loop {
        let mut i = 0;
        while i + 2 <= buf.len() {
            let (op, len) = (buf[i] & 0x0f, (buf[i + 1] & 0x7f) as usize);
            assert!(len < 126, "short frames only");
            if op == 8 && i + 4 <= buf.len() {
                return u16::from_be_bytes([buf[i + 2], buf[i + 3]]);
            }
            i += 2 + len;
        }
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a close frame in time")
            .unwrap();
        assert!(n > 0, "EOF without a close frame: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn malformed_frame_closes_1002_and_idle_peer_is_closed() {
    let (h, rx) = server(None, |c| {
        c.ping_interval = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(400);
    })
    .await;
    echo(rx);
    // An unmasked client frame is a protocol error.
    let mut s = raw_upgrade(&h).await;
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(close_code(&mut s).await, 1002);
    drop(s);

    // A peer that never answers pings: closed (1001) after the idle timeout.
    let mut s = raw_upgrade(&h).await;
    assert_eq!(close_code(&mut s).await, 1001);
    drop(s);

    // A live client answers pings and stays past several idle timeouts.
    let c = connect(&url(&h), ClientConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.send(Message::Text("alive".into())).await.unwrap();
    assert_eq!(recv_one(&c).await, Message::Text("alive".into()));
    h.close().await;
}

#[tokio::test]
async fn drain_and_connection_limit_are_503() {
    let (h, _rx) = server(None, |c| c.max_connections = 1).await;
    let _first = connect(&url(&h), ClientConfig::default()).await.unwrap();
    let e = connect(&url(&h), ClientConfig::default())
        .await
        .unwrap_err();
    match &e {
        RemoteError::Unavailable { reason } => assert!(reason.contains("maxConnections"), "{e}"),
        _ => panic!("{e}"),
    }
    h.drain();
    let r = http(&h, "GET", "/readyz", "").await;
    assert!(
        r.starts_with("HTTP/1.1 503") && r.ends_with("draining\n"),
        "{r}"
    );
    let e = connect(&url(&h), ClientConfig::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("draining"), "{e}");
    assert!(http(&h, "GET", "/healthz", "")
        .await
        .starts_with("HTTP/1.1 200"));
    h.close().await;
}

#[tokio::test]
async fn tls_round_trip_with_an_extra_ca() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (ck.cert.pem(), ck.key_pair.serialize_pem());
    let (h, rx) = server(Some("t"), |c| c.tls = Some((cert.clone(), key))).await;
    echo(rx);
    let wss = format!("wss://localhost:{}/", h.local_addr().port());
    let e = connect(&wss, with_token("t")).await.unwrap_err();
    assert!(matches!(e, RemoteError::Connect { .. }), "untrusted: {e}");
    let cfg = ClientConfig {
        ca_pem: Some(cert),
        ..with_token("t")
    };
    let c = connect(&wss, cfg).await.unwrap();
    c.send(Message::Binary(Bytes::from(vec![9u8; 100_000])))
        .await
        .unwrap();
    assert_eq!(
        recv_one(&c).await,
        Message::Binary(Bytes::from(vec![9u8; 100_000]))
    );
    h.close().await;
}

/// Sends 64 KiB messages until one does not complete within 500 ms; how
/// many did.
async fn send_until_stalled(c: &Connection) -> usize {
    let chunk = Bytes::from(vec![1u8; 64 * 1024]);
    let mut sent = 0usize;
    while tokio::time::timeout(
        Duration::from_millis(500),
        c.send(Message::Binary(chunk.clone())),
    )
    .await
    .is_ok()
    {
        sent += 1;
        assert!(sent < 1024, "64 MiB accepted without the peer reading");
    }
    sent
}

#[tokio::test]
async fn enqueue_keeps_order_past_a_full_queue() {
    let (h, mut rx) = server(None, |_| {}).await;
    let c = connect(&url(&h), ClientConfig::default()).await.unwrap();
    let s = rx.recv().await.unwrap();
    // Twice the byte budget, none awaited: the later ones are held.
    let (mut queued, mut waiting) = (0, Vec::new());
    for i in 0..256u32 {
        let chunk = Message::Binary(Bytes::from(vec![i as u8; 64 * 1024]));
        for m in [chunk, Message::Text(format!("n{i}"))] {
            match c.enqueue(m).unwrap() {
                Enqueued::Queued => queued += 1,
                Enqueued::Waiting(w) => waiting.push(w),
            }
        }
    }
    assert!(
        queued > 0 && !waiting.is_empty(),
        "{queued} queued, {} held",
        waiting.len()
    );
    let mut got = Vec::new();
    while got.len() < 512 {
        got.extend(
            tokio::time::timeout(Duration::from_secs(10), s.recv_many(64))
                .await
                .unwrap(),
        );
    }
    for (i, pair) in got.chunks(2).enumerate() {
        assert!(
            matches!(&pair[0], Message::Binary(b) if b[0] == i as u8),
            "binary {i}"
        );
        assert_eq!(pair[1], Message::Text(format!("n{i}")));
    }
    for w in waiting {
        Enqueued::wait(w).await.unwrap();
    }
    // Held messages of a closing connection fail; they never hang.
    let more: Vec<_> = (0..300)
        .filter_map(
            |_| match c.enqueue(Message::Binary(Bytes::from(vec![0; 64 * 1024]))) {
                Ok(Enqueued::Waiting(w)) => Some(w),
                _ => None,
            },
        )
        .collect();
    assert!(!more.is_empty());
    c.close(1000, "");
    for w in more {
        let r = tokio::time::timeout(Duration::from_secs(5), Enqueued::wait(w)).await;
        assert!(r.is_ok(), "a held message hung after close");
    }
    h.close().await;
}

async fn woken_in_time(w: &mut mpsc::UnboundedReceiver<()>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .is_ok()
}

#[tokio::test]
async fn try_recv_calls_the_hook_when_messages_come_and_at_the_end() {
    let (h, mut rx) = server(None, |_| {}).await;
    let c = connect(&url(&h), ClientConfig::default()).await.unwrap();
    let s = rx.recv().await.unwrap();
    let (wake_tx, mut woken) = mpsc::unbounded_channel();
    s.on_readable(move || {
        let _ = wake_tx.send(());
    });
    assert_eq!(s.try_recv_many(64), TryRecv::Empty);
    c.send(Message::Text("a".into())).await.unwrap();
    assert!(woken_in_time(&mut woken).await, "no wake for a message");
    assert_eq!(
        s.try_recv_many(64),
        TryRecv::Messages(vec![Message::Text("a".into())])
    );
    // Found empty again, then the peer closes: one last call, then Closed.
    assert_eq!(s.try_recv_many(64), TryRecv::Empty);
    c.close(4000, "bye");
    assert!(woken_in_time(&mut woken).await, "no wake at the end");
    assert_eq!(s.try_recv_many(64), TryRecv::Closed);
    assert_eq!(s.close_status().unwrap().code, 4000);
    // A hook set after the end: one call at once, and it is not kept.
    let held = std::sync::Arc::new(());
    let (tx, mut late) = mpsc::unbounded_channel();
    let keep = held.clone();
    s.on_readable(move || {
        let _ = (&keep, tx.send(()));
    });
    assert!(woken_in_time(&mut late).await, "a late hook was not called");
    assert_eq!(
        std::sync::Arc::strong_count(&held),
        1,
        "a late hook was kept"
    );
    h.close().await;
}

#[tokio::test]
async fn a_wrong_path_or_scheme_says_what_to_use() {
    let (h, _rx) = server(None, |_| {}).await;
    let port = h.local_addr().port();
    let e = connect(
        &format!("ws://127.0.0.1:{port}/v2"),
        ClientConfig::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("404") && e.contains("/v1"), "{e}");
    let e = connect(&format!("wss://127.0.0.1:{port}"), ClientConfig::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("use ws://"), "{e}");
    h.close().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_stops_send() {
    let (h, mut rx) = server(None, |_| {}).await;
    // Client → a server connection that never reads.
    let c = connect(&url(&h), ClientConfig::default()).await.unwrap();
    let s = rx.recv().await.unwrap();
    let sent = send_until_stalled(&c).await;
    // Queues (2 × 8 MiB) plus socket buffers, and no more.
    assert!(sent >= 8, "stalled early: {sent}");
    // Server → a client that never reads: the same.
    let sent = send_until_stalled(&s).await;
    assert!(sent >= 8, "stalled early: {sent}");
    // Reading resumes the flow.
    let got = c.recv_many(64).await;
    assert!(!got.is_empty());
    h.close().await;
}

#[tokio::test]
async fn bad_options_name_the_fix() {
    let e = bind(ServerConfig::new("0.0.0.0:0".parse().unwrap(), None))
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("--token-file") && m.contains("--insecure-no-auth"),
        "{m}"
    );
    let mut cfg = ServerConfig::new(loopback(), Some("t".into()));
    cfg.tls = Some(("not pem".into(), "nope".into()));
    assert!(matches!(bind(cfg).await.unwrap_err(), RemoteError::Tls(_)));
    let mut cfg = ServerConfig::new(loopback(), None);
    cfg.http_deadline = Duration::from_millis(5);
    let m = bind(cfg).await.unwrap_err().to_string();
    assert!(
        m.contains("--http-deadline-ms") && m.contains("5 ms"),
        "{m}"
    );
    for u in ["http://127.0.0.1:1", "ws://", "nonsense"] {
        let e = connect(u, ClientConfig::default()).await.unwrap_err();
        assert!(matches!(e, RemoteError::Url { .. }), "{u}: {e}");
    }
    let e = connect("ws://127.0.0.1:1", ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, RemoteError::Connect { .. }), "{e}");
}

fn ep(u: &str) -> Result<String, RemoteError> {
    client::endpoint(u).map(String::from)
}

#[test]
fn endpoint_gets_the_protocol_path() {
    assert_eq!(ep("ws://h:1").unwrap(), "ws://h:1/v1");
    assert_eq!(ep("wss://h/").unwrap(), "wss://h/v1");
    assert_eq!(ep("ws://h/custom/v1").unwrap(), "ws://h/custom/v1");
}

#[tokio::test]
async fn a_peer_that_reads_nothing_while_we_write_is_closed_1008() {
    let (h, mut rx) = server(None, |c| c.write_timeout = Duration::from_millis(300)).await;
    // Upgraded by hand; never read from, never answers a ping.
    let _raw = raw_upgrade(&h).await;
    let s = rx.recv().await.unwrap();
    // Sends stall once the queue and the socket buffers are full; the
    // write timeout then fails them.
    let chunk = Bytes::from(vec![1u8; 64 * 1024]);
    let mut sent = 0usize;
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.send(Message::Binary(chunk.clone())).await.is_ok() {
            sent += 1;
            assert!(sent < 1024, "64 MiB accepted without the peer reading");
        }
    })
    .await
    .expect("the write timeout ends the stalled send");
    assert!(sent >= 8, "stalled early: {sent}");
    let st = closed(&s).await;
    assert_eq!(st.code, 1008, "{st:?}");
    assert!(st.reason.contains("write timeout"), "{st:?}");
    // A reader that keeps up is not affected by the same timeout.
    let (h2, rx2) = server(None, |c| c.write_timeout = Duration::from_millis(300)).await;
    echo(rx2);
    let c = connect(&url(&h2), ClientConfig::default()).await.unwrap();
    for i in 0..20 {
        c.send(Message::Binary(Bytes::from(vec![i as u8; 512 * 1024])))
            .await
            .unwrap();
        assert_eq!(recv_one(&c).await.len(), 512 * 1024);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.close_status(), None);
    h.close().await;
    h2.close().await;
}

/// Writes `req` on a new socket and reads until the server closes it
/// (within `within`); what came back (a reset reads as what came before).
async fn until_eof(h: &ServerHandle, req: &str, within: Duration) -> String {
    let mut s = TcpStream::connect(h.local_addr()).await.unwrap();
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{req:?}: not closed within {within:?}"));
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn every_answer_but_the_upgrade_closes_the_connection() {
    let (h, _rx) = server(Some("t"), |_| {}).await;
    // HTTP/1.1 keep-alive asked for (no Connection header): one response, then EOF.
    for (req, status) in [
        ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
        ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
        ("GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
        ("GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n", "401"),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            "200",
        ),
    ] {
        let r = until_eof(&h, req, Duration::from_secs(5)).await;
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{req:?}: {r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "one response: {r}");
    }
    h.close().await;
}

#[tokio::test]
async fn a_slow_http_client_is_cut_off_by_the_deadline_and_the_head_timeout() {
    let (h, rx) = server(None, |c| c.http_deadline = Duration::from_millis(400)).await;
    echo(rx);
    // A head that never ends (the head timeout, 10 s, would not fire yet).
    let r = until_eof(
        &h,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r, "");
    // Nothing at all.
    assert_eq!(until_eof(&h, "", Duration::from_secs(3)).await, "");
    // An upgraded connection outlives the deadline.
    let c = connect(&url(&h), ClientConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.send(Message::Text("still".into())).await.unwrap();
    assert_eq!(recv_one(&c).await, Message::Text("still".into()));
    h.close().await;

    let (h, _rx) = server(None, |c| c.http_head_timeout = Duration::from_millis(300)).await;
    let r = until_eof(&h, "GET /healthz HTTP/1.1\r\n", Duration::from_secs(3)).await;
    assert!(!r.contains("200 OK"), "{r}");
    h.close().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_http_slot() {
    let (h, rx) = server(None, |c| c.max_http_per_ip = 2).await;
    echo(rx);
    // Two idle sockets from 127.0.0.1 hold its two slots.
    let idle1 = TcpStream::connect(h.local_addr()).await.unwrap();
    let _idle2 = TcpStream::connect(h.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = until_eof(
        &h,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r, "", "a third connection from the same address is dropped");
    let r = until_eof(
        &h,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r, "");
    // One freed: served again.
    drop(idle1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http(&h, "GET", "/metrics", "").await;
    assert!(
        r.contains("\ngondolin_remote_http_refused_total 2\n"),
        "{r}"
    );
    // Upgraded connections give their slot back: three at once is fine.
    let cs = [
        connect(&url(&h), ClientConfig::default()).await.unwrap(),
        connect(&url(&h), ClientConfig::default()).await.unwrap(),
        connect(&url(&h), ClientConfig::default()).await.unwrap(),
    ];
    for c in &cs {
        c.send(Message::Text("x".into())).await.unwrap();
        assert_eq!(recv_one(c).await, Message::Text("x".into()));
    }
    h.close().await;
}

#[test]
fn the_per_address_cap_counts_ipv6_by_64() {
    use super::server::ip_key as key;
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(key(a), key(b));
    assert_ne!(key(a), key(c));
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
}
