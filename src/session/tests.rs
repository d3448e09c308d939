//! The line codec and the protocol's refusals on their own, then the
//! server on a real unix socket against a scripted fake guest.

use super::protocol::decode_base64_lenient;
use super::request::{exec_request, signal_number};
use super::*;
use crate::control::{fake_guest_pair, FakeGuest};
use gondolin_wire::{GuestMsg, HostMsg, Stream};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

// --- line codec -------------------------------------------------------

#[test]
fn lines_split_across_reads_and_bound_is_inclusive() {
    let mut d = LineDecoder::new(8);
    d.push(b"ab");
    assert_eq!(d.next_line().unwrap(), None);
    d.push(b"c\n12345678\nx");
    assert_eq!(d.next_line().unwrap().unwrap(), &b"abc"[..]);
    // Exactly the bound (without the newline) is accepted.
    assert_eq!(d.next_line().unwrap().unwrap(), &b"12345678"[..]);
    assert_eq!(d.next_line().unwrap(), None);
    d.push(b"\n");
    assert_eq!(d.next_line().unwrap().unwrap(), &b"x"[..]);
}

#[test]
fn a_long_line_fails_before_its_newline_and_stays_failed() {
    let mut d = LineDecoder::new(8);
    d.push(b"123456789");
    assert_eq!(d.next_line(), Err(LineTooLong { max: 8 }));
    d.push(b"\n{}\n");
    assert!(
        d.next_line().is_err(),
        "no resynchronising after an oversized line"
    );

    let mut d = LineDecoder::new(8);
    d.push(b"123456789\n");
    assert!(d.next_line().is_err(), "one byte over, newline present");
}

// --- messages -----------------------------------------------------------

fn refusal(line: &str) -> Refusal {
    parse_line(line.as_bytes()).unwrap_err()
}

