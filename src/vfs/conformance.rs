//! One list of POSIX behaviours every writable native provider must show,
//! run against each of them, plus the provider-specific batteries
//! (RealFS symlink escapes, shadowing, mount routing).

use std::path::PathBuf;
use std::sync::Arc;

use gondolin_wire::fs::errno;

use super::memory::MemoryProvider;
use super::mounts::MountRouter;
use super::readonly::ReadonlyProvider;
use super::realfs::RealFSProvider;
use super::shadow::{
    PathPredicate, ShadowContext, ShadowOptions, ShadowPredicate, ShadowProvider, ShadowWriteMode,
};
use super::{FileKind, OpenOptions, Provider, VfsResult};

pub(super) fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gondolin-vfs-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(super) fn flags(f: &str) -> OpenOptions {
    OpenOptions::from_node_flags(f, 0o644).unwrap()
}

pub(super) fn errno_of<T: std::fmt::Debug>(r: VfsResult<T>) -> i32 {
    r.expect_err("expected an error").errno
}

pub(super) async fn write_file(p: &dyn Provider, path: &str, data: &[u8]) {
    let h = p.open(path, flags("w")).await.unwrap();
    assert_eq!(h.write(0, data).await.unwrap(), data.len());
    h.close().await.unwrap();
}

pub(super) async fn read_file(p: &dyn Provider, path: &str) -> Vec<u8> {
    let h = p.open(path, flags("r")).await.unwrap();
    let d = h.read(0, 1 << 20).await.unwrap();
    h.close().await.unwrap();
    d
}

