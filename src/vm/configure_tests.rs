//! `configure_guest` run again on a live VM, as after a memory-snapshot
//! resume (new binds, clock reset, old files error, eth0 and the MITM CA
//! set up again without stacking): a real QEMU guest, so it runs only with `GONDOLIN_TEST_VM=1`
//! and a built guest image for the current guest binaries (`make guest`
//! then any VM start builds it); otherwise it says why and passes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::control::{ExecEvent, ExecHandle, ExecRequest};
use crate::net::{dns, Flow, FlowHandler, NetConfig, NetStats};
use crate::vfs::memory::MemoryProvider;
use crate::vfs::server::FsServer;
use crate::vfs::Provider;
use crate::vm::{NetAttach, RootfsMode, VfsAttach, Vm, VmConfig};

/// The guest's flows go nowhere: only eth0's setup is under test.
struct NoFlows;
impl FlowHandler for NoFlows {
    fn handle(&self, _flow: Flow) {}
}

fn image() -> Option<crate::image::ImageInfo> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let opts = crate::image::BuildOptions {
        definition: root.join("images/debian-base.json"),
        guest_bin_dir: root.join("npm/linux-x64-gnu/guest"),
        cache_root: None,
        output: None,
        verbose: false,
        from_oci: None,
        oci_pull_policy: None,
    };
    crate::image::find_built(&opts).ok().flatten()
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        window: 256 * 1024,
        ..Default::default()
    }
}

/// Exit code and stdout+stderr of one exec.
async fn output(mut h: ExecHandle) -> (i32, String) {
    let mut out = Vec::new();
    while let Some(batch) = h.next_batch(1 << 20).await {
        for ev in batch {
            match ev {
                ExecEvent::Output { data, .. } => out.extend_from_slice(&data),
                ExecEvent::Exit { exit_code, .. } => {
                    return (exit_code, String::from_utf8_lossy(&out).into_owned())
                }
                other => panic!("exec failed: {other:?}"),
            }
        }
    }
    panic!("exec ended without an exit")
}

async fn run(vm: &Vm, script: &str) -> (i32, String) {
    output(vm.control().exec(&sh(script)).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_again_replaces_the_vfs_and_resets_the_clock() {
    if std::env::var("GONDOLIN_TEST_VM").as_deref() != Ok("1") {
        eprintln!("skipped: set GONDOLIN_TEST_VM=1 to boot a VM");
        return;
    }
    let img = image().expect("GONDOLIN_TEST_VM=1 but no guest image for these binaries");
    let mem = Arc::new(MemoryProvider::new());
    for d in ["/w", "/w2", "/x y,z", "/etc", "/etc/gondolin"] {
        mem.mkdir(d, 0o755).await.unwrap();
    }
    let mut config = VmConfig {
        kernel: img.kernel,
        initrd: img.initrd,
        rootfs: img.rootfs,
        cmdline: img.cmdline,
        rootfs_mode: RootfsMode::Memory,
        rootfs_size: None,
        memory: "512M".into(),
        cpus: 1,
        accel: None,
        qemu_path: None,
        machine: None,
        cpu: None,
        append: None,
        start_timeout: Some(Duration::from_secs(120)),
        debug: false,
        vfs: Some(VfsAttach {
            server: FsServer::new(mem),
            fuse_mount: "/data".into(),
            binds: vec!["/w".into(), "/etc/gondolin".into()],
        }),
        net: Some(NetAttach {
            config: NetConfig::default(),
            dns: Arc::new(dns::DnsServer::new(dns::DnsConfig::default())),
            handler: Arc::new(NoFlows),
            stats: Arc::new(NetStats::default()),
            dial: Default::default(),
        }),
        resume: None,
        template_dir: None,
    };
    let vm = Vm::start(&config).await.expect("VM start");
    let (code, out) = run(
        &vm,
        "echo old > /w/f && date -s @1000000000 >/dev/null && date +%s",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "1000000000\n"));
    // A process holding a file of the old mount, and one inside it.
    let holder = vm
        .control()
        .exec(&sh("exec 3</w/f; cd /w; echo $$ > /tmp/holder; sleep 600"))
        .unwrap();
    let t = Instant::now();
    while run(&vm, "test -s /tmp/holder").await.0 != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "holder never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No CA at the first configure; one now, for the next.
    let (code, out) = run(&vm, "echo \"$SSL_CERT_FILE\"; mkdir -p /etc/gondolin/mitm && printf -- '-----BEGIN CERTIFICATE-----\\nFAKECA\\n-----END CERTIFICATE-----\\n' > /etc/gondolin/mitm/ca.crt").await;
    assert_eq!((code, out.as_str()), (0, "\n"));

    // The same fs server (one QEMU), another plan: as after a resume.
    config.vfs.as_mut().unwrap().binds =
        vec!["/w2".into(), "/x y,z".into(), "/etc/gondolin".into()];
    let t = Instant::now();
    configure_guest(vm.control(), &config)
        .await
        .expect("second configure");
    let took = t.elapsed();

    let host_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (_, guest) = run(&vm, "date +%s").await;
    let guest_s: i64 = guest.trim().parse().unwrap();
    assert!(
        (guest_s - host_s).abs() <= 1,
        "guest {guest_s} vs host {host_s}"
    );
    let (code, mounts) = run(&vm, "grep ' fuse.sandboxfs ' /proc/mounts | cut -d' ' -f2").await;
    assert_eq!(code, 0);
    assert_eq!(
        mounts, "/data\n/w2\n/x\\040y,z\n/etc/gondolin\n",
        "old binds gone, new ones there"
    );
    let (code, out) = run(
        &vm,
        "cat /data/w/f && echo new > '/x y,z/g' && cat /data/x' 'y,z/g",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "old\nnew\n"),
        "the new sandboxfs serves"
    );
    // The holder's old file errors at once rather than hang.
    let (code, out) = run(
        &vm,
        "timeout 10 cat /proc/$(cat /tmp/holder)/fd/3; echo status=$?",
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        !out.contains("status=0") && !out.contains("status=124"),
        "{out}"
    );
    eprintln!("old file after reconfigure: {}", out.trim());
    // Execs were served throughout, and one more configure is fine.
    configure_guest(vm.control(), &config)
        .await
        .expect("third configure");
    assert_eq!(run(&vm, "cat '/x y,z/g'").await, (0, "new\n".into()));
    holder.kill(9).unwrap();
    let _ = output(holder).await;
    dial_reaches_a_loopback_only_server(&vm).await;
    vm.close().await;
    eprintln!("second configure took {} ms", took.as_millis());
}

/// `net::dial`: the host reaches a server bound to the guest's 127.0.0.1
/// only, and a closed port answers refused (not a timeout).
async fn dial_reaches_a_loopback_only_server(vm: &Vm) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dial = vm.guest_connector().expect("the VM has a network");
    let (code, _) = run(
        vm,
        "cd /tmp && python3 -m http.server --bind 127.0.0.1 8080 >/dev/null 2>&1 &",
    )
    .await;
    assert_eq!(code, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match dial.connect(8080, Duration::from_secs(2)).await {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(Instant::now() < deadline, "the guest server never listened");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("dial failed: {e}"),
        }
    };
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    let refused = dial
        .connect(8081, Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
}
