//! The client against a scripted fake guest over an in-memory pipe.

use super::*;
use crate::error::Coded;
use gondolin_wire::{encode, FrameDecoder, GuestMsg, HostMsg, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A scripted guest on the other end of an in-memory pipe (shared with the
/// session server's tests).
pub(crate) struct FakeGuest {
    io: DuplexStream,
    dec: FrameDecoder,
}

impl FakeGuest {
    pub(crate) async fn send(&mut self, m: &GuestMsg) {
        self.io.write_all(&encode(m)).await.unwrap();
    }
    /// The next host message, credit returns included.
    pub(crate) async fn recv(&mut self) -> HostMsg {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.dec.next_message::<HostMsg>().unwrap() {
                return m;
            }
            let n = self.io.read(&mut buf).await.unwrap();
            assert!(n > 0, "host closed");
            self.dec.push(&buf[..n]);
        }
    }
    /// The next host message that is not a credit return.
    pub(crate) async fn recv_skipping_credit(&mut self) -> HostMsg {
        loop {
            match self.recv().await {
                HostMsg::Window { .. } => continue,
                m => return m,
            }
        }
    }
}

/// A client connected to a [`FakeGuest`].
pub(crate) fn pair() -> (ControlClient, Connection, FakeGuest) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (c, conn) = ControlClient::new(a);
    (
        c,
        conn,
        FakeGuest {
            io: b,
            dec: FrameDecoder::new(),
        },
    )
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        window: 4096,
        stdin_to_file: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_round_trip_and_credit() {
    let (c, conn, mut g) = pair();
    g.send(&GuestMsg::Ready {
        version: PROTOCOL_VERSION,
    })
    .await;
    assert_eq!(conn.ready.await.unwrap().unwrap(), PROTOCOL_VERSION);

    let mut h = c.exec(&req(&["/bin/echo", "hi"])).unwrap();
    let HostMsg::Exec { id, exec } = g.recv().await else {
        panic!()
    };
    assert_eq!(exec.argv, ["/bin/echo", "hi"]);
    assert_eq!(exec.stdout_window, 4096);
    g.send(&GuestMsg::Output {
        id,
        stream: Stream::Stdout,
        data: vec![b'x'; 4096],
    })
    .await;
    let batch = h.next_batch(1 << 20).await.unwrap();
    assert_eq!(batch.len(), 1);
    // Taking the data returns its credit.
    assert_eq!(
        g.recv().await,
        HostMsg::Window {
            id,
            stdout: 4096,
            stderr: 0
        }
    );
    g.send(&GuestMsg::Output {
        id,
        stream: Stream::Stderr,
        data: b"e".to_vec(),
    })
    .await;
    g.send(&GuestMsg::Exit {
        id,
        exit_code: 3,
        signal: None,
    })
    .await;
    let mut evs = Vec::new();
    while let Some(b) = h.next_batch(1 << 20).await {
        evs.extend(b);
    }
    assert_eq!(
        evs.last().unwrap(),
        &ExecEvent::Exit {
            exit_code: 3,
            signal: None
        }
    );
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn output_beyond_credit_is_a_protocol_violation() {
    let (c, conn, mut g) = pair();
    let mut h = c.exec(&req(&["x"])).unwrap();
    let HostMsg::Exec { id, .. } = g.recv().await else {
        panic!()
    };
    g.send(&GuestMsg::Output {
        id,
        stream: Stream::Stdout,
        data: vec![0; 4096],
    })
    .await;
    g.send(&GuestMsg::Output {
        id,
        stream: Stream::Stdout,
        data: vec![0; 1],
    })
    .await;
    let reason = conn.closed.await.unwrap();
    assert_eq!(reason.code, ErrorCode::ProtocolError);
    c.fail(reason);
    let mut last = None;
    while let Some(b) = h.next_batch(1 << 20).await {
        last = b.last().cloned();
    }
    assert!(
        matches!(last, Some(ExecEvent::Failed { code, .. }) if code == ErrorCode::ProtocolError)
    );
    assert!(c.exec(&req(&["x"])).is_err());
}

#[tokio::test]
async fn garbage_and_eof_fail_pending_execs() {
    let (c, conn, mut g) = pair();
    drop(conn); // nobody supervises: the client fails by itself
    let mut h = c.exec(&req(&["x"])).unwrap();
    g.io.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let b = h.next_batch(1024).await.unwrap();
    assert!(
        matches!(&b[0], ExecEvent::Failed { code, message } if *code == ErrorCode::ProtocolError && message.contains("bad frame"))
    );

    let (c, conn, g) = pair();
    drop(conn);
    let mut h = c.exec(&req(&["x"])).unwrap();
    drop(g);
    let b = h.next_batch(1024).await.unwrap();
    assert!(
        matches!(&b[0], ExecEvent::Failed { code, .. } if *code == ErrorCode::ConnectionClosed)
    );
}

#[tokio::test]
async fn stdin_waits_for_credit() {
    let (c, _conn, mut g) = pair();
    let mut r = req(&["cat"]);
    r.stdin = true;
    let h = c.exec(&r).unwrap();
    let HostMsg::Exec { id, exec } = g.recv().await else {
        panic!()
    };
    assert!(exec.stdin);
    let w = tokio::spawn(async move {
        h.write_stdin(&[7u8; 10]).await.unwrap();
        h
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!w.is_finished(), "must wait for credit");
    g.send(&GuestMsg::StdinWindow { id, bytes: 10 }).await;
    let h = w.await.unwrap();
    assert_eq!(
        g.recv().await,
        HostMsg::Stdin {
            id,
            data: vec![7; 10],
            eof: false
        }
    );
    h.close_stdin().unwrap();
    assert_eq!(
        g.recv().await,
        HostMsg::Stdin {
            id,
            data: vec![],
            eof: true
        }
    );
    drop(h);
    assert_eq!(g.recv().await, HostMsg::Kill { id, signal: 9 });
}

#[tokio::test]
async fn invalid_requests_are_refused_locally() {
    let (c, _conn, _g) = pair();
    let e = c.exec(&req(&[])).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    let mut r = req(&["x"]);
    r.cwd = Some("rel".into());
    assert!(c
        .exec(&r)
        .unwrap_err()
        .to_string()
        .contains("cwd must be absolute"));
}

/// fail() must let go of the stream even while the client (and so its
/// writer's queue) is still referenced: the guest end then reads EOF.
/// Before, the writer kept its half forever: one socket per closed VM.
#[tokio::test]
async fn fail_releases_the_connection() {
    let (c, conn, mut g) = pair();
    g.send(&GuestMsg::Ready {
        version: gondolin_wire::PROTOCOL_VERSION,
    })
    .await;
    assert!(conn.ready.await.unwrap().is_ok());
    let _h = c.exec(&req(&["sleep", "1"])).unwrap();
    assert!(matches!(g.recv().await, HostMsg::Exec { .. }));
    c.fail(Disconnect {
        code: ErrorCode::VmClosed,
        message: "closed".into(),
    });
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), g.io.read(&mut buf))
        .await
        .expect("the host end must close after fail()")
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(conn.closed.await.unwrap().code, ErrorCode::VmClosed);
    drop(c);
}

/// The guest side closing (QEMU died) releases the host's end too, even
/// while the client and the `closed` signal are still held (a failed start,
/// a supervisor waiting for QEMU's exit status).
#[tokio::test]
async fn guest_eof_releases_the_connection() {
    let (c, conn, mut g) = pair();
    g.io.shutdown().await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), g.io.read(&mut buf))
        .await
        .expect("the host end must close after the guest's EOF")
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(conn.closed.await.unwrap().code, ErrorCode::ConnectionClosed);
    drop(c);
}

