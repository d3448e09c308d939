#!/usr/bin/env node
// Image registry benchmark (issue 17 item 2). Prints one JSON object.
//   pushMs:        pushImage of the default image to a fresh local registry
//                  (Debian's docker-registry on 127.0.0.1): zstd + upload
//   pullMs:        pullImage of it into an empty store: download, sha256,
//                  decompress (sparse) and rename into place; median of N
//   pullMiBps:     the image's apparent bytes / pull time
//   catMiBps:      the same files read with `cat > /dev/null` from the page
//                  cache (warm), median of N
//   coldCatMiBps:  the same after `drop_caches` (root only): the local disk
//                  read rate the target names; pulls then also
//                  start with the caches dropped (the registry's blobs on disk)
//   pullVsCat / pullVsColdCat: pullMiBps over each (target ≥ 0.5)
//   imageBytes:    apparent size of the image files; onDiskBytes: blocks
//                  used (the rootfs is sparse); registryBytes: the blobs
//                  a pull transfers (zstd level 1)
// Usage: node bench/image.mjs [--runs 3]
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const g = require("../js/index.cjs");
const oci = require("../js/image-oci.cjs");

const runsArg = process.argv.indexOf("--runs");
const RUNS = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 3;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const MiB = 1 << 20;

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const image = await g.ensureImage();
const files = ["manifest.json", "vmlinuz", "initrd.img", "rootfs.ext4"].map((f) => path.join(image.dir, f));
const imageBytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
const onDiskBytes = files.reduce((n, f) => n + fs.statSync(f).blocks * 512, 0);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-bench-image-"));
const port = await freePort();
const data = path.join(tmp, "registry");
fs.writeFileSync(
  path.join(tmp, "config.yml"),
  `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${data}\nhttp:\n  addr: 127.0.0.1:${port}\n`,
);
const registry = spawn("/usr/bin/docker-registry", ["serve", path.join(tmp, "config.yml")], { stdio: "ignore" });
const saved = process.env.GONDOLIN_IMAGE_STORE;
try {
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/v2/`)).ok) break;
    } catch {
      // starting
    }
    if (i > 200) throw new Error("registry did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  const ref = `127.0.0.1:${port}/gondolin/debian-base:${image.buildId}`;
  let t = performance.now();
  await g.pushImage(image.dir, ref);
  const pushMs = performance.now() - t;
  const registryBytes = Number(
    spawnSync("du", ["-sb", path.join(data, "docker", "registry", "v2", "blobs")], { encoding: "utf8" }).stdout.split(/\s/)[0],
  );

  // Root can drop the page cache: then the pull and the cold cat both read the disk.
  const canDrop = process.getuid() === 0;
  const dropCaches = () => canDrop && spawnSync("sh", ["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"]);
  const catOnce = () => {
    const t0 = performance.now();
    const r = spawnSync("sh", ["-c", 'cat "$@" > /dev/null', "cat", ...files]);
    if (r.status !== 0) throw new Error("cat failed");
    return performance.now() - t0;
  };
  const coldCats = [];
  const pulls = [];
  for (let i = 0; i < RUNS; i++) {
    process.env.GONDOLIN_IMAGE_STORE = fs.mkdtempSync(path.join(tmp, "store-"));
    dropCaches();
    t = performance.now();
    await oci.pullImage(ref, { tag: false });
    pulls.push(performance.now() - t);
    fs.rmSync(process.env.GONDOLIN_IMAGE_STORE, { recursive: true, force: true });
  }
  const cats = [];
  for (let i = 0; i < RUNS; i++) {
    if (canDrop) {
      dropCaches();
      coldCats.push(catOnce());
    }
    cats.push(catOnce());
  }
  const pullMs = median(pulls);
  const catMs = median(cats);
  const pullMiBps = imageBytes / MiB / (pullMs / 1000);
  const catMiBps = imageBytes / MiB / (catMs / 1000);
  const coldCatMiBps = canDrop ? imageBytes / MiB / (median(coldCats) / 1000) : null;
  process.stdout.write(
    `${JSON.stringify(
      {
        bench: "image",
        buildId: image.buildId,
        runs: RUNS,
        imageBytes,
        onDiskBytes,
        registryBytes,
        pushMs: Math.round(pushMs),
        pullMs: Math.round(pullMs),
        pullRunsMs: pulls.map(Math.round),
        catMs: Math.round(catMs),
        pullMiBps: round(pullMiBps),
        catMiBps: round(catMiBps),
        pullVsCat: round(pullMiBps / catMiBps, 2),
        coldCatMiBps: coldCatMiBps && round(coldCatMiBps),
        pullVsColdCat: coldCatMiBps && round(pullMiBps / coldCatMiBps, 2),
        target: 0.5,
        cpus: os.cpus().length,
      },
      null,
      2,
    )}\n`,
  );
} finally {
  if (saved === undefined) delete process.env.GONDOLIN_IMAGE_STORE;
  else process.env.GONDOLIN_IMAGE_STORE = saved;
  registry.kill("SIGTERM");
  fs.rmSync(tmp, { recursive: true, force: true });
}
