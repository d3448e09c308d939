// OCI images as a rootfs source (`gondolin build --from-oci`): a python3
// rootfs made here with mmdebstrap, wrapped by umoci into an OCI layout with
// two gzip layers (the second whites out a file of the first), pushed with
// skopeo to a registry started here (Debian's docker-registry). Built from the
// registry and from the layout directory; the image boots, runs python3, the
// whited-out file is absent, /etc/shadow keeps its group, a rebuild reuses it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { vmSkip, cli } from "./helpers.mjs";

const require = createRequire(import.meta.url);
const g = require("../js/index.cjs");

const have = (t) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0;
const isRoot = process.getuid && process.getuid() === 0;
const skip =
  vmSkip() ||
  (!isRoot && "making the OCI image needs root (mmdebstrap, umoci unpack)") ||
  (["mmdebstrap", "umoci", "skopeo", "docker-registry"].find((t) => !have(t)) &&
    "needs mmdebstrap, umoci, skopeo and docker-registry (apt install)");

let tmp;
let layout;
let registry;
let storeDir;
const saved = {};

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20, ...opts });
  assert.equal(r.status, 0, `${cmd} ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

function gondolin(args) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", maxBuffer: 64 << 20 });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRegistry() {
  const dataDir = path.join(tmp, "registry");
  fs.mkdirSync(dataDir, { recursive: true });
  const port = await freePort();
  const config = path.join(tmp, "registry.yml");
  fs.writeFileSync(
    config,
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${dataDir}\nhttp:\n  addr: 127.0.0.1:${port}\n`,
  );
  const proc = spawn("docker-registry", ["serve", config], { stdio: "ignore" });
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      if ((await fetch(`http://${host}/v2/`)).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error("registry did not start");
    await new Promise((r) => setTimeout(r, 100));
  }
  return { host, proc };
}

before(async () => {
  if (skip) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-ocirootfs-"));
  for (const k of ["GONDOLIN_IMAGE_STORE", "GONDOLIN_GUEST_DIR", "GONDOLIN_DEFAULT_IMAGE"]) {
    saved[k] = process.env[k];
    delete process.env[k];
  }
  storeDir = path.join(tmp, "store");
  process.env.GONDOLIN_IMAGE_STORE = storeDir;
  // A small python3 rootfs (what python:3.12-slim is, with Debian's python).
  const rootTar = process.env.GONDOLIN_TEST_OCI_ROOT_TAR || path.join(tmp, "root.tar");
  if (!fs.existsSync(rootTar)) {
    run("mmdebstrap", [
      "--mode=root",
      "--variant=apt",
      "--include=python3-minimal",
      "--format=tar",
      "bookworm",
      rootTar,
      "http://deb.debian.org/debian",
    ]);
  }
  // Layer 1: the tree; layer 2: /etc/issue removed (a whiteout) and a file added.
  layout = path.join(tmp, "layout");
  const bundle = path.join(tmp, "bundle");
  run("umoci", ["init", "--layout", layout]);
  run("umoci", ["new", "--image", `${layout}:slim`]);
  run("umoci", ["unpack", "--image", `${layout}:slim`, bundle]);
  run("tar", ["-xpf", rootTar, "-C", path.join(bundle, "rootfs"), "--numeric-owner"]);
  run("umoci", ["repack", "--image", `${layout}:slim`, bundle]);
  // A fresh unpack: repack diffs against the tree as it was unpacked.
  const bundle2 = path.join(tmp, "bundle2");
  run("umoci", ["unpack", "--image", `${layout}:slim`, bundle2]);
  fs.rmSync(path.join(bundle2, "rootfs", "etc", "issue"));
  fs.writeFileSync(path.join(bundle2, "rootfs", "etc", "layer2"), "two\n");
  run("umoci", ["repack", "--image", `${layout}:slim`, bundle2]);
  run("umoci", ["gc", "--layout", layout]);
  registry = await startRegistry();
  run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:slim`, `docker://${registry.host}/py:slim`]);
});

after(() => {
  if (registry) registry.proc.kill("SIGTERM");
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test("the umoci image has two layers, the second with a whiteout", { skip }, () => {
  const index = JSON.parse(fs.readFileSync(path.join(layout, "index.json"), "utf8"));
  const digest = index.manifests[0].digest.replace("sha256:", "");
  const m = JSON.parse(fs.readFileSync(path.join(layout, "blobs", "sha256", digest), "utf8"));
  assert.equal(m.layers.length, 2);
  const top = m.layers[1].digest.replace("sha256:", "");
  const names = run("tar", ["-tzf", path.join(layout, "blobs", "sha256", top)]);
  assert.match(names, /etc\/\.wh\.issue/);
});

let fromRegistry;

test("build --from-oci a registry reference boots python3, whiteout honoured, ownership kept", { skip }, async () => {
  const r = gondolin(["build", "--from-oci", `${registry.host}/py:slim`, "--no-boot-snapshot", "-q"]);
  assert.equal(r.status, 0, r.stderr);
  fromRegistry = r.stdout.trim();
  const manifest = JSON.parse(fs.readFileSync(path.join(fromRegistry, "manifest.json"), "utf8"));
  assert.equal(manifest.oci.reference, `${registry.host}/py:slim`);
  assert.match(manifest.oci.digest, /^sha256:[0-9a-f]{64}$/);
  assert.equal(manifest.debian, undefined, "no Debian release or packages");
  const vm = await g.VM.create({ sandbox: { imagePath: fromRegistry, netEnabled: false } });
  try {
    const res = await vm.exec(
      "python3 -c 'print(1)'; test -e /etc/issue && echo issue-present; cat /etc/layer2; stat -c %u:%g /etc/shadow /usr/bin/python3; cat /etc/hostname; ls -d /data /workspace /etc/gondolin",
    );
    assert.equal(res.exitCode, 0, res.stderr);
    assert.equal(res.stdout, "1\ntwo\n0:42\n0:0\ngondolin\n/data\n/etc/gondolin\n/workspace\n");
  } finally {
    await vm.close();
  }
});

test("build --from-oci a layout directory gives the same image; a rebuild reuses it", { skip }, () => {
  assert.ok(fromRegistry, "the registry build ran");
  let r = gondolin(["build", "--from-oci", `oci-layout:${layout}:slim`, "--no-boot-snapshot", "-q"]);
  assert.equal(r.status, 0, r.stderr);
  // Same manifest digest, same kernel base and guest binaries: same build id.
  assert.equal(r.stdout.trim(), fromRegistry);
  r = gondolin(["build", "--from-oci", layout, "--no-boot-snapshot"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /is already built/);
});

test("a tampered layer blob is refused", { skip }, () => {
  const copy = path.join(tmp, "tampered");
  run("cp", ["-a", layout, copy]);
  const index = JSON.parse(fs.readFileSync(path.join(copy, "index.json"), "utf8"));
  const m = JSON.parse(
    fs.readFileSync(path.join(copy, "blobs", "sha256", index.manifests[0].digest.replace("sha256:", "")), "utf8"),
  );
  const blob = path.join(copy, "blobs", "sha256", m.layers[1].digest.replace("sha256:", ""));
  fs.appendFileSync(blob, "x");
  const r = gondolin(["build", "--from-oci", copy, "--no-boot-snapshot"]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /blob sha256:[0-9a-f]+ has sha256:/);
});
