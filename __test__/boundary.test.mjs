// The JS ↔ Rust call boundary (issue 14 item 3): operation and hook names
// are Rust string enums, so a wrong one fails where it crosses, with the
// enum named; Rust reports which paths an operation changed; each JS
// provider call gets a GONDOLIN_DEBUG span. No VM needed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { native } = require("../js/native.cjs");

const wrongName = (enumName, value) => (err) =>
  err.message.includes(`value \`"${value}"\` does not match any variant of enum \`${enumName}\``);

test("a wrong VFS operation name fails at the boundary, async and sync", async () => {
  const p = native.memoryProvider();
  // Refused while the arguments convert, before any promise exists.
  assert.throws(() => p.call({ op: "stta", path: "/" }), wrongName("FsOp", "stta"));
  assert.throws(() => p.callSync({ op: "stta", path: "/" }), wrongName("FsOp", "stta"));
  // The right spelling passes the same door.
  assert.equal((await p.call({ op: "stat", path: "/" })).stat.kind, "dir");
});

test("a wrong HTTP hook name fails at the boundary, before any boot", () => {
  const options = { kernel: "/nonexistent", initrd: "/nonexistent", rootfs: "/nonexistent", cmdline: "" };
  const dispatch = async () => ({ action: "keep" });
  assert.throws(() => native.startVm(options, null, null, dispatch, ["onRequests"]), wrongName("HttpHook", "onRequests"));
});

test("the operation and hook lists come from Rust", () => {
  assert.equal(native.FsOp.Stat, "stat");
  assert.equal(native.HttpHook.OnRequestHead, "onRequestHead");
  // A JS provider's dispatcher must answer every op but the host-side whole-file ones.
  const sent = native.jsProviderOps();
  assert.deepEqual(
    [...sent].sort(),
    Object.values(native.FsOp)
      .filter((op) => op !== "readFile" && op !== "writeFile")
      .sort(),
  );
});

test("an operation reports the paths it changed", async () => {
  const p = native.memoryProvider();
  assert.deepEqual((await p.call({ op: "mkdir", path: "/d", mode: 0o755 })).changed, ["/d"]);
  const { fh, changed: opened } = await p.call({ op: "open", path: "/d/f", flags: "w" });
  assert.equal(opened, undefined); // as before: open itself invalidates nothing
  // A write through a handle names the path the handle was opened with.
  assert.deepEqual((await p.call({ op: "write", fh, offset: 0, data: Buffer.from("x") })).changed, ["/d/f"]);
  assert.deepEqual((await p.call({ op: "ftruncate", fh, length: 0 })).changed, ["/d/f"]);
  await p.call({ op: "close", fh });
  assert.deepEqual((await p.call({ op: "rename", path: "/d/f", path2: "/d/g" })).changed, ["/d/f", "/d/g"]);
  assert.deepEqual((await p.call({ op: "symlink", path: "/d/l", path2: "g" })).changed, ["/d/l"]);
  assert.equal((await p.call({ op: "stat", path: "/d/g" })).changed, undefined);
  // A failed operation changed nothing.
  const failed = await p.call({ op: "unlink", path: "/nope" });
  assert.equal(failed.code, "ENOENT");
  assert.equal(failed.changed, undefined);
});

test("GONDOLIN_DEBUG=vfs: a span with name and duration around each JS provider call", () => {
  const script = `
    const vfs = require(${JSON.stringify(require.resolve("../js/vfs.cjs"))});
    const m = new vfs.MemoryProvider();
    const js = { stat: (p) => m.stat(p), readdir: (p, o) => m.readdir(p, o), open: (p, f, md) => m.open(p, f, md), mkdir: (p, o) => m.mkdir(p, o) };
    vfs.toNative(js).call({ op: "mkdir", path: "/x" }).then((o) => { if (o.code) process.exit(2); });
  `;
  const stderr = (debug) => {
    const r = spawnSync(process.execPath, ["-e", script], {
      env: { ...process.env, GONDOLIN_DEBUG: debug, NO_COLOR: "1" },
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    return r.stderr.replace(/\x1b\[[0-9;]*m/g, "");
  };
  const on = stderr("vfs");
  assert.match(on, /js_call\{name="mkdir"\}.*gondolin::vfs::js.*elapsed_us=\d+ ok=true/);
  assert.doesNotMatch(stderr("net"), /js_call/);
});

test("a JS answer of the wrong shape fails that call only, with EIO naming the operation", async () => {
  const p = native.jsProvider(async (call) => (call.op === "stat" ? { stat: { kind: 5 } } : { entries: [] }), false, false);
  const bad = await p.call({ op: "stat", path: "/" });
  assert.equal(bad.code, "EIO");
  assert.match(bad.message, /^JS provider stat failed: .*kind/);
  assert.deepEqual((await p.call({ op: "readdir", path: "/" })).entries, []);
});

test("ctx.op of vfs.hooks and shadow predicates is one of the core's HookOp names, the VfsHookOp union of index.d.ts", () => {
  const fs = require("node:fs");
  const dts = fs.readFileSync(require.resolve("../index.d.ts"), "utf8");
  const union = /export type VfsHookOp = ([^;]+);/.exec(dts)[1].match(/"([a-z]+)"/g).map((s) => s.slice(1, -1));
  assert.deepEqual(native.vfsHookOps().sort(), union.sort());
});
