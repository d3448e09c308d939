// The path a user takes: `make pack`, then `npm install` of the tarballs into
// an empty project outside the checkout, then the CLI through npx, an ES
// module and a CommonJS script, each running a command in a real VM.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { root, vmSkip } from "./helpers.mjs";
import { findImage } from "../js/image.cjs";

const skip = vmSkip();
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
const triple = `linux-${process.arch}-gnu`;
const platformName = `@gondolin/native-${triple}`;
const project = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-pack-"));
const installed = path.join(project, "node_modules", "@gondolin");
let tarballs;

// The installed copy must find everything itself: no hints pointing back here.
const env = { ...process.env };
for (const k of ["GONDOLIN_NATIVE_PATH", "GONDOLIN_GUEST_BIN_DIR", "GONDOLIN_GUEST_DIR", "GONDOLIN_IMAGE_DEFINITION", "NODE_PATH"]) {
  delete env[k];
}

function inProject(cmd, args) {
  return spawnSync(cmd, args, { cwd: project, env, encoding: "utf8", timeout: 300000 });
}

/** Where the process that ran `script` loaded the addon from (its memory map). */
const WHERE_LOADED = `require("node:fs").readFileSync("/proc/self/maps", "utf8").split("\\n")
  .map((l) => l.split(/\\s+/)[5]).find((f) => f && f.endsWith(".node"))`;

before(() => {
  execFileSync("make", ["-s", "pack"], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
  const dir = path.join(root, "target", "pack");
  tarballs = [`gondolin-native-${pkg.version}.tgz`, `gondolin-native-${triple}-${pkg.version}.tgz`].map((f) =>
    path.join(dir, f),
  );
  fs.writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "pack-test", private: true }));
  // Both tarballs in one command: the main package's optionalDependency on
  // the platform package is satisfied by the local tarball, no registry.
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", ...tarballs], {
    cwd: project,
    env,
    stdio: ["ignore", "ignore", "inherit"],
  });
});

after(() => fs.rmSync(project, { recursive: true, force: true }));

test("the packed main package lists the platform packages; the platform package carries a stripped addon and the guest binaries", () => {
  const main = path.join(installed, "native");
  const plat = path.join(installed, `native-${triple}`);
  assert.ok(!fs.lstatSync(main).isSymbolicLink() && !fs.lstatSync(plat).isSymbolicLink(), "real copies, not links");
  const mainPkg = JSON.parse(fs.readFileSync(path.join(main, "package.json"), "utf8"));
  for (const t of fs.readdirSync(path.join(root, "npm"))) {
    const p = JSON.parse(fs.readFileSync(path.join(root, "npm", t, "package.json"), "utf8"));
    assert.equal(mainPkg.optionalDependencies[p.name], pkg.version, `${p.name} is an optionalDependency`);
    assert.equal(p.version, pkg.version, `${p.name} has the main package's version`);
  }
  assert.ok(fs.existsSync(path.join(main, "images", "debian-base.json")), "the image definition ships");
  assert.ok(!fs.existsSync(path.join(main, "npm")), "the main package carries no binaries");
  for (const bin of ["init", "sandboxd", "sandboxfs"]) {
    const st = fs.statSync(path.join(plat, "guest", bin));
    assert.ok(st.mode & 0o100, `guest/${bin} is executable`);
  }
  const addon = path.join(plat, `gondolin.${triple}.node`);
  const sections = execFileSync("readelf", ["-S", "-W", addon], { encoding: "utf8" });
  assert.doesNotMatch(sections, /\.debug_info/, "no debug info in the addon");
  assert.match(sections, /\.symtab/, "symbols stay, so panics name functions");
  // 22 MiB with symbols (SSH, OCI and ingress included); debug info would double it.
  assert.ok(fs.statSync(addon).size < 32 * 1024 * 1024, `addon is ${fs.statSync(addon).size} bytes`);
});

test("without the platform package, the first require names the missing package and the fix", () => {
  const bare = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-pack-bare-"));
  try {
    fs.writeFileSync(path.join(bare, "package.json"), JSON.stringify({ name: "pack-bare", private: true }));
    execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--omit=optional", tarballs[0]], {
      cwd: bare,
      env,
      stdio: ["ignore", "ignore", "inherit"],
    });
    const r = spawnSync(process.execPath, ["-e", 'require("@gondolin/native")'], { cwd: bare, env, encoding: "utf8" });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, new RegExp(`the platform package ${platformName} is not installed .*--omit=optional`));
  } finally {
    fs.rmSync(bare, { recursive: true, force: true });
  }
});

test("npx gondolin exec -- uname -a from the installed package", { skip }, () => {
  const r = inProject("npx", ["--offline", "gondolin", "exec", "--", "uname", "-a"]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^Linux gondolin .* x86_64 GNU\/Linux\n$/);
  const v = inProject("npx", ["--offline", "gondolin", "--version"]);
  assert.equal(v.stdout, `gondolin ${pkg.version}\n`);
});

test("an ES module imports VM from @gondolin/native and runs a command", { skip }, () => {
  fs.writeFileSync(
    path.join(project, "esm.mjs"),
    `import { VM } from "@gondolin/native";
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const vm = await VM.create();
const r = await vm.exec(["sh", "-c", "echo esm-$((6*7))"]);
await vm.close();
console.log(JSON.stringify({ out: r.stdout, addon: ${WHERE_LOADED} }));
`,
  );
  const r = inProject(process.execPath, ["esm.mjs"]);
  assert.equal(r.status, 0, r.stderr);
  const { out, addon } = JSON.parse(r.stdout);
  assert.equal(out, "esm-42\n");
  assert.equal(addon, fs.realpathSync(path.join(installed, `native-${triple}`, `gondolin.${triple}.node`)));
});

test("a CommonJS script requires @gondolin/native, reuses the shared image and runs a command", { skip }, () => {
  fs.writeFileSync(
    path.join(project, "cjs.cjs"),
    `const { VM, findImage } = require("@gondolin/native");
(async () => {
  const image = findImage();
  const vm = await VM.create();
  const r = await vm.exec("echo cjs-$(id -u)");
  await vm.close();
  console.log(JSON.stringify({ out: r.stdout, buildId: image && image.buildId, addon: ${WHERE_LOADED} }));
})().catch((e) => { console.error(e); process.exit(1); });
`,
  );
  const r = inProject(process.execPath, ["cjs.cjs"]);
  assert.equal(r.status, 0, r.stderr);
  const { out, buildId, addon } = JSON.parse(r.stdout);
  assert.equal(out, "cjs-0\n");
  assert.ok(addon.startsWith(fs.realpathSync(project)), `addon loaded from the project: ${addon}`);
  // Same guest binaries and definition as this checkout → same buildId, so the
  // installed package boots the image already in ~/.cache/gondolin.
  const here = findImage();
  assert.ok(here, "the checkout's image is built (make image)");
  assert.equal(buildId, here.buildId);
});
