//! Symlinks in a RealFS root: which ones are followed, and the POSIX
//! behaviours kept on purpose (creating through a dangling link, `link()`
//! of a link).

use std::os::unix::fs::symlink;
use std::path::Path;

use gondolin_wire::fs::errno;

use super::RealFSProvider;
use crate::vfs::conformance::{errno_of, flags, read_file, temp_dir, write_file};
use crate::vfs::{FileKind, Provider};

#[tokio::test]
async fn absolute_links_inside_the_root_are_followed() {
    let base = temp_dir();
    let root = base.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(base.join("outside")).unwrap();
    std::fs::write(root.join("real.txt"), b"real").unwrap();
    std::fs::write(root.join("sub/deep.txt"), b"deep").unwrap();
    std::fs::write(base.join("outside/secret"), b"secret").unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    symlink(root.join("real.txt"), root.join("link")).unwrap();
    symlink(root.join("sub"), root.join("dirlink")).unwrap();
    symlink(root.join("link"), root.join("chain")).unwrap(); // abs -> abs
    symlink("chain", root.join("relchain")).unwrap(); // rel -> abs -> abs
    symlink(&root, root.join("self")).unwrap();
    symlink("/etc/passwd", root.join("etc")).unwrap();
    symlink(root.join("../outside/secret"), root.join("climb")).unwrap();
    symlink(root.join("sub/../../outside/secret"), root.join("climb2")).unwrap();
    symlink(root.join("escape"), root.join("to-escape")).unwrap(); // in-root link to an escaping one
    symlink("../outside/secret", root.join("escape")).unwrap();
    symlink(root.join("loop2"), root.join("loop1")).unwrap();
    symlink(root.join("loop1"), root.join("loop2")).unwrap();
    let p = RealFSProvider::new(&root).unwrap();

    for path in [
        "/link",
        "/chain",
        "/relchain",
        "/self/link",
        "/self/self/real.txt",
    ] {
        assert_eq!(read_file(&p, path).await, b"real", "{path}");
        assert_eq!(p.stat(path).await.unwrap().kind, FileKind::File, "{path}");
    }
    assert_eq!(read_file(&p, "/dirlink/deep.txt").await, b"deep");
    assert_eq!(p.readdir("/dirlink").await.unwrap().len(), 1);
    assert_eq!(p.realpath("/chain").await.unwrap(), "/real.txt");
    assert_eq!(
        p.realpath("/dirlink/deep.txt").await.unwrap(),
        "/sub/deep.txt"
    );
    // Writes, mkdir and rename through an in-root absolute directory link.
    write_file(&p, "/dirlink/new.txt", b"new").await;
    assert_eq!(std::fs::read(root.join("sub/new.txt")).unwrap(), b"new");
    p.mkdir("/dirlink/d", 0o755).await.unwrap();
    assert!(root.join("sub/d").is_dir());
    p.rename("/dirlink/new.txt", "/dirlink/d/moved")
        .await
        .unwrap();
    assert!(root.join("sub/d/moved").exists());
    // The links themselves are still links.
    assert_eq!(p.lstat("/link").await.unwrap().kind, FileKind::Symlink);
    assert_eq!(
        p.readlink("/link").await.unwrap(),
        root.join("real.txt").to_string_lossy()
    );

    // Everything that leaves the root stays ENOENT, chained or not.
    for path in ["/etc", "/climb", "/climb2", "/to-escape", "/self/etc"] {
        assert_eq!(errno_of(p.stat(path).await), errno::ENOENT, "stat {path}");
        assert_eq!(
            errno_of(p.open(path, flags("r")).await.map(|_| ())),
            errno::ENOENT,
            "open {path}"
        );
        assert_eq!(
            errno_of(p.open(path, flags("w")).await.map(|_| ())),
            errno::ENOENT,
            "open w {path}"
        );
    }
    assert_eq!(errno_of(p.stat("/loop1").await), errno::ELOOP);
    assert_eq!(
        std::fs::read(base.join("outside/secret")).unwrap(),
        b"secret"
    );
    std::fs::remove_dir_all(base).unwrap();
}

#[tokio::test]
async fn access_resolves_and_leaves_the_bits_to_the_caller() {
    let root = temp_dir();
    std::fs::write(root.join("f"), b"x").unwrap();
    let p = RealFSProvider::new(&root).unwrap();
    // The provider leaves permission bits to its caller (ENOSYS) once the
    // path resolved; a missing path is ENOENT.
    assert_eq!(errno_of(p.access("/missing", 0).await), errno::ENOENT);
    assert_eq!(errno_of(p.access("/f", 4).await), errno::ENOSYS);
    std::fs::remove_dir_all(root).unwrap();
}

/// POSIX, kept on purpose: opening a dangling link for writing creates
/// its target (when that lies inside the root), and `link()` of a symlink
/// makes a second name for the symlink, not for its target.
#[tokio::test]
async fn dangling_links_create_and_link_links_the_link() {
    let root = std::fs::canonicalize(temp_dir()).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    symlink("made-rel.txt", root.join("dangling-rel")).unwrap();
    symlink(root.join("sub/made-abs.txt"), root.join("dangling-abs")).unwrap();
    symlink(root.join("missing-dir/x"), root.join("dangling-nodir")).unwrap();
    let p = RealFSProvider::new(&root).unwrap();

    write_file(&p, "/dangling-rel", b"rel").await;
    assert_eq!(std::fs::read(root.join("made-rel.txt")).unwrap(), b"rel");
    write_file(&p, "/dangling-abs", b"abs").await;
    assert_eq!(
        std::fs::read(root.join("sub/made-abs.txt")).unwrap(),
        b"abs"
    );
    assert_eq!(
        errno_of(p.open("/dangling-nodir", flags("w")).await.map(|_| ())),
        errno::ENOENT
    );
    // "wx" never follows: the link itself is there, so EEXIST.
    std::fs::remove_file(root.join("made-rel.txt")).unwrap();
    assert_eq!(
        errno_of(p.open("/dangling-rel", flags("wx")).await.map(|_| ())),
        errno::EEXIST
    );
    assert!(!root.join("made-rel.txt").exists());

    p.link("/dangling-abs", "/hard").await.unwrap();
    let hard = std::fs::symlink_metadata(root.join("hard")).unwrap();
    assert!(hard.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(root.join("hard")).unwrap(),
        root.join("sub/made-abs.txt")
    );
    assert_eq!(p.lstat("/hard").await.unwrap().nlink, 2);
    assert_eq!(read_file(&p, "/hard").await, b"abs");
    assert!(Path::new(&root.join("sub/made-abs.txt")).exists());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_fifo_in_the_root_is_refused_without_blocking() {
    let root = std::fs::canonicalize(temp_dir()).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let p = RealFSProvider::new(&root).unwrap();
    // On a thread of its own: a blocking open of a FIFO with no peer never
    // returns, and must fail this test, not hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let errnos: Vec<i32> = ["r", "r+"]
            .iter()
            .map(|f| errno_of(rt.block_on(p.open("/fifo", flags(f))).map(|_| ())))
            .collect();
        let kind = rt.block_on(p.stat("/fifo")).unwrap().kind;
        let truncated = rt.block_on(p.truncate("/fifo", 0)).is_err();
        let _ = tx.send((errnos, kind, truncated));
    });
    let (errnos, kind, truncated) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("open of a FIFO must not block");
    assert_eq!(errnos, [libc::ENXIO, libc::ENXIO]);
    assert_eq!(kind, FileKind::Other);
    assert!(truncated, "truncate of a FIFO fails (without blocking)");
}