#[test]
fn bad_json_and_bad_shapes_are_invalid_request() {
    let r = refusal("{not json");
    assert_eq!(
        (r.id, r.code, r.message.as_str()),
        (None, Code::InvalidRequest, "invalid JSON message")
    );
    assert_eq!(refusal("[1]").message, "message must be a JSON object");
    assert_eq!(
        refusal(r#"{"id":1}"#).message,
        "message needs a string type"
    );
    assert_eq!(refusal(r#"{"id":1}"#).id, Some(1));
    let r = refusal(r#"{"type":"exec","id":-1}"#);
    assert_eq!(
        (r.id, r.message.as_str()),
        (None, "exec requires a uint32 id")
    );
    assert_eq!(refusal(r#"{"type":"exec","id":4294967296}"#).id, None);
    let r = refusal(r#"{"type":"exec","id":1,"argv":[]}"#);
    assert_eq!((r.id, r.code), (Some(1), Code::InvalidRequest));
    assert_eq!(
        r.message,
        "exec requires argv: a non-empty array of strings"
    );
    for (line, msg) in [
        (
            r#"{"type":"exec","id":1,"argv":["a",1]}"#,
            "exec requires argv",
        ),
        (
            r#"{"type":"exec","id":1,"argv":["a"],"env":"A=1"}"#,
            "exec env must be",
        ),
        (
            r#"{"type":"exec","id":1,"argv":["a"],"cwd":null}"#,
            "exec cwd must be a string",
        ),
        (
            r#"{"type":"exec","id":1,"argv":["a"],"stdin":1}"#,
            "exec stdin must be a boolean",
        ),
        (
            r#"{"type":"exec","id":1,"argv":["a"],"pty":"y"}"#,
            "exec pty must be a boolean",
        ),
        (
            r#"{"type":"exec","id":1,"argv":["a"],"rows":0}"#,
            "exec rows/cols must be positive",
        ),
        (
            r#"{"type":"exec","id":1,"argv":["a"],"cols":65536}"#,
            "exec rows/cols must be positive",
        ),
        (
            r#"{"type":"stdin","id":1,"data":5}"#,
            "stdin data must be a base64 string",
        ),
        (
            r#"{"type":"stdin","id":1,"eof":"yes"}"#,
            "stdin eof must be a boolean",
        ),
        (
            r#"{"type":"resize","id":1,"rows":2}"#,
            "resize requires positive integer",
        ),
        (
            r#"{"type":"kill","id":1,"signal":1.5}"#,
            "kill signal must be a name or a number",
        ),
    ] {
        let r = refusal(line);
        assert_eq!((r.id, r.code), (Some(1), Code::InvalidRequest), "{line}");
        assert!(r.message.starts_with(msg), "{line}: {}", r.message);
    }
}

#[test]
fn unknown_type_names_the_id() {
    let r = refusal(r#"{"type":"bogus","id":2}"#);
    assert_eq!((r.id, r.code), (Some(2), Code::UnknownType));
    assert_eq!(r.message, "unsupported message type");
}

#[test]
fn well_formed_messages_parse() {
    assert_eq!(
        parse_line(b"  \r").unwrap(),
        None,
        "blank lines are skipped"
    );
    let m =
        parse_line(br#"{"type":"exec","id":3.0,"argv":["sh"],"pty":true,"rows":30,"cols":100}"#)
            .unwrap()
            .unwrap();
    let ClientMsg::Exec { id: 3, exec } = m else {
        panic!("{m:?}")
    };
    assert!(exec.pty && !exec.stdin);
    assert_eq!((exec.rows, exec.cols), (Some(30), Some(100)));
    let m = parse_line(br#"{"type":"stdin","id":1,"data":"aGk=","eof":true}"#).unwrap();
    assert_eq!(
        m,
        Some(ClientMsg::Stdin {
            id: 1,
            data: b"hi".to_vec(),
            eof: true
        })
    );
    let m = parse_line(br#"{"type":"kill","id":1}"#).unwrap();
    assert_eq!(
        m,
        Some(ClientMsg::Kill {
            id: 1,
            signal: SignalArg::Name("SIGTERM".into())
        })
    );
}

#[test]
fn base64_is_read_as_node_reads_it() {
    assert_eq!(decode_base64_lenient("aGVsbG8="), b"hello");
    assert_eq!(decode_base64_lenient("aGVs\nbG8"), b"hello");
    assert_eq!(decode_base64_lenient("_-8"), [0xff, 0xef]);
    assert_eq!(decode_base64_lenient("aGk=trailing"), b"hi");
    assert_eq!(decode_base64_lenient("a"), b"");
}

#[test]
fn replies_keep_the_js_field_order() {
    let line = ServerMsg::Status {
        state: "running",
        vm_id: "v",
    }
    .to_line();
    assert_eq!(
        line,
        "{\"type\":\"status\",\"state\":\"running\",\"vmId\":\"v\"}\n"
    );
    let exit = ServerMsg::Exit {
        id: 1,
        exit_code: 0,
        signal: None,
    };
    assert_eq!(
        exit.to_line(),
        "{\"type\":\"exit\",\"id\":1,\"exitCode\":0}\n"
    );
    let r = Refusal::new(None, Code::PayloadTooLarge, "too long");
    assert_eq!(
        ServerMsg::from(&r).to_line(),
        "{\"type\":\"error\",\"code\":\"payload_too_large\",\"message\":\"too long\"}\n"
    );
}

#[test]
fn exec_requests_merge_env_and_check_cwd_and_signals() {
    let msg = |v: Value| {
        let Some(ClientMsg::Exec { exec, .. }) = parse_line(v.to_string().as_bytes()).unwrap()
        else {
            panic!()
        };
        exec
    };
    let base = vec!["A=1".to_string(), "B=2".to_string()];
    let req = exec_request(
        &msg(json!({"type":"exec","id":1,"argv":["x"],"env":["B=3","C"],"pty":true})),
        &base,
    )
    .unwrap();
    assert_eq!(req.env, ["A=1", "B=3", "C="]);
    assert!(req.stdin, "a pty exec has stdin");
    assert_eq!(req.pty, Some((24, 80)));
    let env_obj = json!({"type":"exec","id":1,"argv":["x"],"env":{"B":"4"}});
    assert_eq!(
        exec_request(&msg(env_obj), &base).unwrap().env,
        ["A=1", "B=4"]
    );
    for (v, err) in [
        (
            json!({"env":[1]}),
            "exec options.env entries must be strings",
        ),
        (
            json!({"env":{"K":1}}),
            "exec options.env.K must be a string",
        ),
        (
            json!({"env":["=x"]}),
            "exec options.env has an entry with an empty name",
        ),
        (
            json!({"cwd":"rel"}),
            "exec options.cwd must be an absolute path (got \"rel\")",
        ),
    ] {
        let mut m = json!({"type":"exec","id":1,"argv":["x"]});
        m.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        assert_eq!(exec_request(&msg(m), &base).unwrap_err(), err);
    }
    assert_eq!(signal_number(&SignalArg::Name("SIGKILL".into())), Ok(9));
    assert_eq!(signal_number(&SignalArg::Name("SIGIOT".into())), Ok(6));
    assert_eq!(signal_number(&SignalArg::Number(15.into())), Ok(15));
    assert_eq!(
        signal_number(&SignalArg::Number(65.into())).unwrap_err(),
        "invalid signal: 65"
    );
    assert_eq!(
        signal_number(&SignalArg::Name("SIGNOPE".into())).unwrap_err(),
        "invalid signal: SIGNOPE"
    );
}

// --- the server ---------------------------------------------------------

pub(super) struct Client {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub(super) async fn connect(path: &Path) -> Client {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }
    pub(super) async fn send(&mut self, v: Value) {
        self.w.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }
    /// The next message; `None` at end of stream.
    pub(super) async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.r.read_line(&mut line),
        )
        .await
        .expect("a reply within 10 s")
        .unwrap();
        (n > 0).then(|| serde_json::from_str(&line).unwrap())
    }
    pub(super) async fn expect_error(&mut self, id: Option<u32>, code: &str) -> Value {
        let m = self.recv().await.unwrap();
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["code"], code, "{m}");
        assert_eq!(
            m.get("id").and_then(Value::as_u64),
            id.map(u64::from),
            "{m}"
        );
        m
    }
}

async fn server() -> (AttachServer, FakeGuest, PathBuf) {
    server_with(None).await
}

/// A server on a temp socket for a fake guest, with `snapshot` as its
/// snapshot handler.
pub(super) async fn server_with(
    snapshot: Option<SnapshotHandler>,
) -> (AttachServer, FakeGuest, PathBuf) {
    let (control, conn, guest) = fake_guest_pair();
    std::mem::forget(conn); // keep the client from failing on its own
    let path = std::env::temp_dir().join(format!("gondolin-attach-{}.sock", uuid::Uuid::new_v4()));
    let target = Target {
        vm_id: "vm-1".into(),
        control,
        env: vec!["BASE=1".into()],
        snapshot,
    };
    let server = AttachServer::bind(&path, target).unwrap();
    (server, guest, path)
}

#[tokio::test]
async fn protocol_errors_on_a_live_socket() {
    let (server, mut guest, path) = server().await;
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut c = Client::connect(&path).await;
    assert_eq!(
        c.recv().await.unwrap(),
        json!({"type":"status","state":"running","vmId":"vm-1"})
    );

    c.w.write_all(b"{not json\n").await.unwrap();
    let m = c.expect_error(None, "invalid_request").await;
    assert_eq!(m["message"], "invalid JSON message");
    c.send(json!({"type":"stdin","id":99,"data":"aGk="})).await;
    c.expect_error(Some(99), "unknown_id").await;
    c.send(json!({"type":"kill","id":98})).await;
    c.expect_error(Some(98), "unknown_id").await;
    c.send(json!({"type":"bogus","id":2})).await;
    c.expect_error(Some(2), "unknown_type").await;

    // A running exec (the fake guest never ends it) holds its id.
    c.send(json!({"type":"exec","id":1,"argv":["sleep","9"],"env":{"X":"y"}}))
        .await;
    let HostMsg::Exec { exec, .. } = guest.recv_skipping_credit().await else {
        panic!()
    };
    assert_eq!(exec.argv, ["sleep", "9"]);
    assert_eq!(exec.env, ["BASE=1", "X=y"]);
    assert!(!exec.stdin);
    c.send(json!({"type":"exec","id":1,"argv":["true"]})).await;
    c.expect_error(Some(1), "duplicate_id").await;
    c.send(json!({"type":"stdin","id":1,"data":"aGk="})).await;
    let m = c.expect_error(Some(1), "stdin_disabled").await;
    assert_eq!(m["message"], "stdin was not enabled for this exec");
    c.send(json!({"type":"kill","id":1,"signal":"SIGNOPE"}))
        .await;
    let m = c.expect_error(Some(1), "invalid_request").await;
    assert_eq!(m["message"], "invalid signal: SIGNOPE");
    c.send(json!({"type":"exec","id":3,"argv":["x"],"cwd":"rel"}))
        .await;
    c.expect_error(Some(3), "invalid_request").await;

    // An oversized line: the error, then the server hangs up.
    let big = format!(
        "{{\"type\":\"stdin\",\"id\":1,\"data\":\"{}",
        "A".repeat(MAX_LINE + 10)
    );
    c.w.write_all(big.as_bytes()).await.unwrap();
    let m = c.expect_error(None, "payload_too_large").await;
    assert_eq!(
        m["message"],
        format!("message line exceeds {MAX_LINE} bytes")
    );
    c.w.shutdown().await.unwrap();
    assert_eq!(c.recv().await, None, "closed after payload_too_large");
    // ... and the exec that connection started is killed.
    assert_eq!(
        guest.recv_skipping_credit().await,
        HostMsg::Kill { id: 1, signal: 9 }
    );

    server.close().await;
    assert!(!path.exists(), "close removes the socket");
    assert_eq!(CONN_PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn exec_output_stdin_and_exit_in_order_and_disconnect_kills() {
    let (server, mut guest, path) = server().await;
    let mut c = Client::connect(&path).await;
    c.recv().await.unwrap();
    c.send(json!({"type":"exec","id":7,"argv":["cat"],"stdin":true}))
        .await;
    let HostMsg::Exec { id, exec } = guest.recv_skipping_credit().await else {
        panic!()
    };
    assert!(exec.stdin);
    guest
        .send(&GuestMsg::StdinWindow { id, bytes: 1 << 16 })
        .await;
    c.send(json!({"type":"stdin","id":7,"data":"aGk=","eof":true}))
        .await;
    assert_eq!(
        guest.recv_skipping_credit().await,
        HostMsg::Stdin {
            id,
            data: b"hi".to_vec(),
            eof: false
        }
    );
    assert_eq!(
        guest.recv_skipping_credit().await,
        HostMsg::Stdin {
            id,
            data: vec![],
            eof: true
        }
    );
    guest
        .send(&GuestMsg::Output {
            id,
            stream: Stream::Stderr,
            data: b"hi".to_vec(),
        })
        .await;
    guest
        .send(&GuestMsg::Exit {
            id,
            exit_code: 3,
            signal: None,
        })
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        json!({"type":"output","id":7,"stream":"stderr","data":"aGk="})
    );
    assert_eq!(
        c.recv().await.unwrap(),
        json!({"type":"exit","id":7,"exitCode":3})
    );

    // The finished id is free again; a second exec dies with the client.
    let mut reused = false;
    for _ in 0..50 {
        c.send(json!({"type":"exec","id":7,"argv":["sleep","9"]}))
            .await;
        if let HostMsg::Exec { .. } = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            guest.recv_skipping_credit(),
        )
        .await
        .unwrap_or(HostMsg::Ping { seq: 0 })
        {
            reused = true;
            break;
        }
        c.expect_error(Some(7), "duplicate_id").await;
    }
    assert!(reused, "the id of a finished exec can be used again");
    drop(c);
    assert!(matches!(
        guest.recv_skipping_credit().await,
        HostMsg::Kill { signal: 9, .. }
    ));
    server.close().await;
    assert_eq!(CONN_PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_stops_the_guest() {
    let (server, mut guest, path) = server().await;
    let mut c = Client::connect(&path).await;
    c.recv().await.unwrap();
    c.send(json!({"type":"exec","id":1,"argv":["yes"]})).await;
    let HostMsg::Exec { id, exec } = guest.recv_skipping_credit().await else {
        panic!()
    };
    // The guest sends whenever it has credit, until credit stops coming.
    const CHUNK: u32 = 64 * 1024;
    let mut credit = exec.stdout_window;
    let mut sent = 0usize;
    loop {
        while credit >= CHUNK {
            let data = vec![b'y'; CHUNK as usize];
            guest
                .send(&GuestMsg::Output {
                    id,
                    stream: Stream::Stdout,
                    data,
                })
                .await;
            credit -= CHUNK;
            sent += CHUNK as usize;
        }
        match tokio::time::timeout(std::time::Duration::from_millis(500), guest.recv()).await {
            Ok(HostMsg::Window { stdout, .. }) => credit += stdout,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(_) => break, // stalled: the client is not reading
        }
    }
    assert!(
        sent < 16 << 20,
        "host buffered {sent} bytes for a client that does not read"
    );
    // Reading everything resumes the flow.
    let mut got = 0usize;
    while got < sent {
        let m = c.recv().await.unwrap();
        assert_eq!(m["type"], "output");
        got += decode_base64_lenient(m["data"].as_str().unwrap()).len();
    }
    assert_eq!(got, sent);
    assert!(matches!(guest.recv().await, HostMsg::Window { .. }));
    server.close().await;
    assert_eq!(CONN_PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
}
