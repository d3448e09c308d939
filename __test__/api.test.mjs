// The public surface without booting a VM: exports, option validation,
// command normalization, result helpers.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import * as esm from "@gondolin/native";
import { root } from "./helpers.mjs";

const require = createRequire(import.meta.url);
const cjs = require("@gondolin/native");

test("ESM and CJS entries export the same objects, all declared in index.d.ts", () => {
  const dts = fs.readFileSync(path.join(root, "index.d.ts"), "utf8");
  const declared = [...dts.matchAll(/export declare (?:class|function) (\w+)/g)].map((m) => m[1]);
  assert.ok(declared.includes("VM"));
  for (const name of declared) {
    assert.equal(typeof esm[name], "function", `ESM export ${name}`);
    assert.equal(esm[name], cjs[name], `CJS export ${name}`);
  }
});

test("VM ids are UUIDs and construction does not boot", () => {
  const vm = new esm.VM();
  assert.match(vm.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(vm.info, null);
  assert.notEqual(new esm.VM().id, vm.id);
});

test("bad options name the option", () => {
  assert.throws(() => new esm.VM({ memory: "lots" }), /memory must be a size like "512M" or "2G"/);
  assert.throws(() => new esm.VM({ cpus: 0 }), /cpus must be an integer between 1 and 255/);
  assert.throws(() => new esm.VM({ rootfs: { mode: "rw" } }), /unsupported rootfs mode: rw/);
  assert.throws(() => new esm.VM({ env: 5 }), /env must be an array/);
  assert.throws(() => new esm.VM({ sandbox: { rootDiskSnapshot: true } }), /rootDiskSnapshot has been removed/);
});

test("exec validates its arguments before touching the VM", () => {
  const vm = new esm.VM();
  assert.throws(() => vm.exec([]), /command array must include the executable/);
  assert.throws(() => vm.exec(["ls", 3]), /command\[1\] must be a string/);
  assert.throws(() => vm.exec("ls", { stdout: "file" }), /invalid exec stdout option: file/);
  assert.throws(() => vm.exec("ls", { cwd: "tmp" }), /cwd must be an absolute path/);
  assert.throws(() => vm.exec("ls", { env: { A: 1 } }), /exec options.env.A must be a string/);
});

test("exec on a closed VM rejects with a clear error", async () => {
  const vm = new esm.VM();
  await vm.close();
  await vm.close(); // idempotent
  await assert.rejects(vm.exec("true"), (e) => e.code === "vm_closed" && /closed/.test(e.message));
  await assert.rejects(vm.start(), /VM is closed/);
});

test("ExecResult helpers", async () => {
  const { ExecResult } = require("../js/exec.cjs");
  const r = new ExecResult(1, 0, undefined, Buffer.from('{"a":1}\n\nb\n'), Buffer.from("e"), "utf-8");
  assert.equal(r.ok, true);
  assert.deepEqual(r.lines(), ['{"a":1}', "b"]);
  assert.equal(r.stderr, "e");
  assert.equal(String(r), r.stdout);
  const j = new ExecResult(1, 3, 9, Buffer.from('{"a":1}'), Buffer.alloc(0), "utf-8");
  assert.deepEqual(j.json(), { a: 1 });
  assert.equal(j.ok, false);
  assert.equal(j.signal, 9);
  const hex = new ExecResult(1, 0, undefined, Buffer.from([0xde, 0xad]), Buffer.alloc(0), "hex");
  assert.equal(hex.stdout, "dead");
});

test("command normalization and env merging", () => {
  const { normalizeCommand, windowBytes } = require("../js/exec.cjs");
  const { mergeEnv } = require("../js/env.cjs");
  assert.deepEqual(normalizeCommand("echo $1", { argv: ["a", "b"] }), ["/bin/sh", "-lc", "echo $1", "sh", "a", "b"]);
  assert.deepEqual(normalizeCommand(["ls", "-l"], {}), ["ls", "-l"]);
  assert.deepEqual(mergeEnv([{ A: "1", B: "2" }, "env"], [["B=3", "C"], "x"]), ["A=1", "B=3", "C="]);
  assert.equal(windowBytes(undefined), 262144);
  assert.equal(windowBytes(1), 4096);
  assert.equal(windowBytes(1e12), 16 * 1024 * 1024);
  assert.equal(windowBytes(-5), 262144);
});

test("upstream's guest-asset helpers resolve the image VMs use", async (t) => {
  if (!esm.hasGuestAssets()) return t.skip("no guest image built yet");
  const assets = await esm.ensureGuestAssets();
  const dir = esm.getAssetDirectory();
  assert.deepEqual(assets, esm.loadGuestAssets(dir));
  for (const p of Object.values(assets)) assert.ok(fs.statSync(p).size > 0, p);
  assert.throws(() => esm.loadGuestAssets("/nonexistent/gondolin-assets"), { code: "invalid_option", message: /does not exist/ });
});
