// The local image store's names: selectors, refs, import, tag, rm, the CLI,
// and a VM booted from a ref. Runs against a temporary store holding an
// import (hard links) of the image this checkout uses.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { vmSkip, cli } from "./helpers.mjs";

const require = createRequire(import.meta.url);
const g = require("../js/index.cjs");
const skip = vmSkip();

let storeDir;
let image; // the checkout's image, outside the temp store
const saved = {};

before(async () => {
  if (skip) return;
  image = await g.ensureImage();
  storeDir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-store-"));
  for (const k of ["GONDOLIN_IMAGE_STORE", "GONDOLIN_DEFAULT_IMAGE", "GONDOLIN_GUEST_DIR"]) {
    saved[k] = process.env[k];
    delete process.env[k];
  }
  process.env.GONDOLIN_IMAGE_STORE = storeDir;
});

after(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  if (storeDir) fs.rmSync(storeDir, { recursive: true, force: true });
});

const code = (c, re) => (err) => err.code === c && (!re || re.test(err.message));

function gondolin(...args) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", env: process.env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("malformed selectors, refs and build ids are refused before any path is built", { skip }, () => {
  assert.throws(() => g.getImageObjectDirectory("../etc"), code("invalid_image", /^invalid image build id: \.\.\/etc$/));
  assert.throws(() => g.getImageObjectDirectory("A".repeat(32)), code("invalid_image"));
  for (const bad of ["a//b", "a/./b:x", "x:", "-x", "x:t!", "a/../b"]) {
    assert.throws(() => g.resolveImageSelector(bad), code("invalid_option", /invalid image reference/), bad);
  }
  assert.throws(() => g.resolveImageSelector("x", "arm64"), code("invalid_option", /invalid image arch: arm64/));
  assert.throws(() => g.resolveImageSelector("nothing-here"), code("missing_asset", /^image ref not found: nothing-here:latest/));
  assert.throws(() => g.resolveImageSelector("0".repeat(32)), code("missing_asset", /^image build not found/));
});

test("import copies an image in once, atomically, under its build id", { skip }, () => {
  const first = g.importImageFromDirectory(image.dir);
  assert.equal(first.created, true);
  assert.equal(first.buildId, image.buildId);
  assert.equal(first.assetDir, path.join(storeDir, image.buildId));
  assert.ok(fs.existsSync(path.join(first.assetDir, "manifest.json")));
  assert.equal(g.importImageFromDirectory(image.dir).created, false);
  assert.deepEqual(
    fs.readdirSync(storeDir).filter((n) => n.startsWith(".")),
    [],
    "no temp directory left behind",
  );
  const notImage = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-notimage-"));
  try {
    assert.throws(() => g.importImageFromDirectory(notImage), /manifest\.json/);
  } finally {
    fs.rmSync(notImage, { recursive: true });
  }
});

test("tag, resolve in upstream's order, list sorted, arch fallback", { skip }, () => {
  g.importImageFromDirectory(image.dir);
  const byId = g.tagImage(image.buildId, "zeta/tools:v2");
  assert.deepEqual(byId.targets, { x86_64: image.buildId });
  g.tagImage(image.dir, "alpha"); // a directory selector
  const refs = g.listImageRefs().map((r) => r.reference);
  assert.deepEqual(refs, [...refs].sort());
  assert.ok(refs.includes("alpha:latest") && refs.includes("zeta/tools:v2"));

  const r = g.resolveImageSelector("alpha");
  assert.deepEqual(
    { source: r.source, buildId: r.buildId, assetDir: r.assetDir },
    { source: "ref", buildId: image.buildId, assetDir: path.join(storeDir, image.buildId) },
  );
  assert.equal(g.resolveImageSelector(image.buildId).source, "build-id");
  assert.equal(g.resolveImageSelector(image.dir).source, "path");
  // A ref with a single target serves a host of the other arch only when no arch was asked for.
  assert.throws(
    () => g.resolveImageSelector("alpha", "aarch64"),
    code("missing_asset", /^image ref 'alpha:latest' has no target for aarch64 \(available: x86_64\)$/),
  );
});