async fn names(p: &dyn Provider, path: &str) -> Vec<String> {
    let mut v: Vec<String> = p
        .readdir(path)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

/// The shared list. `links`: the provider supports hard and symbolic links.
async fn conformance(p: &dyn Provider, links: bool) {
    unlinked_file_works_through_its_handle(p).await;
    // create / read / write / sparse extension / truncate
    write_file(p, "/a", b"hello").await;
    assert_eq!(read_file(p, "/a").await, b"hello");
    let h = p.open("/a", flags("r+")).await.unwrap();
    h.write(8, b"!").await.unwrap();
    assert_eq!(h.read(0, 100).await.unwrap(), b"hello\0\0\0!");
    h.truncate(2).await.unwrap();
    assert_eq!(h.stat().await.unwrap().size, 2);
    h.close().await.unwrap();
    p.truncate("/a", 4).await.unwrap();
    assert_eq!(read_file(p, "/a").await, b"he\0\0");

    // O_APPEND writes land at the end whatever the offset
    let h = p.open("/a", flags("a")).await.unwrap();
    h.write(0, b"Z").await.unwrap();
    h.close().await.unwrap();
    assert_eq!(read_file(p, "/a").await, b"he\0\0Z");

    // exclusive create
    assert_eq!(
        errno_of(p.open("/a", flags("wx")).await.map(|_| ())),
        errno::EEXIST
    );

    // rename over an existing file replaces it
    write_file(p, "/b", b"bee").await;
    p.rename("/b", "/a").await.unwrap();
    assert_eq!(read_file(p, "/a").await, b"bee");
    assert_eq!(errno_of(p.lstat("/b").await), errno::ENOENT);

    // directories
    p.mkdir("/d", 0o755).await.unwrap();
    assert_eq!(errno_of(p.mkdir("/d", 0o755).await), errno::EEXIST);
    write_file(p, "/d/x", b"x").await;
    assert_eq!(errno_of(p.rmdir("/d").await), errno::ENOTEMPTY);
    assert_eq!(errno_of(p.unlink("/d").await), errno::EISDIR);
    assert_eq!(
        errno_of(p.open("/d", flags("w")).await.map(|_| ())),
        errno::EISDIR
    );
    assert_eq!(errno_of(p.stat("/a/x").await), errno::ENOTDIR);
    assert_eq!(p.stat("/d").await.unwrap().kind, FileKind::Dir);

    // readdir is complete
    for i in 0..200 {
        write_file(p, &format!("/d/f{i:03}"), b"").await;
    }
    let listed = names(p, "/d").await;
    assert_eq!(listed.len(), 201);
    assert!(listed.contains(&"f199".to_string()) && listed.contains(&"x".to_string()));

    // rename of a directory carries its contents
    p.rename("/d", "/e").await.unwrap();
    assert_eq!(read_file(p, "/e/x").await, b"x");

    // an open file survives unlink
    let h = p.open("/a", flags("r")).await.unwrap();
    p.unlink("/a").await.unwrap();
    assert_eq!(h.read(0, 10).await.unwrap(), b"bee");
    h.close().await.unwrap();
    assert_eq!(errno_of(p.stat("/a").await), errno::ENOENT);

    // permissions
    write_file(p, "/m", b"").await;
    p.chmod("/m", 0o600).await.unwrap();
    assert_eq!(p.stat("/m").await.unwrap().perm, 0o600);

    // statfs answers
    assert!(p.statfs("/").await.unwrap().bsize > 0);

    if links {
        p.link("/m", "/m2").await.unwrap();
        assert_eq!(p.stat("/m").await.unwrap().nlink, 2);
        write_file(p, "/m2", b"shared").await;
        assert_eq!(read_file(p, "/m").await, b"shared");
        p.unlink("/m").await.unwrap();
        assert_eq!(p.stat("/m2").await.unwrap().nlink, 1);
        p.symlink("m2", "/s").await.unwrap();
        assert_eq!(p.readlink("/s").await.unwrap(), "m2");
        assert_eq!(p.lstat("/s").await.unwrap().kind, FileKind::Symlink);
        assert_eq!(p.stat("/s").await.unwrap().kind, FileKind::File);
        assert_eq!(read_file(p, "/s").await, b"shared");
    }
}

/// A file unlinked while open keeps working through the handle, as on
/// tmpfs: the data, the size, no links left, a mode change.
async fn unlinked_file_works_through_its_handle(p: &dyn Provider) {
    let h = p.open("/tmp-u", flags("w+")).await.unwrap();
    h.write(0, b"hello").await.unwrap();
    p.unlink("/tmp-u").await.unwrap();
    assert_eq!(errno_of(p.stat("/tmp-u").await), errno::ENOENT);
    h.write(5, b" world").await.unwrap();
    assert_eq!(h.read(0, 100).await.unwrap(), b"hello world");
    h.chmod(0o600).await.unwrap();
    let m = h.stat().await.unwrap();
    assert_eq!((m.size, m.nlink, m.perm), (11, 0, 0o600));
    h.close().await.unwrap();
}

#[tokio::test]
async fn memory_provider_conforms() {
    conformance(&MemoryProvider::new(), true).await;
}

#[tokio::test]
async fn realfs_provider_conforms() {
    let d = temp_dir();
    conformance(&RealFSProvider::new(&d).unwrap(), true).await;
    std::fs::remove_dir_all(d).unwrap();
}

#[tokio::test]
async fn realfs_never_puts_setid_bits_on_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let d = temp_dir();
    let p = RealFSProvider::new(&d).unwrap();
    let host_mode =
        |rel: &str| std::fs::metadata(d.join(rel)).unwrap().permissions().mode() & 0o7777;
    write_file(&p, "/f", b"x").await;
    for (asked, got) in [
        (0o4755, 0o755),
        (0o6755, 0o755),
        (0o2711, 0o711),
        (0o1777, 0o777),
    ] {
        p.chmod("/f", asked).await.unwrap();
        assert_eq!(host_mode("f"), got, "chmod {asked:o}");
        assert_eq!(
            p.stat("/f").await.unwrap().perm,
            got,
            "stat shows the host's mode"
        );
    }
    let mut o = OpenOptions::from_node_flags("w", 0o6755).unwrap();
    o.create = true;
    p.open("/g", o).await.unwrap().close().await.unwrap();
    assert_eq!(host_mode("g") & 0o7000, 0, "created without setid bits");
    p.mkdir("/dir", 0o3777).await.unwrap();
    p.chmod("/dir", 0o7777).await.unwrap();
    assert_eq!(host_mode("dir"), 0o1777, "a directory keeps only sticky");
    // Through an open handle too.
    let h = p.open("/f", flags("r+")).await.unwrap();
    h.chmod(0o4700).await.unwrap();
    assert_eq!(host_mode("f"), 0o700);
    h.close().await.unwrap();
    std::fs::remove_dir_all(d).unwrap();
}

