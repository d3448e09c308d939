// Boot soak: create → exec → close in a loop, QEMU killed with SIGKILL at
// random points (during boot, mid-exec, after the exec), N loops at once.
// Fails on any boot that times out, any error a kill does not explain, and
// any growth of the process's fds or threads. Prints a JSON summary.
//
//   node __test__/soak/boot-soak.mjs [--cycles 200] [--concurrency 2] [--kill-ratio 0.5] [--cpus N] [--memory 1G]
//                                  [--max-seconds S]  (stop starting cycles after S seconds)
//
// Exported as runSoak() for fd-soak.mjs and the short version in
// __test__/exec-faults.test.mjs.
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const { VM } = require(path.join(root, "js", "index.cjs"));
const { ensureImage } = require(path.join(root, "js", "image.cjs"));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const fdCount = () => fs.readdirSync("/proc/self/fd").length;
export const threadCount = () => fs.readdirSync("/proc/self/task").length;

/** Our child QEMU whose command line carries `marker` (the VM has no pid to ask yet while booting). */
export function qemuPidByMarker(marker) {
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid !== process.pid) continue;
      if (fs.readFileSync(`/proc/${name}/cmdline`, "utf8").includes(marker)) return Number(name);
    } catch {}
  }
  return null;
}

function kill(pid) {
  if (!pid) return false;
  try {
    process.kill(pid, "SIGKILL");
    return true;
  } catch {
    return false; // already gone
  }
}

const KINDS = ["boot", "exec", "after"];
// The codes a SIGKILL of QEMU may legitimately produce, per kill point.
const KILL_CODES = new Set(["vm_boot_failed", "vm_exited", "connection_closed"]);

/**
 * One create → exec → close cycle. `kill` is null or one of KINDS.
 * Returns { bootMs, killed, error } (error: a problem a kill does not explain).
 */
