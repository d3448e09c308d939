//! sandboxfs against the real host fs server (MemoryProvider behind it),
//! mounted with real FUSE on this machine. Needs root and /dev/fuse; skips
//! (with a message) when the machine cannot mount FUSE.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gondolin::vfs::memory::MemoryProvider;
use gondolin::vfs::serve::serve;
use gondolin::vfs::server::FsServer;
use gondolin::vfs::Provider;

struct Mounted {
    dir: PathBuf,
    child: Child,
    server: Arc<FsServer>,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.as_path(), nix::mount::MntFlags::MNT_DETACH);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(self.dir.parent().unwrap());
    }
}

fn can_mount() -> bool {
    nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists()
}

fn mount(provider: Arc<dyn Provider>) -> Mounted {
    let base = std::env::temp_dir().join(format!(
        "sandboxfs-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let dir = base.join("mnt");
    fs::create_dir_all(&dir).unwrap();
    let sock = base.join("fs.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = FsServer::new(provider);
    let listener = rt
        .block_on(async { tokio::net::UnixListener::bind(&sock) })
        .unwrap();
    let s = server.clone();
    rt.spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = serve(s, stream).await;
    });
    let child = Command::new(env!("CARGO_BIN_EXE_sandboxfs"))
        .args([
            "--mount",
            dir.to_str().unwrap(),
            "--connect",
            sock.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        if mounts.contains(&format!("{} fuse.sandboxfs", dir.display())) {
            break;
        }
        assert!(Instant::now() < deadline, "sandboxfs did not mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    Mounted {
        dir,
        child,
        server,
        _rt: rt,
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn posix_operations_through_fuse() {
    if !can_mount() {
        eprintln!("skipping: FUSE mounts need root and /dev/fuse");
        return;
    }
    let m = mount(Arc::new(MemoryProvider::new()));
    let d = &m.dir;

    // A 3 MiB file goes out in large writes and comes back intact.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    fs::write(d.join("big"), &data).unwrap();
    assert_eq!(fs::read(d.join("big")).unwrap(), data);
    let writes = m
        .server
        .metrics
        .bytes_written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(writes, data.len() as u64);

    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/a"), b"hello").unwrap();
    let mut names: Vec<String> = fs::read_dir(d.join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a"]);
    fs::rename(d.join("sub/a"), d.join("sub/b")).unwrap();
    assert!(!d.join("sub/a").exists());
    assert_eq!(fs::read(d.join("sub/b")).unwrap(), b"hello");
    std::os::unix::fs::symlink("b", d.join("sub/l")).unwrap();
    assert_eq!(fs::read_link(d.join("sub/l")).unwrap(), Path::new("b"));
    assert_eq!(fs::read(d.join("sub/l")).unwrap(), b"hello");
    fs::hard_link(d.join("sub/b"), d.join("sub/h")).unwrap();
    assert_eq!(fs::metadata(d.join("sub/b")).unwrap().nlink(), 2);

    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join("sub/b"))
        .unwrap();
    f.set_len(2).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::read(d.join("sub/b")).unwrap(), b"he!");
    fs::set_permissions(d.join("sub/b"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(d.join("sub/b")).unwrap().mode() & 0o777, 0o600);

    let mut app = fs::OpenOptions::new()
        .append(true)
        .open(d.join("sub/b"))
        .unwrap();
    app.write_all(b"?").unwrap();
    drop(app);
    assert_eq!(fs::read(d.join("sub/b")).unwrap(), b"he!?");

    assert_eq!(
        fs::remove_dir(d.join("sub")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    for n in ["b", "l", "h"] {
        fs::remove_file(d.join("sub").join(n)).unwrap();
    }
    fs::remove_dir(d.join("sub")).unwrap();
    assert_eq!(
        fs::metadata(d.join("nope")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let st = nix::sys::statvfs::statvfs(d.as_path()).unwrap();
    assert!(st.blocks() > 0);

    // Many readers at once: requests overlap on the wire.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let p = d.join("big");
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                fs::File::open(p).unwrap().read_to_end(&mut buf).unwrap();
                buf.len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), data.len());
    }
}

#[test]
fn host_invalidation_reaches_the_guest_cache() {
    if !can_mount() {
        eprintln!("skipping: FUSE mounts need root and /dev/fuse");
        return;
    }
    let mem = Arc::new(MemoryProvider::new());
    let m = mount(mem.clone());
    fs::write(m.dir.join("f"), b"one").unwrap();
    assert_eq!(fs::read(m.dir.join("f")).unwrap(), b"one");
    // Change it behind the kernel's back, then tell the guest.
    m._rt.block_on(async {
        use gondolin::vfs::OpenOptions;
        let h = mem
            .open("/f", OpenOptions::from_node_flags("w", 0o644).unwrap())
            .await
            .unwrap();
        h.write(0, b"two!").await.unwrap();
    });
    m.server.invalidate("/f");
    // Well inside the 1 s attribute TTL: only the invalidation explains it.
    let deadline = Instant::now() + Duration::from_millis(500);
    while fs::read(m.dir.join("f")).unwrap() != b"two!" {
        assert!(Instant::now() < deadline, "the guest kept a stale view");
        std::thread::sleep(Duration::from_millis(20));
    }
}
