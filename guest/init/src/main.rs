//! PID 1 of the Gondolin guest.
//!
//! Runs from the initramfs: mounts the kernel filesystems, loads the virtio
//! modules the cloud kernel builds as modules, mounts the root disk, copies
//! `sandboxd` and `sandboxfs` onto a tmpfs in it (so the rootfs image does
//! not depend on our binaries), switches root, prepares the writable tmpfs
//! directories and the environment, then supervises `sandboxd` and reaps
//! orphans forever. Only what is the same for every VM happens here, so a
//! booted guest can be saved as a template: the per-VM configuration (VFS
//! mounts, eth0, MITM CA, clock, RNG seed) reaches sandboxd from the host
//! as a `Configure` message (sandboxd's `configure` module).
//!
//! Kernel command-line words it reads: `gondolin.rootfs=ro|rw`,
//! `gondolin.init=poweroff` (print one line and power off: the bare-boot
//! benchmark baseline), `gondolin.debug` (timestamps on the console),
//! `gondolin.tmpfs=` (the scratch tmpfs mounts, see
//! [`mounts::scratch_plan`]).

mod mounts;
mod net;
mod supervise;

use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};

/// Everything printed goes to the console (ttyS0), which the host keeps a
/// tail of for error messages.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("gondolin-init: {}", format!($($arg)*)) };
}
pub(crate) use say;

/// Power off so the host sees QEMU exit instead of a hung guest.
fn fatal(msg: &str) -> ! {
    say!("fatal: {msg}");
    let _ = reboot(RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("gondolin-init must run as PID 1");
        std::process::exit(1);
    }
    if let Err(e) = mounts::early() {
        fatal(&format!("mounting /proc, /sys, /dev failed: {e}"));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let debug = words.contains(&"gondolin.debug");
    if words.contains(&"gondolin.init=poweroff") {
        say!("bare boot");
        let _ = reboot(RebootMode::RB_POWER_OFF);
        fatal("poweroff failed");
    }
    if debug {
        say!("started at {}s", uptime());
    }
    mounts::load_modules();
    if debug {
        say!("modules loaded at {}s", uptime());
    }
    let readonly = words.contains(&"gondolin.rootfs=ro");
    if let Err(e) = mounts::switch_root(readonly) {
        fatal(&format!("switching to the root disk failed: {e}"));
    }
    if let Err(e) = mounts::late(&mounts::scratch_plan(&words)) {
        fatal(&format!("preparing the root filesystem failed: {e}"));
    }
    let _ = nix::unistd::sethostname("gondolin");
    if let Err(e) = net::loopback_up() {
        say!("bringing up lo failed: {e}");
    }
    if debug {
        say!("starting sandboxd at {}s", uptime());
    }
    supervise::run(debug);
}
