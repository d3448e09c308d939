//! Accelerator choice. A usable `/dev/kvm` is not enough: some hosts expose
//! a paravirtual KVM (PVM) on which a stock guest kernel hangs, so KVM is
//! only chosen when a hardware KVM module is loaded.

use std::path::Path;
use std::sync::Once;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Hvf,
    Tcg,
    /// Explicitly requested by the user; passed through untouched.
    Other(String),
}

/// Kernel command-line words added under software emulation (TCG).
///
/// - `norandmaps`: TCG caches translated code by guest *virtual* address, so
///   address-space randomization makes every new process miss that cache.
///   Measured on our 2-core machine: a `/bin/true` spawn drops from ~55 ms
///   to ~10 ms. The VM is the security boundary; ASLR between processes
///   inside one throwaway sandbox is what we give up, and only under TCG.
/// - `mitigations=off`: TCG does not execute speculatively, so the guest's
///   Spectre/Meltdown workarounds (page-table isolation above all) are pure
///   cost there.
/// - `init_on_alloc=0`: Debian zeroes every page on allocation (hardening
///   against leaks between guest processes); emulated, that is ~20% of a
///   process spawn.
///
/// Under KVM/HVF none of these are added.
pub const TCG_CMDLINE: &str = "norandmaps mitigations=off init_on_alloc=0";

/// TCG runs every vCPU of a VM on one host thread (`thread=single`), not one
/// thread per vCPU (`thread=multi`, QEMU's default for x86).
///
/// Multi-threaded TCG in the QEMU we ship against (7.2) can livelock a guest
/// whose kernel rewrites its own code while another vCPU runs it. Linux
/// patches static keys, tracepoints and static calls with int3 + IPI +
/// rewrite (`text_poke_bp`); under `thread=multi` a vCPU can keep executing
/// a stale translation that still holds the int3 after memory no longer
/// does, and the kernel's answer to "an int3 that is not there any more" is
/// to rewind and retry — forever, with interrupts off. Both vCPUs end up
/// looping through `asm_exc_int3`. Observed as the 120 s `vm_start_timeout`
/// of issue 12 (1 boot in ~600: a boot patches a few dozen static keys) and
/// reproduced in minutes by `__test__/soak/textpoke-soak.mjs`, which toggles
/// the scheduler tracepoints on a busy 2-vCPU guest: `thread=multi` stalled
/// in each of 3 runs (within 4 minutes each); `thread=single` ran 100
/// toggles with no stall. (One QEMU SIGSEGV in 400 soak boots under
/// `thread=multi` was not traced to a cause.)
///
/// The price, measured on the idle 2-core machine with 2 vCPUs (`make
/// bench`, same build, `GONDOLIN_ACCEL` switching the mode): VM.create →
/// first exec 2.23 s → 2.74 s (+23%), exec output streamed to the host
/// 152 → 89 MiB/s, TLS between two guest processes 31 → 17 MiB/s; exec
/// round trip, vm.fs, the VFS and host-mediated HTTP(S) unchanged. Two
/// guest vCPUs no longer run on two host cores at once, and kernel text
/// patching itself is slow (each sync IPI waits for the other vCPU's turn:
/// ~7 s per tracepoint toggle on a loaded machine).
/// `sandbox.accel: "tcg,thread=multi,tb-size=128"` (or `GONDOLIN_ACCEL`)
/// restores the old mode and its risk. KVM and HVF are not affected (the
/// CPU keeps code coherent).
pub const TCG_THREADS: &str = "single";

/// The host's TSC rate in kHz, rounded to a MHz (so the command line, and
/// with it a template's key, is the same in every process on a host).
///
/// Under TCG the guest's TSC is the host's counter (QEMU reads it for the
/// guest's `rdtsc`), but the guest kernel calibrates its rate against the
/// emulated PIT, and on a loaded host the PIT's ticks come late. Seen here:
/// `tsc: PIT calibration deviates from HPET: 304730 2596111`, `Using PIT
/// calibration value` — the guest took a 2596 MHz counter for 304 MHz and
/// its clock ran 8.5× fast (42.9 s of guest time in 5 s; `sleep 2` and
/// every timer in the guest short by as much). `tsc_early_khz=` skips that
/// calibration; the kernel still refines the value against the HPET, within
/// 1%. Measured once per process: the counter against CLOCK_MONOTONIC over
/// five 4 ms windows, the median.
#[cfg(target_arch = "x86_64")]
fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        let sample = || {
            let t0 = std::time::Instant::now();
            // SAFETY: `rdtsc` has no preconditions on x86_64.
            let c0 = unsafe { core::arch::x86_64::_rdtsc() };
            std::thread::sleep(std::time::Duration::from_millis(4));
            // SAFETY: as above.
            let c1 = unsafe { core::arch::x86_64::_rdtsc() };
            let ns = t0.elapsed().as_nanos() as u64;
            (ns > 0).then(|| c1.wrapping_sub(c0).saturating_mul(1_000_000) / ns)
        };
        let mut khz: Vec<u64> = (0..5).filter_map(|_| sample()).collect();
        khz.sort_unstable();
        let mid = *khz.get(khz.len() / 2)?;
        // A counter under 100 MHz or over 10 GHz is not a TSC rate to trust.
        (100_000..10_000_000)
            .contains(&mid)
            .then(|| (mid + 500) / 1000 * 1000)
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn host_tsc_khz() -> Option<u64> {
    None
}