#[tokio::test]
async fn realfs_refuses_chown_unless_allowed() {
    use super::realfs::RealFsOptions;
    use std::os::unix::fs::MetadataExt;
    let d = temp_dir();
    let p = RealFSProvider::new(&d).unwrap();
    write_file(&p, "/f", b"x").await;
    let st = std::fs::metadata(d.join("f")).unwrap();
    let (uid, gid) = (st.uid(), st.gid());
    assert_eq!(
        errno_of(p.chown("/f", Some(4242), Some(4242)).await),
        errno::EPERM
    );
    assert_eq!(
        errno_of(p.chown("/f", None, Some(gid + 1)).await),
        errno::EPERM
    );
    let h = p.open("/f", flags("r")).await.unwrap();
    assert_eq!(errno_of(h.chown(Some(4243), None).await), errno::EPERM);
    h.close().await.unwrap();
    // Naming the owner it already has is no change.
    p.chown("/f", Some(uid), Some(gid)).await.unwrap();
    let after = std::fs::metadata(d.join("f")).unwrap();
    assert_eq!((after.uid(), after.gid()), (uid, gid));
    if uid == 0 {
        let allowed =
            RealFSProvider::with_options(&d, RealFsOptions { allow_chown: true }).unwrap();
        allowed.chown("/f", Some(4242), Some(4242)).await.unwrap();
        let after = std::fs::metadata(d.join("f")).unwrap();
        assert_eq!((after.uid(), after.gid()), (4242, 4242));
    }
    std::fs::remove_dir_all(d).unwrap();
}

struct Never;
#[async_trait::async_trait]
impl ShadowPredicate for Never {
    async fn should_shadow(&self, _: &ShadowContext) -> bool {
        false
    }
}

fn shadow(
    inner: Arc<dyn Provider>,
    pred: Arc<dyn ShadowPredicate>,
    mode: ShadowWriteMode,
) -> ShadowProvider {
    ShadowProvider::new(
        inner,
        ShadowOptions {
            predicate: pred,
            write_mode: mode,
            tmpfs: None,
            deny_symlink_bypass: true,
            deny_write_errno: errno::EACCES,
        },
    )
}

#[tokio::test]
async fn shadow_and_router_pass_everything_through() {
    conformance(
        &shadow(
            Arc::new(MemoryProvider::new()),
            Arc::new(Never),
            ShadowWriteMode::Deny,
        ),
        true,
    )
    .await;
    let router = MountRouter::new(vec![(
        "/".into(),
        Arc::new(MemoryProvider::new()) as Arc<dyn Provider>,
    )])
    .unwrap();
    conformance(&router, true).await;
}

#[tokio::test]
async fn memory_writes_cost_the_bytes_written() {
    let p = MemoryProvider::new();
    let h = p.open("/big", flags("w")).await.unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let start = std::time::Instant::now();
    for i in 0..1024u64 {
        h.write(i * chunk.len() as u64, &chunk).await.unwrap();
    }
    // 64 MiB in 1,024 appends: quadratic copying would take seconds.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(p.stat("/big").await.unwrap().size, 64 << 20);
}

#[tokio::test]
async fn readonly_refuses_every_mutation() {
    let mem = Arc::new(MemoryProvider::new());
    write_file(&*mem, "/f", b"data").await;
    let ro = ReadonlyProvider::new(mem);
    assert_eq!(read_file(&ro, "/f").await, b"data");
    assert!(ro.readonly());
    for r in [
        ro.open("/f", flags("w")).await.map(|_| ()),
        ro.open("/f", flags("a")).await.map(|_| ()),
        ro.mkdir("/d", 0o755).await,
        ro.unlink("/f").await,
        ro.rename("/f", "/g").await,
        ro.symlink("f", "/l").await,
        ro.link("/f", "/h").await,
        ro.truncate("/f", 0).await,
        ro.chmod("/f", 0o777).await,
        ro.access("/f", 2).await,
    ] {
        assert_eq!(errno_of(r), errno::EROFS);
    }
}

