// Text-patching soak: a 2-vCPU guest toggles the scheduler tracepoints (each
// toggle rewrites kernel code on the running CPUs: int3, sync IPI, new bytes)
// while both vCPUs are busy, for ROUNDS toggles. Under QEMU 7.2's
// multi-threaded TCG this livelocks the guest within minutes — both vCPUs
// loop through the int3 handler (the stall behind issue 12's 120 s boot:
// a boot patches static keys the same way). Fails if no progress is seen for
// STALL seconds. Prints a JSON summary.
//
//   node __test__/soak/textpoke-soak.mjs [--rounds 50] [--accel tcg,thread=multi] [--stall-seconds 300]
//
// With the default accelerator (TCG: thread=single) each toggle takes ~7 s on
// a loaded 2-core machine, so 50 rounds run ~6 min. To see the livelock:
// --accel tcg,thread=multi,tb-size=128 --rounds 3000 --stall-seconds 120.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const { VM } = require(path.join(root, "js", "index.cjs"));

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const rounds = Number(arg("rounds", 50));
const accel = arg("accel", undefined);
const stallMs = Number(arg("stall-seconds", 300)) * 1000;

const vm = await VM.create({ cpus: 2, sandbox: accel ? { accel } : {} });
const t0 = Date.now();
await vm.exec("true");
const bootMs = Date.now() - t0;
const script = `
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
cd /sys/kernel/tracing || exit 3
( while :; do :; done ) & B1=$!
( while :; do cat /proc/self/stat >/dev/null; done ) & B2=$!
i=0; while [ $i -lt ${rounds} ]; do
  echo 1 > events/sched/enable; echo 0 > events/sched/enable
  i=$((i+1)); [ $((i % 25)) = 0 ] && echo $i
done
kill $B1 $B2`;
const t1 = Date.now();
let done = 0;
let lastAt = Date.now();
const ac = new AbortController();
const proc = vm.exec(["sh", "-c", script], { stdout: "pipe", signal: ac.signal });
proc.stdout.on("data", (d) => {
  for (const l of String(d).split("\n")) {
    if (Number(l) > 0) {
      [done, lastAt] = [Number(l), Date.now()];
      process.stderr.write(`[textpoke] ${done}/${rounds} after ${Math.round((lastAt - t1) / 1000)} s\n`);
    }
  }
});
const watch = setInterval(() => Date.now() - lastAt > stallMs && ac.abort(), 1000);
const result = await proc.then(
  (r) => ({ exitCode: r.exitCode }),
  (e) => ({ error: e.code ?? String(e) }),
);
clearInterval(watch);
const stalled = done < rounds;
const summary = {
  accel: vm.info?.accel ?? accel ?? "default",
  bootMs,
  rounds: done,
  wanted: rounds,
  seconds: Math.round((Date.now() - t1) / 1000),
  stalled,
  ...result,
  ok: !stalled && result.exitCode === 0,
};
await vm.close().catch(() => {});
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
process.exit(summary.ok ? 0 : 1);
