// Images over OCI registries: push the checkout's image to a registry
// started here (Debian's docker-registry on 127.0.0.1), pull it back into an
// empty store (progress, sha256), resume a partial blob, refuse a tampered
// or truncated blob leaving nothing in the store, auth from a docker config
// file, the CLI, and VM.create() pulling the default image on first use.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { vmSkip, cli } from "./helpers.mjs";
import { REGISTRY_BIN, startRegistry as startRegistryIn } from "./image-helpers.mjs";

const require = createRequire(import.meta.url);
const g = require("../js/index.cjs");
const oci = require("../js/image-oci.cjs");

const haveRegistry = fs.existsSync(REGISTRY_BIN);
const skip = vmSkip() || (!haveRegistry && `${REGISTRY_BIN} not installed (apt install docker-registry)`);
const htpasswd = spawnSync("sh", ["-c", "command -v htpasswd"], { encoding: "utf8" }).stdout.trim();

function startRegistry(name, opts) {
  return startRegistryIn(path.join(tmp, name), opts);
}

let tmp;
let image; // the checkout's image, outside the temp stores
let registry; // { host, dataDir, proc }
let authRegistry;
const saved = {};

/** The registry's file for a blob (distribution's filesystem layout). */
function blobFile(reg, digest) {
  const hex = digest.replace(/^sha256:/, "");
  return path.join(reg.dataDir, "docker", "registry", "v2", "blobs", "sha256", hex.slice(0, 2), hex, "data");
}

