// OCI images as a rootfs source (`gondolin build --from-oci`, `oci` in a
// definition): a python3 rootfs made here with mmdebstrap, wrapped by umoci
// into an OCI layout with two gzip layers (the second whites out a file of
// the first), pushed with skopeo to a registry started here (Debian's
// docker-registry). Built from the registry (our own client: a `skopeo` on
// PATH that fails proves the build does not use it) and from the layout
// directory; the image boots, runs python3, the whited-out file is absent,
// /etc/shadow keeps its group, a rebuild reuses it. Pull policies; a moved
// tag; a rootless build (an unprivileged user, fakeroot) from the layout.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { vmSkip, cli, root } from "./helpers.mjs";
import { BUILD_USER, ensureBuildUser, gondolinAsBuildUser, startRegistry } from "./image-helpers.mjs";

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

let noSkopeo; // a PATH whose skopeo fails: the build must not run it

function gondolin(args) {
  const env = { ...process.env, PATH: `${noSkopeo}:${process.env.PATH}` };
  return spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", maxBuffer: 64 << 20, env });
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
  registry = await startRegistry(path.join(tmp, "registry"));
  noSkopeo = path.join(tmp, "no-skopeo");
  fs.mkdirSync(noSkopeo);
  fs.writeFileSync(path.join(noSkopeo, "skopeo"), "#!/bin/sh\necho 'skopeo must not be used by the build' >&2\nexit 99\n", { mode: 0o755 });
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

test("the umoci image has two layers, the second with a whiteout", { skip }, (t) => {
  const index = JSON.parse(fs.readFileSync(path.join(layout, "index.json"), "utf8"));
  const digest = index.manifests[0].digest.replace("sha256:", "");
  const m = JSON.parse(fs.readFileSync(path.join(layout, "blobs", "sha256", digest), "utf8"));
  assert.equal(m.layers.length, 2);
  const bytes = m.layers.reduce((n, l) => n + l.size, 0);
  t.diagnostic(`layers: ${(bytes / 2 ** 20).toFixed(1)} MiB compressed`);
  const top = m.layers[1].digest.replace("sha256:", "");
  const names = run("tar", ["-tzf", path.join(layout, "blobs", "sha256", top)]);
  assert.match(names, /etc\/\.wh\.issue/);
});

test("pull policy never without a local copy fails naming the option, before any work", { skip }, async () => {
  const ref = `${registry.host}/py:slim`;
  const r = gondolin(["build", "--from-oci", ref, "--oci-pull-policy", "never", "--no-boot-snapshot"]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /pull policy is "never" \(oci\.pullPolicy, --oci-pull-policy\)/);
  // The definition's form (upstream's `oci` key), relative to the file.
  const def = JSON.parse(fs.readFileSync(path.join(root, "images", "debian-base.json"), "utf8"));
  const file = path.join(tmp, "oci.json");
  fs.writeFileSync(file, JSON.stringify({ ...def, oci: { image: ref, pullPolicy: "never" } }));
  await assert.rejects(g.buildImage({ definition: file, quiet: true }), /pull policy is "never"/);
  fs.writeFileSync(file, JSON.stringify({ ...def, oci: { image: ref, pulPolicy: "never" } }));
  await assert.rejects(g.buildImage({ definition: file, quiet: true }), (err) => {
    return err.code === "invalid_definition" && /unknown field `pulPolicy`.*did you mean `pullPolicy`\?/.test(err.message);
  });
  await assert.rejects(g.buildImage({ fromOci: ref, ociPullPolicy: "sometimes", quiet: true }), /pull policy must be/);
  assert.ok(!fs.existsSync(path.join(storeDir, ".oci-cache", "index.json")), "nothing pulled");
});

let fromRegistry;

test("build --from-oci a registry reference boots python3, whiteout honoured, ownership kept", { skip }, async (t) => {
  const started = Date.now();
  const r = gondolin(["build", "--from-oci", `${registry.host}/py:slim`, "--no-boot-snapshot", "-q"]);
  assert.equal(r.status, 0, r.stderr);
  t.diagnostic(`build from the registry: ${Date.now() - started} ms`);
  fromRegistry = r.stdout.trim();
  const cache = JSON.parse(fs.readFileSync(path.join(storeDir, ".oci-cache", "index.json"), "utf8"));
  assert.deepEqual(
    cache.manifests.map((m) => m.annotations["org.opencontainers.image.ref.name"]),
    [`${registry.host}/py:slim`],
  );
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

test("an unprivileged user builds from an OCI layout (fakeroot) and the image boots", { skip, timeout: 20 * 60_000 }, async (t) => {
  const uid = ensureBuildUser();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-ocirootless-"));
  try {
    fs.chmodSync(work, 0o755);
    run("cp", ["-a", layout, path.join(work, "layout")]);
    // The kernel base of the root user's cache (kernel and modules only): the
    // test is about the OCI rootfs, not a second mmdebstrap.
    const rootCache = process.env.XDG_CACHE_HOME ? path.join(process.env.XDG_CACHE_HOME, "gondolin") : path.join(os.homedir(), ".cache", "gondolin");
    const bases = path.join(rootCache, "base");
    for (const b of fs.existsSync(bases) ? fs.readdirSync(bases) : []) {
      if (b.startsWith(".") || !fs.existsSync(path.join(bases, b, "kernel-version"))) continue;
      const dst = path.join(work, "cache", "gondolin", "base", b);
      fs.mkdirSync(dst, { recursive: true });
      for (const f of ["vmlinuz", "modules", "kernel-version"]) run("cp", ["-a", path.join(bases, b, f), dst]);
    }
    run("chown", ["-R", `${BUILD_USER}:${BUILD_USER}`, work]);
    const started = Date.now();
    const r = gondolinAsBuildUser(work, ["build", "--from-oci", `oci-layout:${path.join(work, "layout")}:slim`, "--no-boot-snapshot", "-q"]);
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    t.diagnostic(`rootless build from the OCI layout: ${Date.now() - started} ms`);
    const built = r.stdout.trim();
    assert.ok(built.startsWith(path.join(work, "cache", "gondolin", "images")), built);
    assert.equal(fs.statSync(path.join(built, "rootfs.ext4")).uid, uid, "written by the unprivileged user");
    const vm = await g.VM.create({ sandbox: { imagePath: built, netEnabled: false } });
    try {
      const gone = await vm.exec("ls /etc/issue");
      assert.notEqual(gone.exitCode, 0, "the whited-out file is absent");
      const res = await vm.exec("cat /etc/layer2; stat -c %u:%g /etc/shadow /usr/bin/python3");
      assert.equal(res.exitCode, 0, res.stderr);
      assert.equal(res.stdout, "two\n0:42\n0:0\n", "ownership is the layers', not the build user's");
    } finally {
      await vm.close();
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
});

test("a multi-platform index in the registry resolves to this machine's image", { skip }, () => {
  assert.ok(fromRegistry, "the registry build ran");
  const index = JSON.parse(fs.readFileSync(path.join(layout, "index.json"), "utf8"));
  const slim = index.manifests.find((m) => m.annotations?.["org.opencontainers.image.ref.name"] === "slim");
  const arch = process.arch === "x64" ? "amd64" : "arm64";
  const list = {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [
      // Another platform first: it must be skipped (same manifest, so the registry has it).
      { mediaType: slim.mediaType, digest: slim.digest, size: slim.size, platform: { os: "linux", architecture: "riscv64" } },
      { mediaType: slim.mediaType, digest: slim.digest, size: slim.size, platform: { os: "linux", architecture: arch } },
    ],
  };
  const body = Buffer.from(JSON.stringify(list));
  const hex = crypto.createHash("sha256").update(body).digest("hex");
  fs.writeFileSync(path.join(layout, "blobs", "sha256", hex), body);
  index.manifests.push({
    mediaType: list.mediaType,
    digest: `sha256:${hex}`,
    size: body.length,
    annotations: { "org.opencontainers.image.ref.name": "multi" },
  });
  fs.writeFileSync(path.join(layout, "index.json"), JSON.stringify(index));
  run("skopeo", ["copy", "--quiet", "--all", "--dest-tls-verify=false", `oci:${layout}:multi`, `docker://${registry.host}/py:multi`]);
  const r = gondolin(["build", "--from-oci", `${registry.host}/py:multi`, "--no-boot-snapshot"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /is already built/, "the same manifest as py:slim, so the same image");
  assert.match(r.stdout, new RegExp(path.basename(fromRegistry)));
});

test("a moved tag: if-not-present keeps the local copy, always pulls the new target and rebuilds", { skip }, () => {
  assert.ok(fromRegistry, "the registry build ran");
  // A new manifest (config changed, same layers) under the same tag.
  run("umoci", ["config", "--image", `${layout}:slim`, "--tag", "slim2", "--config.env", "GONDOLIN_TEST=2"]);
  run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:slim2`, `docker://${registry.host}/py:slim`]);
  const ref = `${registry.host}/py:slim`;
  let r = gondolin(["build", "--from-oci", ref, "--no-boot-snapshot"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /using the local copy of/);
  assert.match(r.stdout, new RegExp(path.basename(fromRegistry)));
  r = gondolin(["build", "--from-oci", ref, "--oci-pull-policy", "always", "--no-boot-snapshot", "-q"]);
  assert.equal(r.status, 0, r.stderr);
  const moved = r.stdout.trim();
  assert.notEqual(moved, fromRegistry, "a new image for the new manifest digest");
  const before = JSON.parse(fs.readFileSync(path.join(fromRegistry, "manifest.json"), "utf8")).oci.digest;
  const after = JSON.parse(fs.readFileSync(path.join(moved, "manifest.json"), "utf8")).oci.digest;
  assert.notEqual(after, before);
  // The layers were in the cache already: only the manifest and config moved.
  r = gondolin(["build", "--from-oci", ref, "--oci-pull-policy", "always", "--no-boot-snapshot"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /is already built/);
  const cache = JSON.parse(fs.readFileSync(path.join(storeDir, ".oci-cache", "index.json"), "utf8"));
  const mine = cache.manifests.filter((m) => m.annotations["org.opencontainers.image.ref.name"] === ref);
  assert.equal(mine.length, 1, "one entry per reference and platform");
  assert.equal(mine[0].digest, after);
});
