//! MemoryProvider unit tests: the capacity bound (the conformance suite covers the rest).

use super::*;

fn rw_create() -> OpenOptions {
    OpenOptions {
        read: true,
        write: true,
        create: true,
        mode: 0o644,
        ..Default::default()
    }
}

/// The `vfs_requests` fuzz target's out-of-memory input (corpus file
/// `oom-far-write`): an empty write at offset 2_952_790_014 made the
/// host allocate 2.75 GiB at once.
#[tokio::test]
async fn a_far_write_or_huge_truncate_is_enospc_not_a_host_allocation() {
    let p = MemoryProvider::with_capacity(1 << 20);
    let f = p.open("/a", rw_create()).await.unwrap();
    let e = f.write(2_952_790_014, b"").await.unwrap_err();
    assert_eq!(e.errno, errno::ENOSPC);
    let e = f.truncate(u64::MAX).await.unwrap_err();
    assert_eq!(e.errno, errno::EFBIG);
    let e = p.truncate("/a", 2 << 20).await.unwrap_err();
    assert_eq!(e.errno, errno::ENOSPC);
    assert_eq!(f.stat().await.unwrap().size, 0, "nothing was allocated");
    // The default is bounded too.
    let d = MemoryProvider::new();
    let g = d.open("/b", rw_create()).await.unwrap();
    let e = g.write(2_952_790_014, b"x").await.unwrap_err();
    assert_eq!(e.errno, errno::ENOSPC);
}

#[tokio::test]
async fn capacity_counts_every_file_and_comes_back_when_files_go() {
    let p = MemoryProvider::with_capacity(1000);
    let a = p.open("/a", rw_create()).await.unwrap();
    let b = p.open("/b", rw_create()).await.unwrap();
    a.write(0, &[1; 600]).await.unwrap();
    assert_eq!(
        b.write(0, &[2; 500]).await.unwrap_err().errno,
        errno::ENOSPC
    );
    b.write(0, &[2; 400]).await.unwrap();
    // Overwriting inside a file costs nothing more.
    a.write(100, &[3; 500]).await.unwrap();
    // Shrinking returns bytes; so does dropping the last name and handle.
    a.truncate(100).await.unwrap();
    b.write(400, &[2; 500]).await.unwrap();
    assert_eq!(
        p.truncate("/a", 200).await.unwrap_err().errno,
        errno::ENOSPC
    );
    p.unlink("/b").await.unwrap();
    assert_eq!(
        a.write(100, &[4; 800]).await.unwrap_err().errno,
        errno::ENOSPC,
        "b is still open"
    );
    drop(b);
    a.write(100, &[4; 800]).await.unwrap();
    // O_TRUNC on open frees the old contents.
    let t = OpenOptions {
        truncate: true,
        ..rw_create()
    };
    let a2 = p.open("/a", t).await.unwrap();
    a2.write(0, &[5; 1000]).await.unwrap();
}
