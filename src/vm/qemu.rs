//! The QEMU command line, built as a pure function so it can be tested
//! without QEMU.

use std::path::PathBuf;

use super::{Accel, RootfsMode};

/// Every input of the command line, already resolved.
#[derive(Debug, Clone)]
pub struct QemuPlan {
    pub accel: Accel,
    pub machine: Option<String>,
    pub cpu: Option<String>,
    pub memory: String,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub disk: PathBuf,
    /// `qcow2` for an overlay, `raw` for the image's own rootfs.
    pub disk_format: DiskFormat,
    pub rootfs_mode: RootfsMode,
    /// Where guest RAM lives (see [`Ram`]).
    pub ram: Ram,
    /// Start paused, waiting for a migration stream (`-incoming defer`):
    /// the VM resumes from a snapshot instead of booting.
    pub incoming: bool,
    /// Unix sockets the host listens on, one per virtio-serial port name.
    pub serial_ports: Vec<(String, PathBuf)>,
    /// QEMU listens here for QMP.
    pub qmp_socket: PathBuf,
    /// The host's end of the guest NIC (`None` = no network device).
    pub net_socket: Option<PathBuf>,
}

/// The disk image format QEMU is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// Guest RAM's backing. Always a named memory backend, so its RAM block has
/// the same name ([`RAM_ID`]) however the VM started: a migration stream
/// names the blocks it carries, and the resuming QEMU must know them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ram {
    /// Anonymous memory (`memory-backend-ram`).
    Anonymous,
    /// A file mapping (`memory-backend-file`). `share: true` writes go to
    /// the file (a boot template being built); `share: false` is a private
    /// copy-on-write mapping, so VMs resumed from one template share its
    /// untouched pages in the page cache and never write the file.
    File { path: PathBuf, share: bool },
}

/// The id of the guest RAM backend object (and so of its RAM block).
pub const RAM_ID: &str = "gondolin.ram";

fn p(path: &std::path::Path) -> String {
    // QEMU option values use ',' as a separator; a literal comma is doubled.
    path.to_string_lossy().replace(',', ",,")
}

