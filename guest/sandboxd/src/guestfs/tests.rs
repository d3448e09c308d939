use std::os::unix::fs::symlink;
use std::path::PathBuf;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("sandboxd-guestfs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn at(&self, rel: &str) -> String {
        self.0.join(rel).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn errno(r: FsReply) -> i32 {
    match r {
        FsReply::Errno(n) => n,
        other => panic!("expected an errno, got {other:?}"),
    }
}

fn st(path: &str, follow: bool) -> FsReply {
    handle(&FsRequest::Stat {
        path: path.into(),
        follow,
    })
}

#[test]
fn stat_follows_or_not_and_reports_errno() {
    let s = Scratch::new("stat");
    fs::write(s.at("f"), b"12345").unwrap();
    symlink(s.at("f"), s.at("l")).unwrap();
    let FsReply::Stat(f) = st(&s.at("l"), true) else {
        panic!()
    };
    assert_eq!(f.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(f.size, 5);
    assert!(f.mtime.sec > 1_600_000_000 && f.mtime.nsec < 1_000_000_000);
    let FsReply::Stat(l) = st(&s.at("l"), false) else {
        panic!()
    };
    assert_eq!(l.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(errno(st(&s.at("nope"), true)), libc::ENOENT);
    assert_eq!(errno(st(&s.at("f/x"), true)), libc::ENOTDIR);
}

#[test]
fn readdir_pages_cover_the_directory_once_with_types() {
    let s = Scratch::new("readdir");
    let n = MAX_DIR_PAGE * 2 + 7;
    for i in 0..n {
        fs::write(s.at(&format!("f{i}")), b"").unwrap();
    }
    fs::create_dir(s.at("d")).unwrap();
    symlink("/nowhere", s.at("l")).unwrap();
    let mut names = Vec::new();
    let mut kinds = std::collections::HashMap::new();
    let mut pages = 0;
    loop {
        let req = FsRequest::ReadDir {
            path: s.at(""),
            offset: names.len() as u32,
        };
        let FsReply::Entries { entries, done } = handle(&req) else {
            panic!()
        };
        let reply = FsReply::Entries {
            entries: entries.clone(),
            done,
        };
        assert!(
            reply.validate().is_ok(),
            "every page passes the host's bounds"
        );
        pages += 1;
        for e in entries {
            let name = String::from_utf8(e.name).unwrap();
            kinds.insert(name.clone(), e.kind);
            names.push(name);
        }
        if done {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), n + 2);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n + 2, "no entry twice");
    assert_eq!(kinds["d"], EntryKind::Dir);
    assert_eq!(kinds["l"], EntryKind::Symlink);
    assert_eq!(kinds["f0"], EntryKind::File);
    let missing = FsRequest::ReadDir {
        path: s.at("nope"),
        offset: 0,
    };
    assert_eq!(errno(handle(&missing)), libc::ENOENT);
    let file = FsRequest::ReadDir {
        path: s.at("f0"),
        offset: 0,
    };
    assert_eq!(errno(handle(&file)), libc::ENOTDIR);
}

#[test]
fn mkdir_like_mkdir_p_and_m() {
    let s = Scratch::new("mkdir");
    let mk = |rel: &str, mode, recursive| {
        handle(&FsRequest::Mkdir {
            path: s.at(rel),
            mode,
            recursive,
        })
    };
    assert_eq!(mk("a/b/c", None, true), FsReply::Done);
    assert!(Path::new(&s.at("a/b/c")).is_dir());
    assert_eq!(
        mk("a/b/c", None, true),
        FsReply::Done,
        "-p: existing is fine"
    );
    assert_eq!(errno(mk("a/b/c", None, false)), libc::EEXIST);
    assert_eq!(errno(mk("x/y", None, false)), libc::ENOENT);
    // Exact mode, whatever the umask: 0o707 has bits a 022 umask clears.
    assert_eq!(mk("m", Some(0o707), false), FsReply::Done);
    let mode = fs::metadata(s.at("m")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o707);
    fs::write(s.at("file"), b"").unwrap();
    assert_eq!(errno(mk("file", None, true)), libc::EEXIST);
    assert_eq!(errno(mk("file/sub", None, true)), libc::ENOTDIR);
}

#[test]
fn rename_and_access() {
    let s = Scratch::new("rename");
    fs::write(s.at("f"), b"x").unwrap();
    let mv = |a: &str, b: &str| {
        handle(&FsRequest::Rename {
            from: s.at(a),
            to: s.at(b),
        })
    };
    assert_eq!(mv("f", "g"), FsReply::Done);
    assert_eq!(fs::read(s.at("g")).unwrap(), b"x");
    assert_eq!(errno(mv("f", "h")), libc::ENOENT);
    fs::create_dir_all(s.at("d/sub")).unwrap();
    fs::create_dir(s.at("e")).unwrap();
    assert_eq!(errno(mv("e", "d")), libc::ENOTEMPTY);
    let acc = |rel: &str, mode| {
        handle(&FsRequest::Access {
            path: s.at(rel),
            mode,
        })
    };
    assert_eq!(acc("g", libc::F_OK as u32), FsReply::Done);
    assert_eq!(errno(acc("nope", libc::F_OK as u32)), libc::ENOENT);
    // No execute bit for anyone: even root is refused X_OK.
    assert_eq!(errno(acc("g", libc::X_OK as u32)), libc::EACCES);
    assert_eq!(acc("d", libc::X_OK as u32), FsReply::Done);
}

#[test]
fn remove_like_rm_within_a_budget() {
    let s = Scratch::new("remove");
    let rm = |rel: &str, recursive, force| remove(Path::new(&s.at(rel)), recursive, force, 10);
    assert_eq!(
        errno(rm("nope", false, false).unwrap_or_else(errored)),
        libc::ENOENT
    );
    assert_eq!(rm("nope", true, true).unwrap(), FsReply::Done);
    fs::create_dir_all(s.at("t/a/b")).unwrap();
    for i in 0..25 {
        fs::write(s.at(&format!("t/a/b/f{i}")), b"").unwrap();
    }
    // A symlink to a directory outside: removed, its target untouched.
    fs::create_dir(s.at("keep")).unwrap();
    fs::write(s.at("keep/k"), b"").unwrap();
    symlink(s.at("keep"), s.at("t/link")).unwrap();
    assert_eq!(
        errno(rm("t", false, true).unwrap_or_else(errored)),
        libc::EISDIR
    );
    let mut rounds = 0;
    while rm("t", true, false).unwrap() == FsReply::More {
        rounds += 1;
        assert!(rounds < 10, "a recursive remove ends");
    }
    assert!(
        rounds >= 2,
        "25 files with a budget of 10 take several requests"
    );
    assert!(!Path::new(&s.at("t")).exists());
    assert!(Path::new(&s.at("keep/k")).exists());
    fs::write(s.at("f"), b"").unwrap();
    assert_eq!(rm("f", false, false).unwrap(), FsReply::Done);
}

fn errored(e: io::Error) -> FsReply {
    FsReply::Errno(errno_of(&e))
}