export async function cycle(n, kill_, cmdline, startTimeoutMs, vmOptions = {}) {
  const marker = `gondolin.soak=${process.pid}-${n}`;
  const vm = await VM.create({
    ...vmOptions,
    startTimeoutMs,
    // Boots are under test (and each marker would be a template of its own).
    sandbox: { append: `${cmdline} ${marker}`, bootSnapshot: false },
  });
  let killed = false;
  let bootMs = null;
  let report = null;
  const t0 = Date.now();
  try {
    if (kill_ === "boot") {
      // Somewhere in a 0.1–3 s boot: firmware, kernel, init or sandboxd.
      const at = 100 + Math.random() * 2900;
      const timer = (async () => {
        await sleep(at);
        killed = kill(qemuPidByMarker(marker));
      })();
      const started = await vm.start().then(() => null, (e) => e);
      await timer;
      if (started) {
        if (started.code === "vm_start_timeout") return { bootMs, report, killed, error: started };
        return { bootMs, report, killed, error: killed && KILL_CODES.has(started.code) ? null : started };
      }
      bootMs = Date.now() - t0;
      report = vm.info.slowBootReport ?? null;
      // The kill came after the boot: the exec sees it instead.
      const r = await vm.exec("echo ok").then((x) => x, (e) => e);
      if (r instanceof Error) return { bootMs, report, killed, error: killed && KILL_CODES.has(r.code) ? null : r };
      return { bootMs, report, killed, error: r.stdout === "ok\n" ? null : new Error(`exec said ${JSON.stringify(r.stdout)}`) };
    }
    const started = await vm.start().then(() => null, (e) => e);
    if (started) return { bootMs, report, killed, error: started };
    bootMs = Date.now() - t0;
    const pid = vm.info.qemuPid;
    report = vm.info.slowBootReport ?? null;
    if (kill_ === "exec") {
      const running = vm.exec("sleep 30");
      await sleep(Math.random() * 500);
      killed = kill(pid);
      const e = await running.then(() => new Error("sleep 30 finished although QEMU was killed"), (err) => err);
      return { bootMs, report, killed, error: KILL_CODES.has(e.code) ? null : e };
    }
    const r = await vm.exec("echo ok").then((x) => x, (e) => e);
    if (r instanceof Error) return { bootMs, report, killed, error: r };
    if (r.stdout !== "ok\n") return { bootMs, report, killed, error: new Error(`exec said ${JSON.stringify(r.stdout)}`) };
    if (kill_ === "after") killed = kill(pid);
    return { bootMs, report, killed, error: null };
  } finally {
    await vm.close();
  }
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Wait (bounded) for fds/threads to come back to `base` (tokio's idle threads linger ~10 s). */
async function settle(base, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const now = { fds: fdCount(), threads: threadCount() };
    if ((now.fds <= base.fds && now.threads <= base.threads) || Date.now() > end) return now;
    await sleep(250);
  }
}

/**
 * Run the soak; resolves to a summary object (`ok` false on any failure).
 * killRatio: fraction of cycles in which QEMU is killed (kind chosen at
 * random); `plan(n)`, if given, picks cycle n's kill (null or one of
 * "boot" | "exec" | "after") instead. vmOptions: extra VM.create options
 * (default: the VM defaults, 2 vCPUs and 1 GiB, as users boot them).
 */
export async function runSoak({
  cycles = 200,
  concurrency = 2,
  killRatio = 0.5,
  plan = null,
  startTimeoutMs = 120000,
  vmOptions = {},
  maxSeconds = Infinity,
  log = () => {},
} = {}) {
  const pick = plan || (() => (Math.random() < killRatio ? KINDS[Math.floor(Math.random() * KINDS.length)] : null));
  const image = await ensureImage();
  const cmdline = image.cmdline;
  // Warm-up: the first VM creates lazily-made things (libuv pool, tokio workers).
  await cycle(-1, null, cmdline, startTimeoutMs, vmOptions);
  await sleep(500);
  const base = { fds: fdCount(), threads: threadCount() };
  const t0 = Date.now();
  const stopAt = t0 + maxSeconds * 1000;
  const boots = [];
  const failures = [];
  const slow = [];
  const kills = { boot: 0, exec: 0, after: 0, missed: 0 };
  let next = 0;
  let done = 0;
  let maxFds = base.fds;
  const worker = async () => {
    while (next < cycles && Date.now() < stopAt) {
      const n = next++;
      const kind = pick(n);
      let res;
      try {
        res = await cycle(n, kind, cmdline, startTimeoutMs, vmOptions);
      } catch (e) {
        res = { bootMs: null, killed: false, error: e };
      }
      if (kind) kills[res.killed ? kind : "missed"]++;
      if (res.bootMs != null) boots.push(res.bootMs);
      if (res.bootMs != null && res.bootMs > 30000) slow.push({ cycle: n, bootMs: res.bootMs, report: res.report });
      if (res.error) {
        failures.push({ cycle: n, kill: kind, code: res.error.code, message: String(res.error.message).slice(0, 4000) });
        log(`cycle ${n} (${kind || "no kill"}) FAILED: ${res.error.code} ${res.error.message}`);
      }
      maxFds = Math.max(maxFds, fdCount());
      done++;
      if (done % 10 === 0) log(`${done}/${cycles} cycles, ${failures.length} failures, fds ${fdCount() - base.fds >= 0 ? "+" : ""}${fdCount() - base.fds}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const end = await settle(base);
  const sorted = boots.slice().sort((a, b) => a - b);
  const summary = {
    cycles: done,
    concurrency,
    seconds: Math.round((Date.now() - t0) / 1000),
    kills,
    boots: sorted.length,
    bootMs: { p50: pct(sorted, 50), p95: pct(sorted, 95), max: sorted[sorted.length - 1] ?? null },
    vmOptions,
    slowBoots: slow,
    failures,
    fds: { before: base.fds, after: end.fds, maxDuring: maxFds },
    threads: { before: base.threads, after: end.threads },
  };
  summary.ok = failures.length === 0 && end.fds <= base.fds && end.threads <= base.threads;
  return summary;
}

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const summary = await runSoak({
    cycles: arg("cycles", 200),
    concurrency: arg("concurrency", 2),
    killRatio: arg("kill-ratio", 0.5),
    maxSeconds: arg("max-seconds", Infinity),
    vmOptions: {
      ...(process.argv.includes("--cpus") ? { cpus: arg("cpus") } : {}),
      ...(process.argv.includes("--memory") ? { memory: process.argv[process.argv.indexOf("--memory") + 1] } : {}),
    },
    log: (m) => process.stderr.write(`[boot-soak] ${m}\n`),
  });
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  process.exit(summary.ok ? 0 : 1);
}
