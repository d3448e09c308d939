//! What a slow boot looked like. Normal boots take seconds; when one passes
//! [`SLOW_BOOT`] we record where it stands — which step the host is waiting
//! for, the console tail, and QEMU's own view of the vCPUs over QMP — so a
//! boot that later times out says why instead of only "timed out".

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::console::Tail;
use super::qmp::Qmp;

/// When a boot counts as stuck enough to be worth a report.
const SLOW_BOOT: Duration = Duration::from_secs(30);

/// [`SLOW_BOOT`], or `GONDOLIN_SLOW_BOOT_MS` (lets a test see a report
/// without waiting half a minute).
fn slow_boot() -> Duration {
    std::env::var("GONDOLIN_SLOW_BOOT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(SLOW_BOOT)
}
/// Bound on the whole QMP exchange and on each reply line.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the report (it ends up in an error message).
const MAX_REPORT: usize = 8 * 1024;

/// Which boot step the host is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// QEMU has not connected to the control socket yet.
    QemuConnect = 0,
    /// QEMU is connected; the guest's sandboxd has not sent `Ready`.
    GuestReady = 1,
}

/// Shared between `Vm::start` and the watchdog.
#[derive(Debug, Default)]
pub struct Progress {
    step: AtomicU8,
    report: Mutex<Option<String>>,
}

impl Progress {
    pub fn set_step(&self, s: Step) {
        self.step.store(s as u8, Ordering::Release);
    }

    fn describe_step(&self) -> String {
        if self.step.load(Ordering::Acquire) == Step::QemuConnect as u8 {
            "QEMU had not connected to the control socket".into()
        } else {
            "QEMU was connected; the guest had not sent Ready".into()
        }
    }

    /// The report, if the boot passed [`SLOW_BOOT`].
    pub fn report(&self) -> Option<String> {
        self.report.lock().unwrap().clone()
    }
}

/// Sleep [`slow_boot`], then write the report and log it. Aborted by the
/// caller when the boot ends first.
/// `ports` are the virtio port names in QEMU's `port{i}` chardev order.
pub async fn watchdog(
    progress: Arc<Progress>,
    tail: Tail,
    qmp: PathBuf,
    ports: Vec<String>,
    pid: Option<u32>,
) {
    let after = slow_boot();
    tokio::time::sleep(after).await;
    let qmp_view = match tokio::time::timeout(QMP_TIMEOUT, query_qmp(&qmp, &ports)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("QMP query failed: {e}"),
        Err(_) => "QMP query timed out".into(),
    };
    let console = tail.lines();
    let console = if console.is_empty() {
        "(empty)".to_string()
    } else {
        console.join(" | ")
    };
    let mut report = format!(
        "after {}ms {}; QEMU pid {}; {qmp_view}; console: {console}",
        after.as_millis(),
        progress.describe_step(),
        pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
    );
    if report.len() > MAX_REPORT {
        let mut cut = MAX_REPORT;
        while !report.is_char_boundary(cut) {
            cut -= 1;
        }
        report.truncate(cut);
        report.push('…');
    }
    tracing::warn!(target: "gondolin::vm", "slow boot: {report}");
    *progress.report.lock().unwrap() = Some(report);
}

/// QEMU's run state and the vCPUs' registers, as one line.
async fn query_qmp(path: &std::path::Path, ports: &[String]) -> std::io::Result<String> {
    let mut q = Qmp::connect(path, QMP_TIMEOUT).await?;
    let mut out = Vec::new();
    out.push(format!(
        "status: {}",
        compact(&q.execute("query-status", Value::Null).await?)
    ));
    // `frontend-open` of a virtio port's chardev says whether the guest
    // has the port open: sandboxd started, or the guest is stuck before.
    let devs = q.execute("query-chardev", Value::Null).await?;
    out.push(format!("ports: {}", chardevs(&devs, ports)));
    out.push(format!("cpus: {}", squeeze(&q.hmp("info cpus").await?)));
    let regs = q.hmp("info registers -a").await?;
    out.push(format!("registers: {}", without_fpu(&squeeze(&regs))));
    // A second look a moment later: stuck on one spot, or moving?
    tokio::time::sleep(Duration::from_secs(1)).await;
    let regs = q.hmp("info registers -a").await?;
    out.push(format!("rip 1s later: {}", rips(&squeeze(&regs))));
    Ok(out.join("; "))
}