#[tokio::test]
async fn realfs_cannot_be_escaped() {
    let base = temp_dir();
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::fs::write(root.join("inside"), b"inside").unwrap();
    let sym = |t: &std::path::Path, l: &str| std::os::unix::fs::symlink(t, root.join(l)).unwrap();
    sym(std::path::Path::new("../outside/secret"), "rel");
    sym(&outside.join("secret"), "abs");
    sym(std::path::Path::new("/etc/passwd"), "etc");
    sym(std::path::Path::new("rel"), "chain");
    sym(std::path::Path::new("../outside/missing"), "dangling");
    sym(&outside, "dirlink");
    sym(std::path::Path::new("inside"), "ok");
    let p = RealFSProvider::new(&root).unwrap();

    for path in [
        "/rel",
        "/abs",
        "/etc",
        "/chain",
        "/dangling",
        "/dirlink/secret",
        "/../outside/secret",
    ] {
        assert_eq!(errno_of(p.stat(path).await), errno::ENOENT, "stat {path}");
        assert_eq!(
            errno_of(p.open(path, flags("r")).await.map(|_| ())),
            errno::ENOENT,
            "open {path}"
        );
    }
    // Writing through an escaping link must not create or touch anything outside.
    assert_eq!(
        errno_of(p.open("/dangling", flags("w")).await.map(|_| ())),
        errno::ENOENT
    );
    assert!(!outside.join("missing").exists());
    assert_eq!(
        errno_of(p.open("/dirlink/new", flags("w")).await.map(|_| ())),
        errno::ENOENT
    );
    assert_eq!(errno_of(p.mkdir("/dirlink/d", 0o755).await), errno::ENOENT);
    assert_eq!(errno_of(p.readdir("/dirlink").await), errno::ENOENT);
    assert_eq!(
        errno_of(p.rename("/inside", "/dirlink/moved").await),
        errno::ENOENT
    );
    assert!(root.join("inside").exists());
    assert_eq!(
        errno_of(p.link("/dirlink/secret", "/stolen").await),
        errno::ENOENT
    );
    assert_eq!(errno_of(p.chmod("/abs", 0o777).await), errno::ENOENT);
    assert_eq!(errno_of(p.truncate("/rel", 0).await), errno::ENOENT);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");

    // The links themselves live inside the root: lstat, readlink, unlink work.
    assert_eq!(p.lstat("/abs").await.unwrap().kind, FileKind::Symlink);
    assert_eq!(p.readlink("/rel").await.unwrap(), "../outside/secret");
    p.unlink("/etc").await.unwrap();
    // In-root links work, and rmdir/rename do not follow the final link.
    assert_eq!(read_file(&p, "/ok").await, b"inside");
    assert_eq!(errno_of(p.rmdir("/dirlink").await), errno::ENOTDIR);
    p.rename("/dirlink", "/renamed-link").await.unwrap();
    assert!(outside.join("secret").exists());
    assert_eq!(p.realpath("/ok").await.unwrap(), "/inside");
    assert!(p.statfs("/").await.unwrap().blocks > 0);
    std::fs::remove_dir_all(base).unwrap();
}

#[tokio::test]
async fn shadow_deny_mode_hides_and_refuses() {
    let mem = Arc::new(MemoryProvider::new());
    write_file(&*mem, "/.env", b"SECRET=1").await;
    write_file(&*mem, "/ok", b"fine").await;
    mem.symlink(".env", "/link").await.unwrap();
    let pred = Arc::new(PathPredicate::new(&[".env".into()]));
    let s = shadow(mem.clone(), pred, ShadowWriteMode::Deny);
    assert_eq!(errno_of(s.stat("/.env").await), errno::ENOENT);
    assert_eq!(
        errno_of(s.open("/.env", flags("r")).await.map(|_| ())),
        errno::ENOENT
    );
    assert_eq!(
        errno_of(s.open("/.env", flags("w")).await.map(|_| ())),
        errno::EACCES
    );
    assert_eq!(errno_of(s.unlink("/.env").await), errno::EACCES);
    // A symlink to the shadowed file is shadowed too: hidden and unreadable.
    assert_eq!(names(&s, "/").await, ["ok"]);
    assert_eq!(
        errno_of(s.open("/link", flags("r")).await.map(|_| ())),
        errno::ENOENT
    );
    assert_eq!(errno_of(s.rename("/ok", "/.env").await), errno::EXDEV);
    assert_eq!(read_file(&s, "/ok").await, b"fine");
    assert_eq!(read_file(&*mem, "/.env").await, b"SECRET=1");
}

