//! Measurements, printed rather than asserted (run with `--release
//! --nocapture` for meaningful numbers). Each prints a baseline taken in the
//! same run next to the sandboxd figure. SANDBOXD_PERF_PROG replaces
//! /bin/true; SANDBOXD_PERF_MIB scales the throughput run (see
//! scripts/tcg-vm.sh for running both inside a TCG VM).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{exec, Guest};
use gondolin_wire::{GuestMsg, HostMsg, Stream};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn latency_of_true() {
    const RUNS: usize = 200;
    let prog = std::env::var("SANDBOXD_PERF_PROG").unwrap_or_else(|_| "/bin/true".into());
    let mut g = Guest::start();
    for i in 0..10 {
        g.run(i, exec(&["/bin/true"])); // warm up
    }
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS as u32 {
        let t = Instant::now();
        let o = g.run(1000 + i, exec(&[prog.as_str()]));
        times.push(t.elapsed());
        assert_eq!(o.exit_code, 0);
    }
    let p90 = {
        times.sort();
        times[RUNS * 9 / 10]
    };
    let med = median(&mut times);
    // Transport baseline: a Ping round trip over the same connection.
    let mut pings = Vec::with_capacity(RUNS);
    for seq in 0..RUNS as u32 {
        let t = Instant::now();
        g.send(&HostMsg::Ping { seq });
        assert_eq!(g.recv(), GuestMsg::Pong { seq });
        pings.push(t.elapsed());
    }
    let ping = median(&mut pings);
    // Spawn baseline: the same spawn + wait from the test process itself
    // (on the host; meaningless when sandboxd runs in a VM).
    let mut base = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        base.push(t.elapsed());
    }
    let base = median(&mut base);
    println!(
        "{{\"metric\":\"exec_true_round_trip\",\"runs\":{RUNS},\"median_us\":{},\"p90_us\":{},\"ping_median_us\":{},\"host_std_command_us\":{}}}",
        med.as_micros(),
        p90.as_micros(),
        ping.as_micros(),
        base.as_micros()
    );
}

/// Run `cmd` under sh, granting output credit back as it arrives; returns
/// the stdout byte count and the elapsed time.
fn timed_run(g: &mut Guest, id: u32, cmd: &str) -> (usize, Duration) {
    let t = Instant::now();
    g.send(&HostMsg::Exec {
        id,
        exec: exec(&["sh", "-c", cmd]),
    });
    let mut got = 0;
    loop {
        match g.recv() {
            GuestMsg::Output { id, stream, data } => {
                if stream == Stream::Stdout {
                    got += data.len();
                }
                let n = data.len() as u32;
                let (a, b) = if stream == Stream::Stdout {
                    (n, 0)
                } else {
                    (0, n)
                };
                g.send(&HostMsg::Window {
                    id,
                    stdout: a,
                    stderr: b,
                });
            }
            GuestMsg::Exit { exit_code, .. } => {
                assert_eq!(exit_code, 0);
                return (got, t.elapsed());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn stdout_throughput() {
    // SANDBOXD_PERF_MIB scales it down for slow (TCG) runs.
    let mib: usize = std::env::var("SANDBOXD_PERF_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let producer = format!("dd if=/dev/zero bs=65536 count={} 2>/dev/null", mib * 16);
    let mut g = Guest::start();
    // Baseline: the same producer into a pipe inside the same system.
    // Alternated, best of three each: the machines we measure on are shared.
    let (mut base, mut took) = (Duration::MAX, Duration::MAX);
    for round in 0..3 {
        let (_, b) = timed_run(
            &mut g,
            2 * round + 1,
            &format!("{producer} | cat >/dev/null"),
        );
        let (got, t) = timed_run(&mut g, 2 * round + 2, &producer);
        assert_eq!(got, mib * 1024 * 1024);
        base = base.min(b);
        took = took.min(t);
    }
    let mib = mib as f64;
    println!(
        "{{\"metric\":\"stdout_throughput\",\"mib\":{mib},\"mib_per_s\":{:.1},\"baseline_pipe_mib_per_s\":{:.1}}}",
        mib / took.as_secs_f64(),
        mib / base.as_secs_f64()
    );
}
