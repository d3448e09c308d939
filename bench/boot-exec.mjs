#!/usr/bin/env node
// Boot and exec benchmark. Prints one JSON object.
//   bareBoot:   QEMU + our kernel + init that prints and powers off (same
//               kernel, devices and accelerator as a real VM), median of N
//   createToFirstExec: VM.create() → first exec(["/bin/true"]) result, median of N cold
//               VMs (bootSnapshot: false: this compares a boot with a bare boot;
//               bench/snapshot.mjs measures VMs resumed from the boot template)
//   execRoundTrip: warm exec(["/bin/true"]) p50/p95 over M runs
//   inGuestSpawnTrueMs: the same /bin/true spawned by a shell loop inside the
//               guest (no host in the loop): the floor under the round trip
//   rss: host RSS of node and of QEMU after boot
// Usage: node bench/boot-exec.mjs [--runs 5] [--execs 200]
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { VM, ensureImage } from "@gondolin/native";
import { native } from "../js/native.cjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 5);
const EXECS = arg("execs", 200);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const round = (x, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
const rssMiB = (pid) => {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? round(Number(m[1]) / 1024, 1) : null;
};

/** Same kernel, devices and accelerator settings as a real VM; init powers off at once. */
async function bareBoot(image, info) {
  const argv = [
    "-nodefaults", "-no-reboot", "-nographic", "-no-user-config",
    "-machine", "q35", "-accel", info.accel, "-cpu", "max,-erms",
    "-m", "1G", "-smp", "2",
    "-kernel", image.kernel, "-initrd", image.initrd,
    "-append", `${image.cmdline} ${info.cmdlineExtra} gondolin.rootfs=ro gondolin.init=poweroff`,
    "-drive", `file=${image.rootfs},if=none,id=drive0,format=raw,readonly=on`,
    "-device", "virtio-blk-pci,drive=drive0",
    "-chardev", "stdio,id=console0,signal=off", "-serial", "chardev:console0",
    "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", "null,id=port0", "-device", "virtserialport,chardev=port0,name=gondolin.control,bus=vser0.0",
  ];
  const t0 = performance.now();
  const out = await new Promise((resolve, reject) => {
    const p = spawn(`qemu-system-${os.arch() === "x64" ? "x86_64" : "aarch64"}`, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    p.stdout.on("data", (d) => (text += d));
    p.stderr.on("data", (d) => (text += d));
    p.on("error", reject);
    p.on("exit", () => resolve(text));
  });
  const ms = performance.now() - t0;
  if (!out.includes("gondolin-init: bare boot")) throw new Error(`bare boot did not reach init:\n${out.slice(-2000)}`);
  return ms;
}

async function main() {
  const image = await ensureImage();
  const info = native.detectAccel(null);
  // Interleave the two measurements so machine drift hits both alike.
  const bare = [];
  const create = [];
  let warm;
  for (let i = 0; i < RUNS; i++) {
    bare.push(await bareBoot(image, info));
    const t0 = performance.now();
    const vm = await VM.create({ sandbox: { bootSnapshot: false } });
    const r = await vm.exec(["/bin/true"]);
    create.push(performance.now() - t0);
    if (r.exitCode !== 0) throw new Error("/bin/true failed");
    if (i === RUNS - 1) warm = vm;
    else await vm.close();
  }

  for (let i = 0; i < 10; i++) await warm.exec(["/bin/true"]);
  const rt = [];
  for (let i = 0; i < EXECS; i++) {
    const t0 = performance.now();
    await warm.exec(["/bin/true"]);
    rt.push(performance.now() - t0);
  }
  // The floor under the round trip: the same spawn done by a shell inside
  // the guest, with no host, QEMU or sandboxd in the loop.
  const loop = await warm.exec(["bash", "-c", "TIMEFORMAT=%R; time (for i in $(seq 200); do /bin/true; done)"]);
  const guestSpawnMs = (Number(loop.stderr.trim()) * 1000) / 200;
  const vmInfo = warm.info;
  const rss = { nodeMiB: rssMiB(process.pid), qemuMiB: rssMiB(vmInfo.qemuPid) };
  await warm.close();

  const bareMs = median(bare);
  const createMs = median(create);
  console.log(
    JSON.stringify(
      {
        accel: vmInfo.accel,
        cmdlineExtra: info.cmdlineExtra,
        host: { cpus: os.cpus().length, kernel: os.release() },
        imageBuildId: image.buildId,
        bareBoot: { runs: bare.map((x) => round(x, 0)), medianMs: round(bareMs, 0) },
        createToFirstExec: { runs: create.map((x) => round(x, 0)), medianMs: round(createMs, 0) },
        ratioCreateToBare: round(createMs / bareMs, 3),
        execRoundTrip: { count: EXECS, p50Ms: round(pct(rt, 50)), p95Ms: round(pct(rt, 95)), minMs: round(Math.min(...rt)) },
        inGuestSpawnTrueMs: round(guestSpawnMs),
        overheadOverInGuestSpawnMs: round(pct(rt, 50) - guestSpawnMs),
        rss,
        targets: { ratioCreateToBare: 1.3, execRoundTripP50Ms: 5 },
      },
      null,
      2,
    ),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