#[tokio::test]
async fn shadow_tmpfs_mode_gives_the_guest_its_own_copy() {
    let mem = Arc::new(MemoryProvider::new());
    write_file(&*mem, "/.env", b"HOST").await;
    let pred = Arc::new(PathPredicate::new(&["/.env".into(), "/secrets".into()]));
    let s = shadow(mem.clone(), pred, ShadowWriteMode::Tmpfs);
    assert_eq!(errno_of(s.stat("/.env").await), errno::ENOENT);
    write_file(&s, "/.env", b"GUEST").await;
    assert_eq!(read_file(&s, "/.env").await, b"GUEST");
    assert_eq!(read_file(&*mem, "/.env").await, b"HOST");
    s.mkdir("/secrets", 0o700).await.unwrap();
    write_file(&s, "/secrets/k", b"k").await;
    assert!(mem.stat("/secrets").await.is_err());
    s.rename("/secrets/k", "/.env").await.unwrap();
    assert_eq!(read_file(&s, "/.env").await, b"k");
    assert_eq!(names(&s, "/").await, [".env", "secrets"]);
}

#[test]
fn path_predicate_matches_paths_and_descendants_only() {
    let p = PathPredicate::new(&[".env".into(), "/".into(), "/a/b/".into()]);
    assert!(p.matches("/.env"));
    assert!(p.matches("/.env/x"));
    assert!(!p.matches("/.envrc"));
    assert!(p.matches("/a/b"));
    assert!(p.matches("/a/b/c"));
    assert!(!p.matches("/a"));
    assert!(
        !p.matches("/other"),
        "\"/\" must be ignored, not match everything"
    );
}

#[tokio::test]
async fn router_routes_by_longest_prefix_and_masks() {
    let root = Arc::new(MemoryProvider::new());
    let work = Arc::new(MemoryProvider::new());
    let deep = Arc::new(MemoryProvider::new());
    write_file(&*root, "/work", b"masked file").await;
    write_file(&*work, "/w.txt", b"work").await;
    write_file(&*deep, "/d.txt", b"deep").await;
    let r = MountRouter::new(vec![
        ("/".into(), root.clone() as Arc<dyn Provider>),
        ("/work".into(), work.clone() as Arc<dyn Provider>),
        ("/x/y/deep".into(), deep.clone() as Arc<dyn Provider>),
    ])
    .unwrap();
    assert_eq!(read_file(&r, "/work/w.txt").await, b"work");
    assert_eq!(read_file(&r, "/x/y/deep/d.txt").await, b"deep");
    // Virtual parents exist and list their child mounts.
    assert_eq!(r.stat("/x").await.unwrap().kind, FileKind::Dir);
    assert_eq!(names(&r, "/x/y").await, ["deep"]);
    // The mount masks the root provider's file of the same name.
    let root_listing = r.readdir("/").await.unwrap();
    let work_entry = root_listing.iter().find(|e| e.name == "work").unwrap();
    assert_eq!(work_entry.kind, FileKind::Dir);
    assert_eq!(root_listing.iter().filter(|e| e.name == "work").count(), 1);
    // Nothing crosses mounts.
    assert_eq!(
        errno_of(r.rename("/work/w.txt", "/w.txt").await),
        errno::EXDEV
    );
    assert_eq!(
        errno_of(r.link("/work/w.txt", "/x/y/deep/l").await),
        errno::EXDEV
    );
    assert_eq!(errno_of(r.rmdir("/work").await), errno::EBUSY);
    let dup = MountRouter::new(vec![
        ("/a".into(), root.clone() as Arc<dyn Provider>),
        ("/a/".into(), work as Arc<dyn Provider>),
    ]);
    assert!(dup
        .err()
        .unwrap()
        .message
        .unwrap()
        .contains("duplicate mount path: /a"));
    assert!(MountRouter::new(vec![("rel".into(), root as Arc<dyn Provider>)]).is_err());
}
