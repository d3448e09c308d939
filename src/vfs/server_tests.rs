//! Tests of the fs RPC server (included from `server.rs`).

use super::*;
use crate::vfs::memory::MemoryProvider;
use crate::vfs::serve::serve;
use gondolin_wire::fs::{FsGuestMsg, SetAttr, FS_PROTOCOL_VERSION};
use gondolin_wire::{encode_into, FrameDecoder};

const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 1,
};
const USER: Caller = Caller {
    uid: 1000,
    gid: 1000,
    pid: 2,
};

fn req(id: u64, op: FsOp) -> FsRequest {
    FsRequest {
        id,
        caller: ROOT,
        op,
    }
}

async fn as_user(s: &FsServer, op: FsOp) -> Result<FsReply, i32> {
    s.handle_request(FsRequest {
        id: 9,
        caller: USER,
        op,
    })
    .await
    .result
}

async fn ok(s: &FsServer, op: FsOp) -> FsReply {
    let r = s.handle_request(req(1, op.clone())).await;
    r.result
        .unwrap_or_else(|e| panic!("{op:?} failed with errno {e}"))
}

async fn errno_of(s: &FsServer, op: FsOp) -> i32 {
    s.handle_request(req(1, op))
        .await
        .result
        .expect_err("expected an errno")
}

fn entry_ino(r: FsReply) -> u64 {
    match r {
        FsReply::Entry(e) => e.attr.ino,
        FsReply::Created { entry, .. } => entry.attr.ino,
        other => panic!("not an entry: {other:?}"),
    }
}

#[tokio::test]
async fn inodes_follow_paths_through_create_rename_and_unlink() {
    let s = FsServer::new(Arc::new(MemoryProvider::new()));
    let d = entry_ino(
        ok(
            &s,
            FsOp::Mkdir {
                parent: ROOT_INO,
                name: "d".into(),
                mode: 0o755,
            },
        )
        .await,
    );
    let created = ok(
        &s,
        FsOp::Create {
            parent: d,
            name: "f".into(),
            mode: 0o644,
            flags: 0o1,
        },
    )
    .await;
    let FsReply::Created { fh, entry } = created else {
        panic!()
    };
    assert_eq!(
        ok(
            &s,
            FsOp::Write {
                fh,
                offset: 0,
                data: b"abc".to_vec()
            }
        )
        .await,
        FsReply::Written(3)
    );
    ok(&s, FsOp::Release { fh }).await;
    let f = entry.attr.ino;
    // Rename the directory: the file's inode keeps working at its new path.
    ok(
        &s,
        FsOp::Rename {
            parent: ROOT_INO,
            name: "d".into(),
            new_parent: ROOT_INO,
            new_name: "e".into(),
            flags: 0,
        },
    )
    .await;
    let FsReply::Opened { fh, .. } = ok(&s, FsOp::Open { ino: f, flags: 0 }).await else {
        panic!()
    };
    assert_eq!(
        ok(
            &s,
            FsOp::Read {
                fh,
                offset: 0,
                size: 10
            }
        )
        .await,
        FsReply::Data(b"abc".to_vec())
    );
    // A released handle is gone.
    ok(&s, FsOp::Release { fh }).await;
    assert_eq!(
        errno_of(
            &s,
            FsOp::Read {
                fh,
                offset: 0,
                size: 1
            }
        )
        .await,
        errno::EBADF
    );
    // Lookup of a missing name is a cacheable miss, not an error.
    assert!(matches!(
        ok(
            &s,
            FsOp::Lookup {
                parent: d,
                name: "nope".into()
            }
        )
        .await,
        FsReply::NoEntry { .. }
    ));
    ok(
        &s,
        FsOp::Unlink {
            parent: d,
            name: "f".into(),
        },
    )
    .await;
    assert_eq!(errno_of(&s, FsOp::GetAttr { ino: f }).await, errno::ENOENT);
    // Forgotten inodes are dropped from the table.
    ok(&s, FsOp::Forget { ino: d, nlookup: 1 }).await;
    assert_eq!(errno_of(&s, FsOp::GetAttr { ino: d }).await, errno::ENOENT);
}

