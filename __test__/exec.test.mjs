// Exec against one shared real VM (booted once for the whole file).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { Writable } from "node:stream";
import { VM } from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const skip = vmSkip();
let vm;

before(async () => {
  if (skip) return;
  vm = await VM.create({ env: { VM_LEVEL: "vm", SHARED: "vm" } });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
});

test("echo, stderr and exit code", { skip }, async () => {
  const r = await vm.exec("echo hello; echo err >&2; exit 7");
  assert.equal(r.stdout, "hello\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.exitCode, 7);
  assert.equal(r.ok, false);
  assert.equal(r.signal, undefined);
});

test("string form runs a login shell, array form runs the program directly", { skip }, async () => {
  const s = await vm.exec('echo "$0" "$1"; echo $((6*7))', { argv: ["first"] });
  assert.equal(s.stdout, "sh first\n42\n");
  const a = await vm.exec(["/bin/echo", "$HOME", "a b"]);
  assert.equal(a.stdout, "$HOME a b\n");
  const pathLookup = await vm.exec(["uname", "-s"]);
  assert.equal(pathLookup.stdout, "Linux\n");
});

test("env merges VM-level and per-exec values; cwd applies", { skip }, async () => {
  const r = await vm.exec('echo "$VM_LEVEL $SHARED $PER_EXEC"; pwd', { env: { SHARED: "exec", PER_EXEC: "1" }, cwd: "/tmp" });
  assert.equal(r.stdout, "vm exec 1\n/tmp\n");
  const home = await vm.exec(["sh", "-c", 'echo "$HOME:$TMPDIR"']);
  assert.equal(home.stdout, "/root:/tmp\n");
});

test("missing program and bad cwd exit 127 with a message", { skip }, async () => {
  const r = await vm.exec(["/no/such/program"]);
  assert.equal(r.exitCode, 127);
  assert.match(r.stderr, /exec failed/);
  const c = await vm.exec(["true"], { cwd: "/no/such/dir" });
  assert.equal(c.exitCode, 127);
  assert.match(c.stderr, /\/no\/such\/dir/);
});

test("a signal-killed process reports the signal", { skip }, async () => {
  const r = await vm.exec("kill -TERM $$");
  assert.equal(r.signal, 15);
  assert.equal(r.exitCode, 128 + 15);
});

test("binary output is byte-exact", { skip }, async () => {
  const r = await vm.exec(["sh", "-c", "printf '\\000\\001\\377\\376hi'"]);
  assert.deepEqual([...r.stdoutBuffer], [0, 1, 255, 254, 104, 105]);
  const all = await vm.exec(["python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 64)"]);
  assert.equal(all.stdoutBuffer.length, 256 * 64);
  assert.equal(all.stdoutBuffer[255], 255);
  assert.equal(all.stdoutBuffer[256], 0);
});

test("20 MiB through stdout arrives intact (buffered)", { skip }, async () => {
  const r = await vm.exec("head -c 20971520 /dev/urandom | tee /tmp/big | sha256sum >&2; cat /tmp/big; rm /tmp/big");
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdoutBuffer.length, 20 * 1024 * 1024);
  const want = r.stderr.split(" ")[0];
  assert.equal(crypto.createHash("sha256").update(r.stdoutBuffer).digest("hex"), want);
});

test("streaming 64 MiB to a writable keeps host memory bounded", { skip }, async () => {
  const hash = crypto.createHash("sha256");
  let bytes = 0;
  let peak = 0;
  const base = process.memoryUsage().rss;
  const sink = new Writable({
    write(chunk, _enc, cb) {
      hash.update(chunk);
      bytes += chunk.length;
      peak = Math.max(peak, process.memoryUsage().rss - base);
      // A slowish consumer so the guest has to wait for credit.
      setImmediate(cb);
    },
    highWaterMark: 64 * 1024,
  });
  const r = await vm.exec("head -c 67108864 /dev/zero", { stdout: sink });
  assert.equal(r.exitCode, 0);
  assert.equal(bytes, 64 * 1024 * 1024);
  assert.equal(r.stdoutBuffer.length, 0, "writable mode output is not kept");
  assert.equal(hash.digest("hex"), crypto.createHash("sha256").update(Buffer.alloc(64 * 1024 * 1024)).digest("hex"));
  assert.ok(peak < 48 * 1024 * 1024, `RSS grew by ${(peak / 1048576).toFixed(1)} MiB while streaming 64 MiB`);
});

test("10 concurrent execs with isolated output", { skip }, async () => {
  const runs = Array.from({ length: 10 }, (_, i) =>
    vm.exec(`sleep 0.$((${i} % 3)); echo out-${i}; echo err-${i} >&2; exit ${i}`),
  );
  const results = await Promise.all(runs);
  results.forEach((r, i) => {
    assert.equal(r.stdout, `out-${i}\n`);
    assert.equal(r.stderr, `err-${i}\n`);
    assert.equal(r.exitCode, i);
  });
  assert.equal(new Set(results.map((r) => r.id)).size, 10);
});

test("concurrent execs really overlap", { skip }, async () => {
  const t0 = Date.now();
  await Promise.all(Array.from({ length: 5 }, () => vm.exec("sleep 1")));
  const elapsed = Date.now() - t0;
  assert.ok(elapsed < 3500, `5 × sleep 1 took ${elapsed} ms`);
});

test("stdin data is delivered and closed", { skip }, async () => {
  const r = await vm.exec(["sh", "-c", "cat | wc -c"], { stdin: Buffer.alloc(300000, 7) });
  assert.equal(r.stdout.trim(), "300000");
  const p = vm.exec(["cat"], { stdin: true });
  p.write("a\n");
  p.write(Buffer.from([0, 255]));
  p.end();
  const echo = await p;
  assert.deepEqual([...echo.stdoutBuffer], [97, 10, 0, 255]);
});

test("abort kills the guest process", { skip }, async () => {
  const ac = new AbortController();
  const p = vm.exec(["sh", "-c", "echo $$ > /tmp/aborted.pid; exec sleep 1000"], { signal: ac.signal });
  for (let i = 0; i < 100; i++) {
    const r = await vm.exec("cat /tmp/aborted.pid 2>/dev/null");
    if (r.stdout) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  ac.abort();
  await assert.rejects(p, /exec aborted/);
  let alive = true;
  for (let i = 0; i < 50 && alive; i++) {
    const r = await vm.exec('kill -0 "$(cat /tmp/aborted.pid)" 2>/dev/null && echo alive || echo gone');
    alive = r.stdout.trim() === "alive";
    if (alive) await new Promise((res) => setTimeout(res, 50));
  }
  assert.equal(alive, false, "the aborted process must not keep running");
});

test("encoding and buffer:false", { skip }, async () => {
  const r = await vm.exec("printf hi", { encoding: "base64" });
  assert.equal(r.stdout, Buffer.from("hi").toString("base64"));
  const q = await vm.exec("echo quiet; echo loud >&2", { buffer: false });
  assert.equal(q.stdout, "");
  assert.equal(q.stderr, "");
});