test("rm takes a ref (and prunes its directories) or a build id with every ref to it", { skip }, () => {
  g.importImageFromDirectory(image.dir);
  g.tagImage(image.buildId, "deep/name/here:t");
  assert.deepEqual(g.removeImage("deep/name/here:t"), { removedRefs: ["deep/name/here:t (x86_64)"], removedBuildId: null });
  assert.ok(!fs.existsSync(path.join(storeDir, "refs", "deep")), "empty ref directories pruned");
  assert.throws(() => g.removeImage("deep/name/here:t"), code("missing_asset", /image ref not found/));

  g.tagImage(image.buildId, "one");
  g.tagImage(image.buildId, "two:x");
  const gone = g.removeImage(image.buildId);
  assert.equal(gone.removedBuildId, image.buildId);
  assert.ok(gone.removedRefs.includes("one:latest (x86_64)") && gone.removedRefs.includes("two:x (x86_64)"));
  assert.ok(!fs.existsSync(path.join(storeDir, image.buildId)));
  assert.deepEqual(g.listImageRefs(), []);
  assert.ok(fs.existsSync(image.kernel), "the source image is untouched");
});

test("CLI: image import, tag, ls, inspect, rm; bad use exits 2 with usage", { skip }, () => {
  let r = gondolin("image", "import", image.dir);
  assert.equal(r.status, 0, r.stderr);
  r = gondolin("image", "tag", image.buildId, "cli/img:1");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^cli\/img:1 -> [0-9a-f]{32}$/m);
  r = gondolin("image", "ls");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^REFERENCE\s+ARCH\s+BUILD ID\s+UPDATED$/m);
  assert.match(r.stdout, new RegExp(`^cli/img:1\\s+x86_64\\s+${image.buildId}\\s`, "m"));
  r = gondolin("image", "inspect", "cli/img:1");
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.equal(info.manifest.buildId, image.buildId);
  assert.deepEqual(info.refs, ["cli/img:1"]);
  r = gondolin("image", "rm", "cli/img:1");
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /untagged cli\/img:1 \(x86_64\)/);
  r = gondolin("image", "ls");
  assert.match(r.stdout, new RegExp(`^<none>\\s+x86_64\\s+${image.buildId}`, "m"), "an unnamed image still lists");
  r = gondolin("image", "frobnicate");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Unknown image command: frobnicate[\s\S]*Usage: gondolin image/);
  r = gondolin("image", "rm", "no-such:ref");
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^Error: image ref not found: no-such:ref/);
});

test("a VM boots from a ref: sandbox.imagePath and GONDOLIN_DEFAULT_IMAGE take selectors", { skip }, async () => {
  g.importImageFromDirectory(image.dir);
  g.tagImage(image.buildId, "boot/me:v1");
  await assert.rejects(
    g.VM.create({ sandbox: { imagePath: "boot/me:v2", netEnabled: false } }),
    code("missing_asset", /^sandbox\.imagePath: image ref not found: boot\/me:v2/),
  );
  process.env.GONDOLIN_DEFAULT_IMAGE = "boot/me:v1";
  try {
    assert.equal(g.findImage().dir, path.join(storeDir, image.buildId));
    const vm = await g.VM.create({ sandbox: { netEnabled: false } });
    try {
      const r = await vm.exec("echo booted");
      assert.equal(r.stdout, "booted\n");
    } finally {
      await vm.close();
    }
  } finally {
    delete process.env.GONDOLIN_DEFAULT_IMAGE;
  }
  // Without GONDOLIN_DEFAULT_IMAGE the image for this checkout's guest
  // binaries is found in the store and named debian-base:latest.
  assert.equal(g.findImage().buildId, image.buildId);
  assert.deepEqual(g.resolveImageSelector("debian-base").buildId, image.buildId);
});
