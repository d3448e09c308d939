// Custom image builds: a definition with an extra package, a copied file,
// a post-build command and env, built without root (mmdebstrap's unshare
// mode, as an unprivileged user), verified against its manifest, booted.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { vmSkip, cli, root } from "./helpers.mjs";
import { BUILD_USER as USER, ensureBuildUser, gondolinAsBuildUser } from "./image-helpers.mjs";

const require = createRequire(import.meta.url);
const g = require("../js/index.cjs");
const skip = vmSkip() || (process.getuid() !== 0 && "needs root to create the unprivileged build user");

let work; // owned by USER: the definition, its files, the user's cache
let built; // the image directory the rootless build produced

function gondolin(args, opts = {}) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", ...opts });
}

before(() => {
  if (skip) return;
  ensureBuildUser();
  work = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-build-"));
  fs.chmodSync(work, 0o755);
  const def = JSON.parse(fs.readFileSync(path.join(root, "images", "debian-base.json"), "utf8"));
  def.packages.push("jq");
  def.postBuild = {
    copy: [{ src: "files/motd.txt", dest: "/etc/gondolin-test/motd.txt" }],
    commands: ["echo built-by-$(id -u) > /etc/gondolin-test/marker"],
  };
  def.env = { GONDOLIN_IMAGE_FLAVOUR: "custom" };
  fs.mkdirSync(path.join(work, "files"));
  fs.writeFileSync(path.join(work, "files", "motd.txt"), "copied in\n");
  fs.writeFileSync(path.join(work, "custom.json"), JSON.stringify(def, null, 2));
  spawnSync("chown", ["-R", `${USER}:${USER}`, work]);
});

after(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test("build --init-config prints a definition that parses, with the optional steps", () => {
  const r = gondolin(["build", "--init-config"]);
  assert.equal(r.status, 0, r.stderr);
  const config = JSON.parse(r.stdout);
  assert.equal(config.release, "bookworm");
  assert.ok(Array.isArray(config.postBuild.commands) && Array.isArray(config.postBuild.copy));
});

test("a bad definition fails before any work, naming the field", { skip }, async () => {
  const bad = path.join(work, "bad.json");
  const def = JSON.parse(fs.readFileSync(path.join(work, "custom.json"), "utf8"));
  fs.writeFileSync(bad, JSON.stringify({ ...def, postBuild: { copy: [{ src: "files/motd.txt", dest: "etc/x" }] } }));
  await assert.rejects(g.buildImage({ definition: bad, quiet: true }), (err) => {
    return err.code === "invalid_definition" && /postBuild\.copy dest must be an absolute path/.test(err.message);
  });
  fs.writeFileSync(bad, JSON.stringify({ ...def, postBuild: { copy: [{ src: "files/nope", dest: "/etc/x" }] } }));
  await assert.rejects(g.buildImage({ definition: bad, quiet: true }), /postBuild\.copy src .*files\/nope is not a file/);
  fs.writeFileSync(bad, JSON.stringify({ ...def, env: ["=x"] }));
  await assert.rejects(g.buildImage({ definition: bad, quiet: true }), /env: expected KEY=VALUE/);
});

test("an unprivileged user builds a custom image (mmdebstrap unshare mode) and tags it", { skip, timeout: 20 * 60_000 }, () => {
  const r = gondolinAsBuildUser(work, ["build", "--config", path.join(work, "custom.json"), "--tag", "custom:test", "--no-boot-snapshot", "-q"]);
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  built = r.stdout.trim();
  assert.ok(built.startsWith(path.join(work, "cache", "gondolin", "images")), built);
  const manifest = JSON.parse(fs.readFileSync(path.join(built, "manifest.json"), "utf8"));
  assert.ok(manifest.debian.packages.includes("jq"));
  assert.deepEqual(manifest.runtimeDefaults.env, ["GONDOLIN_IMAGE_FLAVOUR=custom"]);
  assert.equal(fs.statSync(path.join(built, "rootfs.ext4")).uid, Number(spawnSync("id", ["-u", USER], { encoding: "utf8" }).stdout));
  const ref = path.join(work, "cache", "gondolin", "images", "refs", "custom", "test", "x86_64");
  assert.equal(path.basename(fs.readlinkSync(ref)), manifest.buildId, "--tag names the build");
});

test("build --verify: an intact image passes, a changed asset is named", { skip }, async () => {
  assert.ok(built, "the rootless build ran");
  let r = gondolin(["build", "--verify", built]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(await g.verifyAssets(built), true);
  // A copy with one changed byte in the initramfs (the rest hard-linked).
  const copy = fs.mkdtempSync(path.join(work, "tampered-"));
  for (const f of fs.readdirSync(built)) fs.linkSync(path.join(built, f), path.join(copy, f));
  const initrd = fs.readFileSync(path.join(built, "initrd.img"));
  initrd[initrd.length - 1] ^= 1;
  fs.rmSync(path.join(copy, "initrd.img"));
  fs.writeFileSync(path.join(copy, "initrd.img"), initrd);
  r = gondolin(["build", "--verify", copy]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /initrd\.img does not match manifest\.json/);
  assert.deepEqual(await g.verifyAssets(copy, { details: true }), ["initrd.img"]);
});

test("the custom image boots: its package, copied file, post-build output and env are there", { skip }, async () => {
  assert.ok(built, "the rootless build ran");
  const vm = await g.VM.create({ sandbox: { imagePath: built, netEnabled: false } });
  try {
    const r = await vm.exec(
      "echo '{\"a\":41}' | jq '.a+1'; cat /etc/gondolin-test/motd.txt /etc/gondolin-test/marker; stat -c %u:%g /etc/gondolin-test/motd.txt /etc/shadow; echo $GONDOLIN_IMAGE_FLAVOUR",
    );
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, "42\ncopied in\nbuilt-by-0\n0:0\n0:42\ncustom\n");
    const own = await vm.exec("echo $GONDOLIN_IMAGE_FLAVOUR", { env: { GONDOLIN_IMAGE_FLAVOUR: "mine" } });
    assert.equal(own.stdout, "mine\n", "an exec's env overrides the image's");
  } finally {
    await vm.close();
  }
});