#[tokio::test]
async fn provider_changes_invalidate_unless_they_echo_the_guest() {
    let s = FsServer::new(Arc::new(MemoryProvider::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    *s.notify.lock().unwrap() = Some(tx);
    ok(
        &s,
        FsOp::Create {
            parent: ROOT_INO,
            name: "mine.txt".into(),
            mode: 0o644,
            flags: libc::O_WRONLY,
        },
    )
    .await;
    // The provider reporting the guest's own create is an echo.
    s.provider_changed("/mine.txt");
    assert!(rx.try_recv().is_err());
    // A change nobody in the guest made drops the guest's entry.
    s.provider_changed("/theirs.txt");
    match rx.try_recv() {
        Ok(FsHostMsg::InvalidateEntry { parent, name }) => {
            assert_eq!((parent, name.as_str()), (ROOT_INO, "theirs.txt"))
        }
        other => panic!("expected an entry invalidation, got {other:?}"),
    }
    // Once the echo window has passed, a change to the guest's file is
    // news again: its inode and entry are invalidated.
    s.guest_touched.lock().unwrap().clear();
    s.provider_changed("/mine.txt");
    assert!(matches!(
        rx.try_recv(),
        Ok(FsHostMsg::InvalidateInode { .. })
    ));
    assert!(matches!(
        rx.try_recv(),
        Ok(FsHostMsg::InvalidateEntry { .. })
    ));
}

#[tokio::test]
async fn setattr_readdir_paging_and_access() {
    let s = FsServer::new(Arc::new(MemoryProvider::new()));
    for i in 0..50 {
        let FsReply::Created { fh, .. } = ok(
            &s,
            FsOp::Create {
                parent: ROOT_INO,
                name: format!("f{i:02}"),
                mode: 0o640,
                flags: 1,
            },
        )
        .await
        else {
            panic!()
        };
        ok(&s, FsOp::Release { fh }).await;
    }
    // Page through in 7s: every entry exactly once, plus . and ..
    let mut seen = Vec::new();
    let mut off = 0;
    loop {
        let FsReply::Dir(page) = ok(
            &s,
            FsOp::ReadDir {
                ino: ROOT_INO,
                offset: off,
                max_entries: 7,
            },
        )
        .await
        else {
            panic!()
        };
        if page.is_empty() {
            break;
        }
        off = page.last().unwrap().next_offset;
        seen.extend(page.into_iter().map(|e| e.name));
    }
    assert_eq!(seen.len(), 52);
    assert_eq!(&seen[..2], [".", ".."]);
    let f = entry_ino(
        ok(
            &s,
            FsOp::Lookup {
                parent: ROOT_INO,
                name: "f00".into(),
            },
        )
        .await,
    );
    let set = SetAttr {
        size: Some(10),
        mode: Some(0o600),
        ..Default::default()
    };
    let FsReply::Attr { attr, .. } = ok(
        &s,
        FsOp::SetAttr {
            ino: f,
            fh: None,
            set,
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!((attr.size, attr.perm), (10, 0o600));
    // Owned by root, mode 0600: uid 1000 may neither read nor open it...
    let access = FsOp::Access { ino: f, mask: 4 };
    assert_eq!(as_user(&s, access).await, Err(errno::EACCES));
    assert_eq!(
        as_user(&s, FsOp::Open { ino: f, flags: 0 }).await,
        Err(errno::EACCES)
    );
    // ...nor create, remove or chmod in a root-owned 0755 directory.
    let create = FsOp::Create {
        parent: ROOT_INO,
        name: "u".into(),
        mode: 0o644,
        flags: 1,
    };
    assert_eq!(as_user(&s, create.clone()).await, Err(errno::EACCES));
    assert_eq!(
        as_user(
            &s,
            FsOp::Unlink {
                parent: ROOT_INO,
                name: "f00".into()
            }
        )
        .await,
        Err(errno::EACCES)
    );
    let chmod = FsOp::SetAttr {
        ino: f,
        fh: None,
        set: SetAttr {
            mode: Some(0o777),
            ..Default::default()
        },
    };
    assert_eq!(as_user(&s, chmod).await, Err(errno::EPERM));
    // Once the directory is world-writable, it can create there.
    let open_dir = SetAttr {
        mode: Some(0o777),
        ..Default::default()
    };
    ok(
        &s,
        FsOp::SetAttr {
            ino: ROOT_INO,
            fh: None,
            set: open_dir,
        },
    )
    .await;
    assert!(as_user(&s, create).await.is_ok());
    ok(&s, FsOp::Access { ino: f, mask: 0 }).await;
}

#[tokio::test]
async fn hostile_requests_get_errnos() {
    let s = FsServer::new(Arc::new(MemoryProvider::new()));
    for op in [
        FsOp::GetAttr { ino: 999_999 },
        FsOp::Lookup {
            parent: 424_242,
            name: "x".into(),
        },
        FsOp::Read {
            fh: 77,
            offset: 0,
            size: 10,
        },
        FsOp::Write {
            fh: 77,
            offset: 0,
            data: vec![1],
        },
        FsOp::Release { fh: 77 },
        FsOp::Lookup {
            parent: ROOT_INO,
            name: "../etc".into(),
        },
        FsOp::Lookup {
            parent: ROOT_INO,
            name: String::new(),
        },
        FsOp::Read {
            fh: 1,
            offset: u64::MAX,
            size: u32::MAX,
        },
        FsOp::Rename {
            parent: 1,
            name: "a".into(),
            new_parent: 1,
            new_name: "b".into(),
            flags: 6,
        },
        FsOp::ReadDir {
            ino: 12345,
            offset: u64::MAX,
            max_entries: u32::MAX,
        },
        FsOp::Access {
            ino: ROOT_INO,
            mask: -1,
        },
    ] {
        let e = errno_of(&s, op.clone()).await;
        assert!(e > 0, "{op:?} gave {e}");
    }
    // Past the end of a listing is simply empty.
    assert_eq!(
        ok(
            &s,
            FsOp::ReadDir {
                ino: ROOT_INO,
                offset: u64::MAX,
                max_entries: 10
            }
        )
        .await,
        FsReply::Dir(vec![])
    );
}

#[tokio::test]
async fn serve_survives_garbage_and_answers_concurrently() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = FsServer::new(Arc::new(MemoryProvider::new()));
    let (mut guest, host) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(serve(s.clone(), host));
    let mut out = Vec::new();
    encode_into(
        &FsGuestMsg::Hello {
            version: FS_PROTOCOL_VERSION,
        },
        &mut out,
    );
    for id in 1..=20u64 {
        encode_into(
            &FsGuestMsg::Request(req(id, FsOp::GetAttr { ino: ROOT_INO })),
            &mut out,
        );
    }
    guest.write_all(&out).await.unwrap();
    let mut dec = FrameDecoder::new();
    let mut got = std::collections::HashSet::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < 20 {
        let n = guest.read(&mut buf).await.unwrap();
        dec.push(&buf[..n]);
        while let Some(FsHostMsg::Response(r)) = dec.next_message::<FsHostMsg>().unwrap() {
            assert!(r.result.is_ok());
            got.insert(r.id);
        }
    }
    // A frame that is not a message ends the connection cleanly.
    guest
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(task.await.unwrap().is_err());
}

async fn attr_of(s: &FsServer, ino: u64, set: Option<SetAttr>) -> Attr {
    let op = match set {
        Some(set) => FsOp::SetAttr { ino, fh: None, set },
        None => FsOp::GetAttr { ino },
    };
    match ok(s, op).await {
        FsReply::Attr { attr, .. } => attr,
        other => panic!("not attributes: {other:?}"),
    }
}

/// The guest's view of a file it unlinked while holding it open: the
/// handle still reads and writes it, `fstat` and `fchmod` (requests on the
/// inode, which no longer has a name) are served through the handle.
async fn unlinked_open_file_over_the_wire(s: &FsServer) {
    let FsReply::Created { fh, entry } = ok(
        s,
        FsOp::Create {
            parent: ROOT_INO,
            name: "t".into(),
            mode: 0o644,
            flags: 0o102, // O_RDWR | O_CREAT
        },
    )
    .await
    else {
        panic!()
    };
    let ino = entry.attr.ino;
    let write = |offset, data: &[u8]| FsOp::Write {
        fh,
        offset,
        data: data.to_vec(),
    };
    ok(s, write(0, b"hello")).await;
    let unlink = FsOp::Unlink {
        parent: ROOT_INO,
        name: "t".into(),
    };
    ok(s, unlink).await;
    ok(s, write(5, b" world")).await;
    let read = FsOp::Read {
        fh,
        offset: 0,
        size: 100,
    };
    assert_eq!(ok(s, read).await, FsReply::Data(b"hello world".to_vec()));
    let a = attr_of(s, ino, None).await;
    assert_eq!((a.size, a.nlink), (11, 0));
    let set = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let a = attr_of(s, ino, Some(set)).await;
    assert_eq!((a.perm, a.size, a.nlink), (0o600, 11, 0));
    ok(s, FsOp::Release { fh }).await;
    assert_eq!(errno_of(s, FsOp::GetAttr { ino }).await, errno::ENOENT);
}

#[tokio::test]
async fn unlinked_open_files_keep_working_on_memory_and_realfs() {
    unlinked_open_file_over_the_wire(&FsServer::new(Arc::new(MemoryProvider::new()))).await;
    let d = std::env::temp_dir().join(format!("gondolin-unlinked-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let realfs = crate::vfs::realfs::RealFSProvider::new(&d).unwrap();
    unlinked_open_file_over_the_wire(&FsServer::new(Arc::new(realfs))).await;
    std::fs::remove_dir_all(d).unwrap();
}

/// A provider whose every call hangs (a JS provider whose promise never
/// settles).
struct Hung;

#[async_trait::async_trait]
impl Provider for Hung {
    async fn stat(&self, _: &str) -> VfsResult<Metadata> {
        std::future::pending().await
    }
    async fn lstat(&self, _: &str) -> VfsResult<Metadata> {
        std::future::pending().await
    }
    async fn readdir(&self, _: &str) -> VfsResult<Vec<crate::vfs::DirEntry>> {
        std::future::pending().await
    }
    async fn open(&self, _: &str, _: OpenOptions) -> VfsResult<Box<dyn FileHandle>> {
        std::future::pending().await
    }
    async fn mkdir(&self, _: &str, _: u32) -> VfsResult<()> {
        std::future::pending().await
    }
    async fn rmdir(&self, _: &str) -> VfsResult<()> {
        std::future::pending().await
    }
    async fn unlink(&self, _: &str) -> VfsResult<()> {
        std::future::pending().await
    }
    async fn rename(&self, _: &str, _: &str) -> VfsResult<()> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_hung_provider_is_answered_eio_within_the_bound() {
    let s = FsServer::new(Arc::new(Hung));
    s.set_request_timeout(Duration::from_millis(100));
    let start = Instant::now();
    let lookup = FsOp::Lookup {
        parent: ROOT_INO,
        name: "x".into(),
    };
    let (a, b) = tokio::join!(
        errno_of(&s, FsOp::GetAttr { ino: ROOT_INO }),
        errno_of(&s, lookup)
    );
    assert_eq!((a, b), (errno::EIO, errno::EIO));
    assert!(start.elapsed() < Duration::from_secs(5));
}