pub fn qemu_argv(plan: &QemuPlan) -> Vec<String> {
    let machine = plan.machine.clone().unwrap_or_else(|| "q35".to_string());
    // microvm has no PCI bus: its virtio devices are the MMIO variants.
    let bus = if machine.starts_with("microvm") {
        "device"
    } else {
        "pci"
    };
    let cpu = plan.cpu.clone().unwrap_or_else(|| match plan.accel {
        Accel::Kvm | Accel::Hvf => "host".into(),
        // Without ERMS the guest kernel copies with `rep movsq` instead of
        // `rep movsb`; TCG runs a string instruction one element per
        // iteration, so every kernel copy (page cache, sockets, pipes,
        // FUSE) gets several times faster: tmpfs reads go 230 → 870 MB/s.
        _ => "max,-erms".into(),
    });
    let format = match plan.disk_format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    // `memory` on the image itself: QEMU keeps the writes in a temp file it
    // deletes. On an overlay of ours (a resumed VM) the overlay is already
    // private and deleted on close.
    let extra = match (plan.rootfs_mode, plan.disk_format) {
        (RootfsMode::Readonly, _) => ",readonly=on",
        (RootfsMode::Memory, DiskFormat::Raw) => ",snapshot=on",
        _ => "",
    };
    let ro = if plan.rootfs_mode == RootfsMode::Readonly {
        "ro"
    } else {
        "rw"
    };
    let accel_words = plan.accel.cmdline_extra();
    let cmdline =
        format!("{} {accel_words} gondolin.rootfs={ro}", plan.cmdline.trim()).replace("  ", " ");

    let mut a: Vec<String> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-nodefaults", "-no-reboot", "-nographic", "-no-user-config"]);
    let mib = super::parse_memory_mib(&plan.memory).unwrap_or(1024);
    let backend = match &plan.ram {
        Ram::Anonymous => format!("memory-backend-ram,id={RAM_ID},size={mib}M"),
        Ram::File { path, share } => format!(
            "memory-backend-file,id={RAM_ID},size={mib}M,mem-path={},share={}",
            p(path),
            if *share { "on" } else { "off" }
        ),
    };
    push(&["-object", &backend]);
    push(&[
        "-machine",
        &format!("{machine},memory-backend={RAM_ID}"),
        "-accel",
        &plan.accel.qemu_arg(),
        "-cpu",
        &cpu,
    ]);
    push(&["-m", &format!("{mib}M"), "-smp", &plan.cpus.to_string()]);
    push(&[
        "-kernel",
        &p(&plan.kernel),
        "-initrd",
        &p(&plan.initrd),
        "-append",
        &cmdline,
    ]);
    let drive = format!(
        "file={},if=none,id=drive0,format={format},cache=unsafe{extra}",
        p(&plan.disk)
    );
    push(&[
        "-drive",
        &drive,
        "-device",
        &format!("virtio-blk-{bus},drive=drive0"),
    ]);
    // The guest console goes to QEMU's stdout, which the host reads; stdin is
    // never a terminal so QEMU doesn't touch the user's tty.
    push(&[
        "-chardev",
        "stdio,id=console0,signal=off",
        "-serial",
        "chardev:console0",
    ]);
    push(&["-object", "rng-random,filename=/dev/urandom,id=rng0"]);
    push(&["-device", &format!("virtio-rng-{bus},rng=rng0")]);
    push(&["-device", &format!("virtio-serial-{bus},id=vser0")]);
    for (i, (name, sock)) in plan.serial_ports.iter().enumerate() {
        let id = format!("port{i}");
        push(&[
            "-chardev",
            &format!("socket,id={id},path={},server=off", p(sock)),
        ]);
        push(&[
            "-device",
            &format!("virtserialport,chardev={id},name={name},bus=vser0.0"),
        ]);
    }
    if let Some(sock) = &plan.net_socket {
        push(&[
            "-netdev",
            &format!(
                "stream,id=net0,server=off,addr.type=unix,addr.path={}",
                p(sock)
            ),
            "-device",
            // romfile= skips the PXE option ROM: nothing here network-boots.
            &format!(
                "virtio-net-{bus},netdev=net0,mac=02:00:00:00:00:01{}",
                if bus == "pci" { ",romfile=" } else { "" }
            ),
        ]);
    }
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", p(&plan.qmp_socket)),
    ]);
    if plan.incoming {
        push(&["-incoming", "defer"]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> QemuPlan {
        QemuPlan {
            accel: Accel::Tcg,
            machine: None,
            cpu: None,
            memory: "1G".into(),
            cpus: 2,
            kernel: "/img/vmlinuz".into(),
            initrd: "/img/initrd.img".into(),
            cmdline: "console=ttyS0 quiet".into(),
            disk: "/tmp/x/overlay.qcow2".into(),
            disk_format: DiskFormat::Qcow2,
            rootfs_mode: RootfsMode::Cow,
            ram: Ram::Anonymous,
            incoming: false,
            serial_ports: vec![("gondolin.control".into(), "/tmp/x/control.sock".into())],
            qmp_socket: "/tmp/x/qmp.sock".into(),
            net_socket: None,
        }
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_uses_q35_max_and_multithreaded_tcg() {
        let a = qemu_argv(&plan());
        assert_eq!(after(&a, "-machine"), ["q35,memory-backend=gondolin.ram"]);
        assert_eq!(
            after(&a, "-object")[0],
            "memory-backend-ram,id=gondolin.ram,size=1024M"
        );
        assert!(!a.contains(&"-incoming".to_string()));
        assert_eq!(after(&a, "-accel"), ["tcg,thread=single,tb-size=128"]);
        assert_eq!(after(&a, "-cpu"), ["max,-erms"]);
        assert_eq!(after(&a, "-m"), ["1024M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert!(a.contains(&"-nodefaults".to_string()));
        assert_eq!(
            after(&a, "-append"),
            [format!(
                "console=ttyS0 quiet {} gondolin.rootfs=rw",
                Accel::Tcg.cmdline_extra()
            )]
        );
    }

    #[test]
    fn rootfs_modes_shape_the_drive() {
        let mut pl = plan();
        let drive = |pl: &QemuPlan| after(&qemu_argv(pl), "-drive")[0].to_string();
        assert!(drive(&pl).contains("format=qcow2"));
        pl.rootfs_mode = RootfsMode::Memory;
        assert!(
            !drive(&pl).contains("snapshot=on"),
            "an overlay is private already"
        );
        pl.disk_format = DiskFormat::Raw;
        assert!(drive(&pl).ends_with("snapshot=on"));
        assert!(drive(&pl).contains("format=raw"));
        pl.rootfs_mode = RootfsMode::Readonly;
        assert!(drive(&pl).ends_with("readonly=on"));
        assert!(drive(&pl).contains("format=raw"));
        assert!(after(&qemu_argv(&pl), "-append")[0].ends_with("gondolin.rootfs=ro"));
    }

    #[test]
    fn serial_ports_and_qmp() {
        let a = qemu_argv(&plan());
        let devs = after(&a, "-device");
        assert!(devs.contains(&"virtio-serial-pci,id=vser0"));
        assert!(devs.contains(&"virtserialport,chardev=port0,name=gondolin.control,bus=vser0.0"));
        assert!(
            after(&a, "-chardev").contains(&"socket,id=port0,path=/tmp/x/control.sock,server=off")
        );
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/tmp/x/qmp.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn kvm_and_microvm() {
        let mut pl = plan();
        pl.accel = Accel::Kvm;
        pl.machine = Some("microvm".into());
        let a = qemu_argv(&pl);
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert_eq!(
            after(&a, "-append"),
            ["console=ttyS0 quiet gondolin.rootfs=rw"],
            "ASLR stays on under KVM"
        );
        assert!(after(&a, "-device").contains(&"virtio-serial-device,id=vser0"));
    }

    #[test]
    fn resumed_vm_maps_the_template_privately_and_waits_for_the_stream() {
        let mut pl = plan();
        pl.ram = Ram::File {
            path: "/c/t,1/ram".into(),
            share: false,
        };
        pl.incoming = true;
        let a = qemu_argv(&pl);
        assert_eq!(
            after(&a, "-object")[0],
            "memory-backend-file,id=gondolin.ram,size=1024M,mem-path=/c/t,,1/ram,share=off"
        );
        assert_eq!(after(&a, "-incoming"), ["defer"]);
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut pl = plan();
        pl.disk = "/tmp/a,b/disk".into();
        assert!(after(&qemu_argv(&pl), "-drive")[0].starts_with("file=/tmp/a,,b/disk,"));
    }
}
