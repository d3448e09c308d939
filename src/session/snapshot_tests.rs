//! The `snapshot` message: parsing, and on a live socket the three
//! answers (unsupported, snapshot_failed, snapshot_response then hang-up),
//! including the owner closing the server right after the checkpoint.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::tests::{server_with, Client};
use super::*;

#[test]
fn snapshot_messages_parse_and_refuse_with_upstream_texts() {
    let m = parse_line(br#"{"type":"snapshot","id":1,"path":"/tmp/a.qcow2"}"#).unwrap();
    assert_eq!(
        m,
        Some(ClientMsg::Snapshot {
            id: 1,
            path: "/tmp/a.qcow2".into(),
            memory: false
        })
    );
    let m = parse_line(br#"{"type":"snapshot","id":2,"path":"/a","memory":true}"#).unwrap();
    assert!(matches!(m, Some(ClientMsg::Snapshot { memory: true, .. })));
    for (line, id, msg) in [
        (
            r#"{"type":"snapshot","path":"/a"}"#,
            None,
            "snapshot requires a uint32 id",
        ),
        (
            r#"{"type":"snapshot","id":1}"#,
            Some(1),
            "snapshot requires a non-empty output path",
        ),
        (
            r#"{"type":"snapshot","id":1,"path":"  "}"#,
            Some(1),
            "snapshot requires a non-empty output path",
        ),
        (
            r#"{"type":"snapshot","id":1,"path":"/a","memory":"yes"}"#,
            Some(1),
            "snapshot memory must be a boolean",
        ),
    ] {
        let r = parse_line(line.as_bytes()).unwrap_err();
        assert_eq!(
            (r.id, r.code, r.message.as_str()),
            (id, Code::InvalidRequest, msg),
            "{line}"
        );
    }
    assert_eq!(
        ServerMsg::SnapshotResponse {
            id: 1,
            path: "/p.qcow2",
            name: "p"
        }
        .to_line(),
        "{\"type\":\"snapshot_response\",\"id\":1,\"path\":\"/p.qcow2\",\"name\":\"p\"}\n"
    );
}

#[tokio::test]
async fn without_an_owner_handler_snapshot_is_unsupported() {
    let (server, _guest, path) = server_with(None).await;
    let mut c = Client::connect(&path).await;
    c.recv().await.unwrap();
    c.send(json!({"type":"snapshot","id":4,"path":"/tmp/x.qcow2"}))
        .await;
    let m = c.expect_error(Some(4), "unsupported").await;
    assert_eq!(
        m["message"],
        "snapshot actions are not supported for this session"
    );
    server.close().await;
}

#[tokio::test]
async fn a_failed_checkpoint_is_snapshot_failed_and_the_connection_stays() {
    let handler = SnapshotHandler::new(|req: SnapshotRequest| async move {
        Err(SnapshotFailure {
            message: format!(
                "checkpointPath must be an absolute path (got: {})",
                req.path
            ),
        })
    });
    let (server, _guest, path) = server_with(Some(handler)).await;
    let mut c = Client::connect(&path).await;
    c.recv().await.unwrap();
    c.send(json!({"type":"snapshot","id":1,"path":"rel.qcow2"}))
        .await;
    let m = c.expect_error(Some(1), "snapshot_failed").await;
    assert_eq!(
        m["message"],
        "checkpointPath must be an absolute path (got: rel.qcow2)"
    );
    c.send(json!({"type":"bogus","id":2})).await;
    c.expect_error(Some(2), "unknown_type").await;
    server.close().await;
}

#[tokio::test]
async fn a_failure_reaches_the_client_even_when_the_owner_closes_the_server_at_once() {
    // A checkpoint that failed half-way consumed the VM all the same: the
    // owner closes the server, and the client still learns why.
    let server_slot: Arc<Mutex<Option<Arc<AttachServer>>>> = Arc::default();
    let handler = {
        let server_slot = server_slot.clone();
        SnapshotHandler::new(move |_req: SnapshotRequest| {
            let server = server_slot.lock().unwrap().clone().unwrap();
            async move {
                tokio::spawn(async move { server.close().await });
                // Let the close begin (it then waits for this connection).
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Err(SnapshotFailure {
                    message: "qemu-img failed".into(),
                })
            }
        })
    };
    let (server, _guest, path) = server_with(Some(handler)).await;
    let server = Arc::new(server);
    *server_slot.lock().unwrap() = Some(server.clone());
    let mut c = Client::connect(&path).await;
    c.recv().await.unwrap();
    c.send(json!({"type":"snapshot","id":3,"path":"/tmp/x.qcow2"}))
        .await;
    let m = c.expect_error(Some(3), "snapshot_failed").await;
    assert_eq!(m["message"], "qemu-img failed");
    assert_eq!(c.recv().await, None, "then the closed server hangs up");
    server.close().await;
}

#[tokio::test]
async fn the_reply_reaches_the_client_even_when_the_owner_closes_the_server_at_once() {
    // The owner (the JS VM) closes the server as soon as its checkpoint is
    // written, racing the reply: the reply must still arrive, then EOF.
    let server_slot: Arc<Mutex<Option<Arc<AttachServer>>>> = Arc::default();
    let seen: Arc<Mutex<Vec<SnapshotRequest>>> = Arc::default();
    let handler = {
        let (server_slot, seen) = (server_slot.clone(), seen.clone());
        SnapshotHandler::new(move |req: SnapshotRequest| {
            let server = server_slot.lock().unwrap().clone().unwrap();
            seen.lock().unwrap().push(req.clone());
            async move {
                tokio::spawn(async move { server.close().await });
                // Let the close begin (it then waits for this connection).
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Ok(SnapshotDone {
                    name: "snap".into(),
                    path: req.path,
                })
            }
        })
    };
    let (server, _guest, path) = server_with(Some(handler)).await;
    let server = Arc::new(server);
    *server_slot.lock().unwrap() = Some(server.clone());
    let mut c = Client::connect(&path).await;
    c.recv().await.unwrap();
    c.send(json!({"type":"snapshot","id":9,"path":"/tmp/snap.qcow2","memory":true}))
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        json!({"type":"snapshot_response","id":9,"path":"/tmp/snap.qcow2","name":"snap"})
    );
    assert_eq!(c.recv().await, None, "the connection ends after the reply");
    assert_eq!(
        *seen.lock().unwrap(),
        [SnapshotRequest {
            path: "/tmp/snap.qcow2".into(),
            memory: true
        }]
    );
    server.close().await;
    assert!(!path.exists(), "the owner's close removed the socket");
}
