//! The fs calls against the scripted fake guest of the client tests.

use gondolin_wire::fs::errno;
use gondolin_wire::guestfs::{FsReply, FsRequest, MAX_DIR_PAGE};
use gondolin_wire::{GuestMsg, HostMsg};

use super::super::tests::{pair, FakeGuest};
use super::*;

/// The next fs request the host sent.
async fn next_fs(g: &mut FakeGuest) -> (u32, FsRequest) {
    match g.recv().await {
        HostMsg::Fs { id, req } => (id, req),
        other => panic!("expected an fs request, got {other:?}"),
    }
}

async fn answer(g: &mut FakeGuest, id: u32, reply: FsReply) {
    g.send(&GuestMsg::FsReply { id, reply }).await;
}

fn stat() -> FsStat {
    let t = Time { sec: 1, nsec: 2 };
    FsStat {
        mode: 0o100644,
        dev: 1,
        ino: 2,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 5,
        blksize: 4096,
        blocks: 8,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

fn entry(name: &str) -> DirEntry {
    DirEntry {
        name: name.as_bytes().to_vec(),
        kind: EntryKind::File,
    }
}

#[tokio::test]
async fn stat_and_errno_replies() {
    let (c, _conn, mut g) = pair();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_stat("/etc", false).await }
    });
    let (id, req) = next_fs(&mut g).await;
    assert_eq!(
        req,
        FsRequest::Stat {
            path: "/etc".into(),
            follow: false
        }
    );
    answer(&mut g, id, FsReply::Stat(stat())).await;
    assert_eq!(call.await.unwrap().unwrap(), stat());

    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_access("/nope", 0).await }
    });
    let (id, _) = next_fs(&mut g).await;
    answer(&mut g, id, FsReply::Errno(errno::ENOENT)).await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err, GuestFsError::Errno(errno::ENOENT));
    assert_eq!(err.code(), "ENOENT");
    assert_eq!(err.to_string(), "ENOENT (errno 2)");
    assert_eq!(GuestFsError::Errno(41).code(), "UNKNOWN");
}

#[tokio::test]
async fn read_dir_follows_pages_and_remove_follows_more() {
    let (c, _conn, mut g) = pair();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_read_dir("/d").await }
    });
    let first: Vec<_> = (0..MAX_DIR_PAGE).map(|i| entry(&format!("f{i}"))).collect();
    let (id, req) = next_fs(&mut g).await;
    assert!(matches!(req, FsRequest::ReadDir { offset: 0, .. }));
    answer(
        &mut g,
        id,
        FsReply::Entries {
            entries: first,
            done: false,
        },
    )
    .await;
    let (id, req) = next_fs(&mut g).await;
    assert!(matches!(req, FsRequest::ReadDir { offset, .. } if offset as usize == MAX_DIR_PAGE));
    answer(
        &mut g,
        id,
        FsReply::Entries {
            entries: vec![entry("z")],
            done: true,
        },
    )
    .await;
    let all = call.await.unwrap().unwrap();
    assert_eq!(all.len(), MAX_DIR_PAGE + 1);
    assert_eq!(all.last().unwrap().name, b"z");

    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_remove("/d", true, false).await }
    });
    for reply in [FsReply::More, FsReply::More, FsReply::Done] {
        let (id, req) = next_fs(&mut g).await;
        assert!(matches!(
            req,
            FsRequest::Remove {
                recursive: true,
                force: false,
                ..
            }
        ));
        answer(&mut g, id, reply).await;
    }
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn wrong_replies_are_errors_not_hangs() {
    let (c, _conn, mut g) = pair();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_mkdir("/d", Some(0o700), true).await }
    });
    let (id, _) = next_fs(&mut g).await;
    // A reply for nobody is ignored; the wrong kind fails the call.
    answer(&mut g, id.wrapping_add(100), FsReply::Done).await;
    answer(&mut g, id, FsReply::More).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, GuestFsError::BadReply(_)));
    assert_eq!(err.code(), "protocol_error");

    // An empty page that claims more would loop forever.
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_read_dir("/d").await }
    });
    let (id, _) = next_fs(&mut g).await;
    answer(
        &mut g,
        id,
        FsReply::Entries {
            entries: vec![],
            done: false,
        },
    )
    .await;
    assert!(matches!(
        call.await.unwrap(),
        Err(GuestFsError::BadReply(_))
    ));
}

#[tokio::test]
async fn bad_requests_fail_on_the_host_and_a_lost_guest_fails_pending_calls() {
    let (c, conn, mut g) = pair();
    assert_eq!(
        c.fs_rename("relative", "/b").await,
        Err(GuestFsError::Errno(errno::EINVAL))
    );
    let long = format!("/{}", "a".repeat(gondolin_wire::fs::MAX_PATH));
    assert_eq!(
        c.fs_stat(&long, true).await,
        Err(GuestFsError::Errno(errno::ENAMETOOLONG))
    );
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_stat("/x", true).await }
    });
    let (_id, _) = next_fs(&mut g).await;
    drop(g);
    let reason = conn.closed.await.unwrap();
    c.fail(reason);
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "connection_closed");
    // And later calls fail at once.
    assert!(matches!(
        c.fs_access("/", 0).await,
        Err(GuestFsError::Control(_))
    ));
}

#[tokio::test]
async fn an_oversized_page_is_a_protocol_violation() {
    let (c, conn, mut g) = pair();
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.fs_read_dir("/d").await }
    });
    let (id, _) = next_fs(&mut g).await;
    let entries = vec![entry("a"); MAX_DIR_PAGE + 1];
    answer(
        &mut g,
        id,
        FsReply::Entries {
            entries,
            done: true,
        },
    )
    .await;
    let reason = conn.closed.await.unwrap();
    assert_eq!(reason.code, ErrorCode::ProtocolError);
    c.fail(reason);
    assert_eq!(call.await.unwrap().unwrap_err().code(), "protocol_error");
}
