#!/usr/bin/env node
// Throughput benchmark: exec output streaming and vm.fs transfers, each
// against an in-guest baseline measured in the same run. Prints JSON.
//   execStream: `dd if=/dev/zero bs=64k count=3200` (200 MiB) captured on the
//               host vs the same dd writing to /dev/null inside the guest
//   vmFs:       writeFile + readFile of 50 MiB vs `cat` of that file from
//               guest tmpfs to /dev/null
import { Writable } from "node:stream";
import crypto from "node:crypto";
import { VM } from "@gondolin/native";

const UPSTREAM = { vmFsMiBps: 17.5, execCaptureMiBps: 3.05, execInGuestMiBps: 270 };
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const mibps = (mib, ms) => mib / (ms / 1000);

// dd prints "... copied, 0.91 s, 229 MB/s": take bytes and seconds.
function ddRate(stderr) {
  const m = /(\d+) bytes .* copied, ([\d.]+) s/.exec(stderr);
  if (!m) throw new Error(`unexpected dd output: ${stderr}`);
  return Number(m[1]) / 1048576 / Number(m[2]);
}

async function main() {
  const vm = await VM.create();
  await vm.start();
  try {
    const guestDd = await vm.exec("dd if=/dev/zero of=/dev/null bs=64k count=3200");
    let bytes = 0;
    const sink = new Writable({
      write(c, _e, cb) {
        bytes += c.length;
        cb();
      },
    });
    let t0 = performance.now();
    await vm.exec("dd if=/dev/zero bs=64k count=3200 2>/dev/null", { stdout: sink });
    const captureMs = performance.now() - t0;
    if (bytes !== 200 * 1024 * 1024) throw new Error(`captured ${bytes} bytes`);
    const execStream = {
      hostCaptureMiBps: round(mibps(200, captureMs)),
      inGuestMiBps: round(ddRate(guestDd.stderr)),
    };
    execStream.ratio = round(execStream.hostCaptureMiBps / execStream.inGuestMiBps, 3);

    const data = crypto.randomBytes(50 * 1024 * 1024);
    t0 = performance.now();
    await vm.fs.writeFile("/tmp/bench.bin", data);
    const writeMs = performance.now() - t0;
    t0 = performance.now();
    const back = await vm.fs.readFile("/tmp/bench.bin");
    const readMs = performance.now() - t0;
    if (!back.equals(data)) throw new Error("readFile returned different bytes");
    const cat = await vm.exec("dd if=/tmp/bench.bin of=/dev/null bs=64k");
    const vmFs = {
      writeFileMiBps: round(mibps(50, writeMs)),
      readFileMiBps: round(mibps(50, readMs)),
      inGuestCatMiBps: round(ddRate(cat.stderr)),
    };
    vmFs.vsUpstream = {
      write: round(vmFs.writeFileMiBps / UPSTREAM.vmFsMiBps, 2),
      read: round(vmFs.readFileMiBps / UPSTREAM.vmFsMiBps, 2),
    };
    console.log(
      JSON.stringify({ accel: vm.info.accel, execStream, vmFs, upstreamReference: UPSTREAM, targets: { execStreamRatio: 0.3, vmFsVsUpstream: 5 } }, null, 2),
    );
  } finally {
    await vm.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
