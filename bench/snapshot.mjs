#!/usr/bin/env node
// Snapshot benchmark (issue 15). Prints one JSON object; the baseline is
// measured in the same run.
//   coldCreateToFirstExecMs:     VM.create() → first exec(["/bin/true"]) with
//                                 bootSnapshot: false, median of N
//   templateCreateToFirstExecMs: the same resumed from the boot template
//                                 (built first, not timed), median of N
//   memoryCheckpoint:            vm.checkpoint(path, { memory: true }) time
//                                 and the file's size (apparent and on disk)
//   fleet:                       8 VMs at once from one template vs 8 cold:
//                                 time until all 8 answered an exec, and per
//                                 VM the host RSS and PSS of its QEMU
//                                 (/proc/<pid>/status VmRSS,
//                                 smaps_rollup Pss) plus its share of node's
// Usage: node bench/snapshot.mjs [--runs 5] [--fleet 8]
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { VM, ensureImage } from "@gondolin/native";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 5);
const FLEET = arg("fleet", 8);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
};
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const kib = (file, re) => {
  const m = re.exec(fs.readFileSync(file, "utf8"));
  return m ? Number(m[1]) : 0;
};
const rssMiB = (pid) => kib(`/proc/${pid}/status`, /VmRSS:\s+(\d+) kB/) / 1024;
const pssMiB = (pid) => kib(`/proc/${pid}/smaps_rollup`, /^Pss:\s+(\d+) kB/m) / 1024;

// A private template directory, so (b) measures resumes of a template this
// run built, not one left over from another version.
const work = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-bench-snap-"));
process.env.GONDOLIN_TEMPLATE_DIR = path.join(work, "templates");
delete process.env.GONDOLIN_BOOT_SNAPSHOT;

async function createToFirstExec(options) {
  const t0 = performance.now();
  const vm = await VM.create(options);
  const r = await vm.exec(["/bin/true"]);
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`exec failed: ${r.stderr}`);
  return { vm, ms };
}

/** Start `n` VMs at once; time until every one answered an exec, then memory per VM. */
async function fleet(n, options) {
  const nodeBefore = rssMiB(process.pid);
  const t0 = performance.now();
  const vms = await Promise.all(
    Array.from({ length: n }, async () => {
      const vm = await VM.create(options);
      await vm.exec(["/bin/true"]);
      return vm;
    }),
  );
  const allReadyMs = performance.now() - t0;
  const pids = vms.map((vm) => vm.getHostPid());
  const nodeShare = Math.max(0, rssMiB(process.pid) - nodeBefore) / n;
  const qemuRss = pids.map(rssMiB);
  const qemuPss = pids.map(pssMiB);
  const startedFrom = [...new Set(vms.map((vm) => vm.info.startedFrom))];
  await Promise.all(vms.map((vm) => vm.close()));
  return {
    allReadyMs: Math.round(allReadyMs),
    startedFrom,
    perVm: {
      qemuRssMiB: round(median(qemuRss)),
      qemuPssMiB: round(median(qemuPss)),
      nodeShareMiB: round(nodeShare),
      rssMiB: round(median(qemuRss) + nodeShare),
      pssMiB: round(median(qemuPss) + nodeShare),
    },
  };
}

async function main() {
  const image = await ensureImage();
  const cold = { sandbox: { bootSnapshot: false } };

  // The template is built by the first VM with these settings (a cold
  // boot, then the save): reported, not part of (b).
  const tb = performance.now();
  const builder = await VM.create();
  await builder.exec(["/bin/true"]);
  const templateBuild = { createToFirstExecMs: Math.round(performance.now() - tb), startedFrom: builder.info.startedFrom };
  const accel = builder.info.accel;
  await builder.close();

  // (a) and (b), interleaved so machine drift hits both alike.
  const coldMs = [];
  const templMs = [];
  const from = new Set();
  for (let i = 0; i < RUNS; i++) {
    const c = await createToFirstExec(cold);
    coldMs.push(c.ms);
    await c.vm.close();
    const t = await createToFirstExec({});
    templMs.push(t.ms);
    from.add(t.vm.info.startedFrom);
    await t.vm.close();
  }

  // (c) a memory checkpoint of a running VM.
  const vm = await VM.create(cold);
  await vm.exec(["/bin/true"]);
  const file = path.join(work, "mem.qcow2");
  const t0 = performance.now();
  const cp = await vm.checkpoint(file, { memory: true });
  const checkpointMs = performance.now() - t0;
  const st = fs.statSync(file);
  const data = cp.toJSON();
  cp.delete();

  // (d) 8 at once, from the template and cold.
  const fromTemplate = await fleet(FLEET, {});
  const coldFleet = await fleet(FLEET, cold);

  const a = median(coldMs);
  const b = median(templMs);
  const out = {
    bench: "snapshot",
    host: { cpus: os.cpus().length, accel },
    image: image.buildId,
    runs: RUNS,
    templateBuild,
    coldCreateToFirstExecMs: Math.round(a),
    templateCreateToFirstExecMs: Math.round(b),
    templateStartedFrom: [...from],
    templateSpeedup: round(a / b, 2),
    memoryCheckpoint: {
      ms: Math.round(checkpointMs),
      fileBytes: st.size,
      fileBytesOnDisk: st.blocks * 512,
      stateBytes: data.memory ? data.memory.stateLength : null,
    },
    fleet: {
      vms: FLEET,
      fromTemplate,
      cold: coldFleet,
      rssRatio: round(fromTemplate.perVm.rssMiB / coldFleet.perVm.rssMiB, 2),
      pssRatio: round(fromTemplate.perVm.pssMiB / coldFleet.perVm.pssMiB, 2),
    },
    targets: {
      templateAtMost300ms: b <= 300,
      templateAtMostFifthOfCold: b <= a / 5,
      fleetReadyWithin3s: fromTemplate.allReadyMs <= 3000,
      fleetRssAtMost60Percent: fromTemplate.perVm.rssMiB <= 0.6 * coldFleet.perVm.rssMiB,
    },
  };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => fs.rmSync(work, { recursive: true, force: true }));
