"use strict";
// The ws-server's own metrics in Prometheus text format (the transport
// appends this text to its /metrics after its connection counters).

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

class Metrics {
  constructor(vmsRunning) {
    this.vmsRunning = vmsRunning;
    this.boots = 0;
    this.execs = 0;
    this.counts = new Array(BUCKETS.length).fill(0);
    this.sum = 0;
    this.done = 0;
    this.byStream = { stdout: 0, stderr: 0, stdin: 0 };
    this.sink = null;
    this.timer = null;
  }
  boot() {
    this.boots++;
    this.changed();
  }
  execStarted() {
    this.execs++;
    this.changed();
  }
  execDone(seconds) {
    this.done++;
    this.sum += seconds;
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]) this.counts[i]++;
    this.changed();
  }
  bytes(stream, n) {
    this.byStream[stream] += n;
    this.changed();
  }
  /** Publish at most every 250 ms. */
  changed() {
    if (this.timer || !this.sink) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.publish();
    }, 250);
    this.timer.unref?.();
  }
  publish() {
    if (this.sink) this.sink(this.text());
  }
  text() {
    const l = [];
    l.push("# HELP gondolin_remote_vms Guest VMs held by this server (running or not yet booted).");
    l.push("# TYPE gondolin_remote_vms gauge", `gondolin_remote_vms ${this.vmsRunning()}`);
    l.push("# HELP gondolin_remote_boots_total Guest VMs booted.");
    l.push("# TYPE gondolin_remote_boots_total counter", `gondolin_remote_boots_total ${this.boots}`);
    l.push("# HELP gondolin_remote_execs_total Execs started.");
    l.push("# TYPE gondolin_remote_execs_total counter", `gondolin_remote_execs_total ${this.execs}`);
    l.push("# HELP gondolin_remote_exec_seconds Exec duration, start to exit.");
    l.push("# TYPE gondolin_remote_exec_seconds histogram");
    BUCKETS.forEach((b, i) => l.push(`gondolin_remote_exec_seconds_bucket{le="${b}"} ${this.counts[i]}`));
    l.push(`gondolin_remote_exec_seconds_bucket{le="+Inf"} ${this.done}`);
    l.push(`gondolin_remote_exec_seconds_sum ${this.sum}`, `gondolin_remote_exec_seconds_count ${this.done}`);
    l.push("# HELP gondolin_remote_exec_bytes_total Exec bytes moved, by stream.");
    l.push("# TYPE gondolin_remote_exec_bytes_total counter");
    for (const [s, n] of Object.entries(this.byStream)) l.push(`gondolin_remote_exec_bytes_total{stream="${s}"} ${n}`);
    return l.join("\n") + "\n";
  }
}

module.exports = { Metrics };