/// HMP output with whitespace squeezed.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A QMP return value as short text.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => squeeze(s),
        other => other.to_string(),
    }
}

/// `gondolin.control: guest open|closed` per virtio port chardev (`port{i}`
/// is `ports[i]`; the console and QMP's own are left out).
fn chardevs(v: &Value, ports: &[String]) -> String {
    let Some(list) = v.as_array() else {
        return compact(v);
    };
    list.iter()
        .filter_map(|c| {
            let label = c.get("label")?.as_str()?;
            let i: usize = label.strip_prefix("port")?.parse().ok()?;
            let name = ports.get(i).map(String::as_str).unwrap_or(label);
            let open = c.get("frontend-open")?.as_bool()?;
            Some(format!(
                "{name}: guest {}",
                if open { "open" } else { "closed" }
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Just each CPU's instruction pointer from `info registers -a`.
fn rips(regs: &str) -> String {
    regs.split_whitespace()
        .filter(|w| w.starts_with("CPU#") || w.starts_with("RIP=") || w.starts_with("EIP="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `info registers` without the FPU/SSE state after each CPU's `FCW=`
/// (kilobytes of zeros that say nothing about where a boot stands).
fn without_fpu(regs: &str) -> String {
    regs.split_inclusive("CPU#")
        .map(|cpu| match cpu.find(" FCW=") {
            Some(i) => {
                let next = if cpu.ends_with("CPU#") { " CPU#" } else { "" };
                format!("{}{next}", &cpu[..i])
            }
            None => cpu.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_described() {
        let p = Progress::default();
        assert!(p.describe_step().contains("not connected"));
        p.set_step(Step::GuestReady);
        assert!(p.describe_step().contains("not sent Ready"));
    }

    #[test]
    fn hmp_output_is_squeezed() {
        let v = serde_json::json!("RAX=0  RBX=1\nRIP=ffff\n");
        assert_eq!(compact(&v), "RAX=0 RBX=1 RIP=ffff");
        let v = serde_json::json!({"status": "running"});
        assert_eq!(compact(&v), r#"{"status":"running"}"#);
    }

    #[test]
    fn chardevs_say_whether_the_guest_opened_its_ports() {
        let v = serde_json::json!([
            {"label": "console0", "filename": "stdio", "frontend-open": true},
            {"label": "port0", "filename": "unix:/x", "frontend-open": false},
            {"label": "port1", "filename": "unix:/y", "frontend-open": true},
        ]);
        let names = ["gondolin.control".to_string(), "gondolin.fs".to_string()];
        assert_eq!(
            chardevs(&v, &names),
            "gondolin.control: guest closed, gondolin.fs: guest open"
        );
    }

    #[test]
    fn rips_are_picked_out() {
        assert_eq!(
            rips("CPU#0 RAX=1 RIP=ff RFL=2 CPU#1 RAX=2 RIP=ee"),
            "CPU#0 RIP=ff CPU#1 RIP=ee"
        );
    }

    #[test]
    fn fpu_state_is_dropped() {
        let regs = "CPU#0 RAX=1 RIP=ff FCW=037f XMM00=0 CPU#1 RAX=2 RIP=ee FCW=037f XMM00=0";
        assert_eq!(without_fpu(regs), "CPU#0 RAX=1 RIP=ff CPU#1 RAX=2 RIP=ee");
        assert_eq!(without_fpu("no cpus"), "no cpus");
    }
}