impl Accel {
    /// Extra kernel command-line words for this accelerator: [`TCG_CMDLINE`]
    /// and, on x86_64, the TSC rate (see `host_tsc_khz`) under TCG.
    pub fn cmdline_extra(&self) -> String {
        let tcg = match self {
            Accel::Tcg => true,
            Accel::Other(s) => s.starts_with("tcg"),
            _ => false,
        };
        if !tcg {
            return String::new();
        }
        match host_tsc_khz() {
            Some(khz) => format!("{TCG_CMDLINE} tsc_early_khz={khz}"),
            None => TCG_CMDLINE.to_string(),
        }
    }

    pub fn qemu_arg(&self) -> String {
        match self {
            Accel::Kvm => "kvm".into(),
            Accel::Hvf => "hvf".into(),
            // A 128 MiB translation cache instead of QEMU's 1 GiB default:
            // measured the same exec latency at less than half the RSS.
            // One thread for all vCPUs: see [`TCG_THREADS`].
            Accel::Tcg => format!("tcg,thread={TCG_THREADS},tb-size=128"),
            Accel::Other(s) => s.clone(),
        }
    }

    fn from_name(s: &str) -> Self {
        match s {
            "kvm" => Accel::Kvm,
            "hvf" => Accel::Hvf,
            "tcg" => Accel::Tcg,
            other => Accel::Other(other.to_string()),
        }
    }
}

/// What the host offers, gathered from the filesystem (injectable for tests).
#[derive(Debug, Default, Clone)]
pub struct HostFacts {
    pub macos: bool,
    pub dev_kvm_rw: bool,
    pub hw_kvm_module: bool,
}

impl HostFacts {
    pub fn probe() -> Self {
        let hw = ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|m| Path::new("/sys/module").join(m).exists());
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        HostFacts {
            macos: cfg!(target_os = "macos"),
            dev_kvm_rw: rw,
            hw_kvm_module: hw,
        }
    }
}

/// Pick the accelerator: explicit option, then `GONDOLIN_ACCEL`, then detection.
pub fn detect(explicit: Option<&str>) -> Accel {
    if let Some(a) = explicit.filter(|s| !s.is_empty()) {
        return Accel::from_name(a);
    }
    if let Ok(a) = std::env::var("GONDOLIN_ACCEL") {
        if !a.is_empty() {
            return Accel::from_name(&a);
        }
    }
    let facts = HostFacts::probe();
    let accel = choose(&facts);
    if accel == Accel::Tcg {
        static WARN: Once = Once::new();
        WARN.call_once(|| {
            eprintln!(
                "gondolin: hardware virtualization unavailable ({}); using TCG software emulation, \
                 VMs will be slower. Set GONDOLIN_ACCEL=tcg to silence this warning.",
                if facts.dev_kvm_rw { "no kvm_intel/kvm_amd module loaded" } else { "/dev/kvm not usable" }
            );
        });
    }
    accel
}

pub fn choose(f: &HostFacts) -> Accel {
    if f.macos {
        Accel::Hvf
    } else if f.dev_kvm_rw && f.hw_kvm_module {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_tells_the_guest_the_tsc_rate() {
        let words = Accel::Tcg.cmdline_extra();
        assert!(words.starts_with(TCG_CMDLINE), "{words}");
        if cfg!(target_arch = "x86_64") {
            let khz: u64 = words
                .split_once("tsc_early_khz=")
                .and_then(|(_, v)| v.parse().ok())
                .expect("a rate on x86_64");
            assert!((100_000..10_000_000).contains(&khz) && khz.is_multiple_of(1000));
            assert_eq!(words, Accel::Tcg.cmdline_extra(), "the same every time");
        }
        assert_eq!(Accel::Kvm.cmdline_extra(), "");
    }

    #[test]
    fn pvm_only_kvm_falls_back_to_tcg() {
        let pvm = HostFacts {
            macos: false,
            dev_kvm_rw: true,
            hw_kvm_module: false,
        };
        assert_eq!(choose(&pvm), Accel::Tcg);
        let hw = HostFacts {
            macos: false,
            dev_kvm_rw: true,
            hw_kvm_module: true,
        };
        assert_eq!(choose(&hw), Accel::Kvm);
        let no_dev = HostFacts {
            macos: false,
            dev_kvm_rw: false,
            hw_kvm_module: true,
        };
        assert_eq!(choose(&no_dev), Accel::Tcg);
        assert_eq!(
            choose(&HostFacts {
                macos: true,
                ..Default::default()
            }),
            Accel::Hvf
        );
    }

    #[test]
    fn explicit_choice_wins() {
        assert_eq!(detect(Some("tcg")), Accel::Tcg);
        assert_eq!(detect(Some("kvm")).qemu_arg(), "kvm");
        assert_eq!(Accel::Tcg.qemu_arg(), "tcg,thread=single,tb-size=128");
    }
}