async function manifestOf(reg, repoTag) {
  const [repo, tag] = repoTag.split(":");
  const res = await fetch(`http://${reg.host}/v2/${repo}/manifests/${tag}`, {
    headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  assert.equal(res.status, 200);
  return res.json();
}

function useStore(name) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  process.env.GONDOLIN_IMAGE_STORE = dir;
  return dir;
}

function sha256File(file) {
  return new Promise((resolve, reject) => {
    const h = crypto.createHash("sha256");
    fs.createReadStream(file, { highWaterMark: 1 << 20 })
      .on("data", (d) => h.update(d))
      .on("end", () => resolve(h.digest("hex")))
      .on("error", reject);
  });
}

/** Nothing but (maybe) the lock file and an empty refs/: no image, no temp dir, no partial blob. */
function assertStoreClean(dir) {
  const emptyRefs = (n) => n === "refs" && fs.readdirSync(path.join(dir, n)).length === 0;
  const left = fs.readdirSync(dir).filter((n) => n !== ".pull.lock" && !emptyRefs(n));
  assert.deepEqual(left, [], `store ${dir} holds ${left.join(", ")}`);
}

before(async () => {
  if (skip) return;
  image = await g.ensureImage();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-oci-"));
  for (const k of [
    "GONDOLIN_IMAGE_STORE",
    "GONDOLIN_DEFAULT_IMAGE",
    "GONDOLIN_GUEST_DIR",
    "GONDOLIN_IMAGE_REGISTRY",
    "DOCKER_CONFIG",
  ]) {
    saved[k] = process.env[k];
    delete process.env[k];
  }
  process.env.DOCKER_CONFIG = path.join(tmp, "docker-empty"); // no login unless a test sets one
  registry = await startRegistry("registry");
  // The image to push: an import (hard links) of the checkout's image.
  useStore("source");
  g.importImageFromDirectory(image.dir);
  g.tagImage(image.buildId, "debian-base:latest");
});

after(() => {
  for (const r of [registry, authRegistry]) if (r) r.proc.kill("SIGTERM");
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

let pushedRef;

test("push uploads the image as an OCI artifact with our media types", { skip }, async () => {
  useStore("source");
  pushedRef = oci.defaultImageReference(`${registry.host}/gondolin`);
  assert.equal(pushedRef, `${registry.host}/gondolin/debian-base:${image.buildId}`);
  const events = [];
  const r = await g.pushImage("debian-base:latest", pushedRef, {}, (p) => events.push(p));
  assert.equal(r.buildId, image.buildId);
  assert.match(r.digest, /^sha256:[0-9a-f]{64}$/);
  assert.ok(r.uploadedBytes > 0);
  assert.ok(events.some((e) => e.phase === "compress") && events.some((e) => e.phase === "upload"));
  const m = await manifestOf(registry, `gondolin/debian-base:${image.buildId}`);
  assert.equal(m.artifactType, "application/vnd.gondolin.image.v1");
  assert.equal(m.config.mediaType, "application/vnd.gondolin.image.manifest.v1+json");
  assert.deepEqual(
    m.layers.map((l) => [l.mediaType, l.annotations["org.opencontainers.image.title"]]),
    [
      ["application/vnd.gondolin.kernel.v1+zstd", "vmlinuz"],
      ["application/vnd.gondolin.initrd.v1+zstd", "initrd.img"],
      ["application/vnd.gondolin.rootfs.v1.ext4+zstd", "rootfs.ext4"],
    ],
  );
  assert.equal(m.annotations["dev.gondolin.image.build-id"], image.buildId);
  assert.equal(m.annotations["dev.gondolin.image.arch"], image.arch);
  // A second push of the same image uploads nothing.
  const again = await g.pushImage(image.buildId, pushedRef);
  assert.equal(again.uploadedBytes, 0);
  assert.equal(again.digest, r.digest);
});

test("pull into an empty store: progress, verified bytes, named, idempotent", { skip }, async () => {
  const store = useStore("pulled");
  const events = [];
  const r = await g.pullImage(pushedRef, {}, (p) => events.push(p));
  assert.equal(r.buildId, image.buildId);
  assert.equal(r.created, true);
  assert.equal(r.tag, `debian-base:${image.buildId}`);
  assert.equal(r.assetDir, path.join(store, image.buildId));
  const downloads = events.filter((e) => e.phase === "download");
  assert.ok(downloads.length >= 2, "download progress reported");
  const last = downloads.at(-1);
  assert.equal(last.done, last.total);
  assert.ok(last.rate > 0 && typeof last.total === "number");
  assert.ok(events.some((e) => e.phase === "extract"));
  for (const f of ["vmlinuz", "initrd.img", "rootfs.ext4", "manifest.json"]) {
    assert.equal(await sha256File(path.join(r.assetDir, f)), await sha256File(path.join(image.dir, f)), f);
  }
  // The rootfs stays sparse.
  const st = fs.statSync(path.join(r.assetDir, "rootfs.ext4"));
  assert.ok(st.blocks * 512 < st.size * 0.8, `rootfs not sparse: ${st.blocks * 512} of ${st.size}`);
  assert.deepEqual(fs.readdirSync(store).filter((n) => n.startsWith(".") && n !== ".pull.lock"), []);
  assert.equal(g.resolveImageSelector(`debian-base:${image.buildId}`).buildId, image.buildId);
  const again = await g.pullImage(pushedRef, { tag: "mine:v1" });
  assert.equal(again.created, false);
  assert.equal(g.resolveImageSelector("mine:v1").buildId, image.buildId);
  g.removeImage(image.buildId);
  assertStoreClean(store);
});

test("a partial blob is resumed with a range request", { skip }, async () => {
  const store = useStore("resume");
  const m = await manifestOf(registry, `gondolin/debian-base:${image.buildId}`);
  const rootfs = m.layers[2];
  const keep = Math.floor(rootfs.size / 2);
  fs.mkdirSync(path.join(store, ".partial"), { recursive: true });
  const src = fs.readFileSync(blobFile(registry, rootfs.digest));
  fs.writeFileSync(path.join(store, ".partial", rootfs.digest.slice(7)), src.subarray(0, keep));
  const events = [];
  const r = await g.pullImage(pushedRef, { tag: false }, (p) => events.push(p));
  assert.equal(r.buildId, image.buildId);
  const first = events.find((e) => e.phase === "download");
  assert.ok(first.done >= keep, `download starts at ${first.done}, kept ${keep}`);
  assert.equal(await sha256File(path.join(r.assetDir, "rootfs.ext4")), await sha256File(path.join(image.dir, "rootfs.ext4")));
  g.removeImage(image.buildId);
  assertStoreClean(store);
});

test("a tampered or truncated blob is refused naming its digest; nothing is left", { skip }, async () => {
  const store = useStore("tampered");
  const m = await manifestOf(registry, `gondolin/debian-base:${image.buildId}`);
  for (const [i, how] of [
    [1, "tamper"],
    [0, "truncate"],
  ]) {
    const layer = m.layers[i];
    const file = blobFile(registry, layer.digest);
    const original = fs.readFileSync(file);
    const bad = Buffer.from(original);
    if (how === "tamper") bad[Math.floor(bad.length / 2)] ^= 0xff;
    fs.writeFileSync(file, how === "tamper" ? bad : bad.subarray(0, bad.length - 1000));
    try {
      await assert.rejects(g.pullImage(pushedRef), (err) => {
        assert.ok(err.message.includes(layer.digest), err.message);
        assert.match(err.message, how === "tamper" ? /failed verification/ : /truncated/);
        assert.equal(err.code, "invalid_image");
        return true;
      });
      assertStoreClean(store);
      assert.throws(() => g.resolveImageSelector(image.buildId), /not found/);
    } finally {
      fs.writeFileSync(file, original);
    }
  }
});

test("a registry that has no such image: missing_asset", { skip }, async () => {
  useStore("missing");
  await assert.rejects(g.pullImage(`${registry.host}/gondolin/nothing:v1`), (err) => err.code === "missing_asset");
  await assert.rejects(g.pullImage(`${registry.host}/gondolin/debian-base:nope`), (err) => err.code === "missing_asset");
});

test("registry auth comes from the docker config file", { skip: skip || (!htpasswd && "htpasswd not installed") }, async () => {
  authRegistry = await startRegistry("auth", { auth: { user: "alice", password: "s3cret" } });
  useStore("auth");
  const ref = `${authRegistry.host}/gondolin/debian-base:${image.buildId}`;
  const cfgDir = path.join(tmp, "docker");
  fs.mkdirSync(cfgDir, { recursive: true });
  // No credentials: refused.
  await assert.rejects(g.pullImage(ref), /401|auth|Unauthorized|UNAUTHORIZED/i);
  const write = (user, pass) =>
    fs.writeFileSync(
      path.join(cfgDir, "config.json"),
      JSON.stringify({ auths: { [authRegistry.host]: { auth: Buffer.from(`${user}:${pass}`).toString("base64") } } }),
    );
  process.env.DOCKER_CONFIG = cfgDir;
  try {
    write("alice", "wrong");
    await assert.rejects(g.pushImage(path.join(tmp, "source", image.buildId), ref), /401|auth|Unauthorized|UNAUTHORIZED/i);
    write("alice", "s3cret");
    const pushed = await g.pushImage(path.join(tmp, "source", image.buildId), ref);
    assert.equal(pushed.buildId, image.buildId);
    const pulled = await g.pullImage(ref, { tag: false });
    assert.equal(pulled.buildId, image.buildId);
    g.removeImage(image.buildId);
  } finally {
    process.env.DOCKER_CONFIG = path.join(tmp, "docker-empty");
  }
});

test("CLI: image push / image pull print what they did", { skip }, async () => {
  const env = { ...process.env, GONDOLIN_IMAGE_STORE: path.join(tmp, "source") };
  const ref = `${registry.host}/cli/debian-base:t1`;
  const run = (...args) => spawnSync(process.execPath, [cli, "image", ...args], { encoding: "utf8", env });
  const push = run("push", "debian-base:latest", ref);
  assert.equal(push.status, 0, push.stderr);
  assert.match(push.stdout, new RegExp(`^Pushed ${image.buildId} \\(${image.arch}\\) to ${ref.replace(/[.]/g, "\\.")}`));
  assert.match(push.stderr, /^compress .*\n(.|\n)*upload .*100%/m, "plain progress lines when stderr is not a TTY");
  env.GONDOLIN_IMAGE_STORE = useStore("cli");
  const pull = run("pull", ref, "--tag", "from-cli:latest");
  assert.equal(pull.status, 0, pull.stderr);
  assert.match(pull.stdout, new RegExp(`^Pulled ${ref.replace(/[.]/g, "\\.")}\\n  assetDir: .*\\n  buildId: ${image.buildId}\\n`));
  assert.match(pull.stderr, /download .*100%/);
  const ls = run("ls");
  assert.match(ls.stdout, /from-cli:latest/);
  assert.equal(run("pull").status, 2);
  assert.equal(run("push", "debian-base:latest").status, 2);
  g.removeImage(image.buildId);
});

test("VM.create() with GONDOLIN_IMAGE_REGISTRY and an empty store pulls the default image and boots", { skip }, async () => {
  const store = useStore("auto");
  process.env.GONDOLIN_IMAGE_REGISTRY = `${registry.host}/gondolin`;
  let vm;
  try {
    vm = await g.VM.create();
    const r = await vm.exec("echo pulled-and-booted");
    assert.equal(r.stdout.trim(), "pulled-and-booted");
    assert.ok(fs.existsSync(path.join(store, image.buildId, "manifest.json")));
    assert.equal(g.resolveImageSelector("debian-base:latest").buildId, image.buildId);
  } finally {
    delete process.env.GONDOLIN_IMAGE_REGISTRY;
    if (vm) await vm.close();
  }
});
