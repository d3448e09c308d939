//! Typed fs requests end to end: the real sandboxd over a unix socket.

mod common;

use common::{exec, Guest};
use gondolin_wire::fs::{errno, MAX_PATH};
use gondolin_wire::guestfs::{FsReply, FsRequest};
use gondolin_wire::{GuestMsg, HostMsg};

impl Guest {
    fn fs(&mut self, id: u32, req: FsRequest) -> FsReply {
        self.send(&HostMsg::Fs { id, req });
        loop {
            match self.recv() {
                GuestMsg::FsReply { id: got, reply } if got == id => return reply,
                GuestMsg::Output { .. } | GuestMsg::StdinWindow { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn fs_requests_are_answered_beside_a_running_exec() {
    let mut g = Guest::start();
    // A long-running exec: fs requests do not wait for it.
    g.send(&HostMsg::Exec {
        id: 1,
        exec: exec(&["sleep", "100"]),
    });
    let dir = std::env::temp_dir().join(format!("sandboxd-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let at = |rel: &str| dir.join(rel).to_str().unwrap().to_owned();
    let mkdir = FsRequest::Mkdir {
        path: at("a/b"),
        mode: Some(0o700),
        recursive: true,
    };
    assert_eq!(
        g.fs(1, mkdir),
        FsReply::Done,
        "fs ids are apart from exec ids"
    );
    let FsReply::Stat(st) = g.fs(
        2,
        FsRequest::Stat {
            path: at("a/b"),
            follow: true,
        },
    ) else {
        panic!()
    };
    assert_eq!(st.mode & 0o170777, 0o040700);
    let list = FsRequest::ReadDir {
        path: at("a"),
        offset: 0,
    };
    let FsReply::Entries { entries, done } = g.fs(3, list) else {
        panic!()
    };
    assert!(done);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, b"b");
    let rm = FsRequest::Remove {
        path: at(""),
        recursive: true,
        force: false,
    };
    assert_eq!(g.fs(4, rm.clone()), FsReply::Done);
    assert_eq!(g.fs(5, rm), FsReply::Errno(errno::ENOENT));
    g.send(&HostMsg::Kill { id: 1, signal: 9 });
}

#[test]
fn bad_fs_requests_get_an_errno_not_a_protocol_error() {
    let mut g = Guest::start();
    let relative = FsRequest::Stat {
        path: "etc".into(),
        follow: true,
    };
    assert_eq!(g.fs(7, relative), FsReply::Errno(errno::EINVAL));
    let long = FsRequest::Access {
        path: format!("/{}", "a".repeat(MAX_PATH)),
        mode: 0,
    };
    assert_eq!(g.fs(8, long), FsReply::Errno(errno::ENAMETOOLONG));
    let mode = FsRequest::Access {
        path: "/".into(),
        mode: 99,
    };
    assert_eq!(g.fs(9, mode), FsReply::Errno(errno::EINVAL));
    // The connection is still fine.
    assert_eq!(g.run(2, exec(&["true"])).exit_code, 0);
}
