#!/usr/bin/env node
// Remote against local on this machine (one run, JSON): a `gondolin
// ws-server` child on 127.0.0.1 and the same measurements on a local VM.
//   execP50Ms:     `/bin/true` (no shell) round trip, median of N (after a warm-up)
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
const N = Number(process.env.BENCH_EXEC_N || 100);
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

async function measure(options) {
  let t0 = performance.now();
  const vm = await VM.create(options);
  try {
    await vm.exec(["/bin/true"]);
    const bootToExecMs = round(performance.now() - t0);
    for (let i = 0; i < 10; i++) await vm.exec(["/bin/true"]);
    const times = [];
    for (let i = 0; i < N; i++) {
      t0 = performance.now();
      await vm.exec(["/bin/true"]);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const execP50Ms = round(times[Math.floor(times.length / 2)], 2);

    let bytes = 0;
    const sink = new Writable({
      write(c, _e, cb) {
        bytes += c.length;
        cb();
      },
    });
    t0 = performance.now();
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
    return { bootToExecMs, execP50Ms, captureMiBps, vmFs: { writeMiBps, readMiBps } };
  } finally {
    await vm.close();
  }
}

async function main() {
  const server = await startServer();
  try {
    const local = await measure({ remote: false });
    const remote = await measure({ remote: { url: server.url } });
    const ratio = (a, b) => round(a / b, 2);
    const result = {
      transport: (await import("../js/remote-transport.cjs")).default.hasNative() ? "websocket" : "dev-tcp",
      local,
      remote,
      execP50DeltaMs: round(remote.execP50Ms - local.execP50Ms, 2),
      throughputRatio: {
        capture: ratio(remote.captureMiBps, local.captureMiBps),
        fsWrite: ratio(remote.vmFs.writeMiBps, local.vmFs.writeMiBps),
        fsRead: ratio(remote.vmFs.readMiBps, local.vmFs.readMiBps),
      },
      targets: { execP50DeltaMs: 1, throughputRatio: 0.7 },
    };
    result.met = {
      execP50: result.execP50DeltaMs <= 1,
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
