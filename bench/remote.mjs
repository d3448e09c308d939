#!/usr/bin/env node
// Remote against local on this machine (one run, JSON): a `gondolin
// ws-server` child on 127.0.0.1 and the same measurements on a local VM.
//   execP50Ms:     `/bin/true` (no shell) round trip, median of N (after a warm-up)
//   execPairedDeltaP50Ms: median over the N interleaved pairs of remote − local
//                  (what the target is checked on: robust to load drifting
//                  between runs; execP50DeltaMs, the difference of the p50s, is
//                  printed too)
//   capture:       200 MiB of stdout (dd) captured by the host
//   vmFs:          50 MiB writeFile + readFile
//   bootToExecMs:  VM.create → first exec done (boot template as configured)
// Targets (issue 18): remote exec p50 ≤ local + 1 ms; throughput ≥ 70% of local.
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import path from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { VM } from "@gondolin/native";

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "js", "cli.cjs");
const N = Number(process.env.BENCH_EXEC_N || 300);
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const mibps = (mib, ms) => round(mib / (ms / 1000));

async function startServer() {
  const env = { ...process.env };
  delete env.GONDOLIN_REMOTE;
  const child = spawn(process.execPath, [cli, "ws-server", "--port", "0", "--insecure-no-auth"], { env, stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once("exit", (c) => reject(new Error(`ws-server exited ${c}`)));
  });
  return { child, url };
}

/** Boot → first exec done. */
async function boot(options) {
  const t0 = performance.now();
  const vm = await VM.create(options);
  await vm.exec(["/bin/true"]);
  return { vm, bootToExecMs: round(performance.now() - t0) };
}

/**
 * Exec round trips, local and remote interleaved (the same machine load for
 * both): p50 of each, and the median of the per-pair differences (remote i
 * minus local i), which drifting machine load moves far less than the
 * difference of the two p50s.
 */
async function execP50(a, b) {
  for (let i = 0; i < 10; i++) await Promise.all([a.exec(["/bin/true"]), b.exec(["/bin/true"])]);
  const ta = [];
  const tb = [];
  for (let i = 0; i < N; i++) {
    for (const [vm, times] of [[a, ta], [b, tb]]) {
      const t0 = performance.now();
      await vm.exec(["/bin/true"]);
      times.push(performance.now() - t0);
    }
  }
  const p50 = (t) => round([...t].sort((x, y) => x - y)[Math.floor(t.length / 2)], 2);
  return [p50(ta), p50(tb), p50(tb.map((t, i) => t - ta[i]))];
}

async function throughput(vm) {
  let bytes = 0;
  const sink = new Writable({
    write(c, _e, cb) {
      bytes += c.length;
      cb();
    },
  });
  let t0 = performance.now();
  await vm.exec("dd if=/dev/zero bs=64k count=3200 2>/dev/null", { stdout: sink });
  const captureMiBps = mibps(200, performance.now() - t0);
  if (bytes !== 200 * 1024 * 1024) throw new Error(`captured ${bytes} bytes`);
  const data = crypto.randomBytes(50 * 1024 * 1024);
  t0 = performance.now();
  await vm.fs.writeFile("/tmp/bench.bin", data);
  const writeMiBps = mibps(50, performance.now() - t0);
  t0 = performance.now();
  const back = await vm.fs.readFile("/tmp/bench.bin");
  const readMiBps = mibps(50, performance.now() - t0);
  if (!back.equals(data)) throw new Error("readFile returned different bytes");
  return { captureMiBps, vmFs: { writeMiBps, readMiBps } };
}

async function main() {
  const server = await startServer();
  try {
    const l = await boot({ remote: false });
    const r = await boot({ remote: { url: server.url } });
    try {
      var [lp, rp, pairedDelta] = await execP50(l.vm, r.vm);
      var local = { bootToExecMs: l.bootToExecMs, execP50Ms: lp, ...(await throughput(l.vm)) };
      var remote = { bootToExecMs: r.bootToExecMs, execP50Ms: rp, ...(await throughput(r.vm)) };
    } finally {
      await Promise.all([l.vm.close(), r.vm.close()]);
    }
    const ratio = (a, b) => round(a / b, 2);
    const result = {
      transport: "websocket",
      local,
      remote,
      execP50DeltaMs: round(remote.execP50Ms - local.execP50Ms, 2),
      execPairedDeltaP50Ms: pairedDelta,
      throughputRatio: {
        capture: ratio(remote.captureMiBps, local.captureMiBps),
        fsWrite: ratio(remote.vmFs.writeMiBps, local.vmFs.writeMiBps),
        fsRead: ratio(remote.vmFs.readMiBps, local.vmFs.readMiBps),
      },
      targets: { execP50DeltaMs: 1, throughputRatio: 0.7 },
    };
    result.met = {
      execP50: result.execPairedDeltaP50Ms <= 1,
      throughput: Object.values(result.throughputRatio).every((r) => r >= 0.7),
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    server.child.kill("SIGTERM");
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