#[tokio::test]
async fn stdin_waiting_for_credit_ends_when_the_exec_exits() {
    // A file exec that cannot open its file exits at once without granting
    // stdin credit: the writer must not wait forever (it held the process).
    let (c, _conn, mut g) = pair();
    let mut r = req(&["gondolin:write-file"]);
    r.stdin = true;
    let h = c.exec(&r).unwrap();
    let HostMsg::Exec { id, .. } = g.recv().await else {
        panic!()
    };
    let ctl = h.control();
    let writer = tokio::spawn(async move { ctl.write_stdin(b"x").await });
    tokio::task::yield_now().await;
    g.send(&GuestMsg::Exit {
        id,
        exit_code: 2,
        signal: None,
    })
    .await;
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    assert_eq!(
        res.expect("the writer ended").unwrap(),
        Err(ControlError::Exited)
    );
}

fn configure_msg() -> gondolin_wire::Configure {
    gondolin_wire::Configure {
        fs: Some(gondolin_wire::FsPlan {
            fuse_mount: "/data".into(),
            binds: vec!["/workspace".into(), "/a b,c".into()],
        }),
        net: true,
        time_unix_ns: 1_700_000_000_000_000_000,
        seed: vec![1; 32],
        quiesce: false,
    }
}

#[tokio::test]
async fn configure_round_trip_returns_the_guest_version() {
    let (c, _conn, mut g) = pair();
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.configure(configure_msg()).await })
    };
    let HostMsg::Configure(got) = g.recv().await else {
        panic!("expected Configure")
    };
    assert_eq!(got, configure_msg());
    // One at a time: a second configure while the first waits is refused.
    let second = c.configure(configure_msg()).await.unwrap_err();
    assert_eq!(second, super::configure::ConfigureError::Busy);
    g.send(&GuestMsg::Configured {
        version: 99,
        error: None,
    })
    .await;
    assert_eq!(task.await.unwrap().unwrap(), 99);
    // Answered, so the next one may go.
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.configure(configure_msg()).await })
    };
    assert!(matches!(g.recv().await, HostMsg::Configure(_)));
    g.send(&GuestMsg::Configured {
        version: PROTOCOL_VERSION,
        error: Some("sandboxfs did not mount within 30s".into()),
    })
    .await;
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.code(), ErrorCode::VfsError);
    assert!(e.to_string().contains("sandboxfs did not mount"), "{e}");
}

#[tokio::test]
async fn configure_is_bounded_and_fails_with_the_connection() {
    use super::configure::ConfigureError;
    let (c, conn, mut g) = pair();
    // A guest that never answers: a coded error after the bound.
    let e = c
        .configure_within(configure_msg(), std::time::Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(e, ConfigureError::Timeout(50)), "{e:?}");
    assert_eq!(e.code(), ErrorCode::ProtocolError);
    assert!(matches!(g.recv().await, HostMsg::Configure(_)));
    // Bad plans are refused before anything is sent.
    let mut bad = configure_msg();
    bad.seed = vec![0; 8];
    let e = c.configure(bad).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    let mut bad = configure_msg();
    bad.fs.as_mut().unwrap().binds = vec![format!("/{}", "x".repeat(4000)); 400];
    let e = c.configure(bad).await.unwrap_err();
    assert!(e.to_string().contains("frame limit"), "{e}");
    // A pending configure ends with the connection (nobody holds
    // `closed`, so the client fails on its own).
    drop(conn);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.configure(configure_msg()).await })
    };
    assert!(matches!(g.recv().await, HostMsg::Configure(_)));
    drop(g);
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.code(), ErrorCode::ConnectionClosed);
}
