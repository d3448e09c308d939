// Streaming exec: pipe mode, output(), backpressure, stdin, pty, kill.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { VM } from "@gondolin/native";
import { vmSkip, sleep, rssOf } from "./helpers.mjs";

const skip = vmSkip();
let vm;

before(async () => {
  if (skip) return;
  vm = await VM.create();
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
});

test("output() yields interleaved stdout/stderr completely and in order", { skip }, async () => {
  const proc = vm.exec("for i in $(seq 1 200); do echo out$i; echo err$i >&2; done", { stdout: "pipe", stderr: "pipe" });
  const out = [];
  const err = [];
  for await (const chunk of proc.output()) {
    assert.equal(chunk.text, chunk.data.toString());
    (chunk.stream === "stdout" ? out : err).push(chunk.text);
  }
  const r = await proc;
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, "", "piped output is not kept in the result");
  const expect = (p) => Array.from({ length: 200 }, (_, i) => `${p}${i + 1}\n`).join("");
  assert.equal(out.join(""), expect("out"));
  assert.equal(err.join(""), expect("err"));
});

test("async iteration and lines() of stdout", { skip }, async () => {
  const chunks = [];
  for await (const s of vm.exec("printf 'a\\nb\\nc'", { stdout: "pipe" })) chunks.push(s);
  assert.equal(chunks.join(""), "a\nb\nc");
  const lines = [];
  for await (const l of vm.exec("printf 'a\\nb\\nc'", { stdout: "pipe" }).lines()) lines.push(l);
  assert.deepEqual(lines, ["a", "b", "c"]);
  assert.throws(() => vm.exec("true")[Symbol.asyncIterator]().next(), /stdout is not piped/);
});

test("a slow consumer pauses the guest; host memory stays bounded", { skip }, async () => {
  const total = 50 * 1024 * 1024;
  const proc = vm.exec(`head -c ${total} /dev/zero; echo done >&2`, { stdout: "pipe", stderr: "pipe" });
  const base = rssOf(process.pid);
  let got = 0;
  let peak = 0;
  // Read 1 byte per ms for two seconds.
  const until = Date.now() + 2000;
  while (Date.now() < until) {
    const b = proc.stdout.read(1);
    if (b) got += b.length;
    peak = Math.max(peak, rssOf(process.pid) - base);
    await sleep(1);
  }
  assert.ok(got < 64 * 1024, `slow phase read ${got} bytes`);
  // The guest producer is blocked, not finished.
  const ps = await vm.exec("pgrep -x head");
  assert.equal(ps.exitCode, 0, "head is still running (paused by backpressure)");
  assert.ok(peak < 64 * 1024 * 1024, `RSS grew by ${(peak / 1048576).toFixed(1)} MiB`);
  // Now drain fast and check nothing was lost.
  for await (const chunk of proc.stdout) got += chunk.length;
  const r = await proc;
  assert.equal(got, total);
  assert.equal(r.exitCode, 0);
});

test("stdin: manual writes, piped Readable, binary-safe cat round trip", { skip }, async () => {
  const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  const input = new PassThrough();
  const p = vm.exec(["cat"], { stdin: input });
  input.write(bytes);
  input.end(bytes);
  const r = await p;
  assert.deepEqual(r.stdoutBuffer, Buffer.concat([bytes, bytes]));
  assert.throws(() => vm.exec("true").write("x"), /stdin was not enabled/);
});

test("pty: tty is a terminal and resize reaches stty", { skip }, async () => {
  const t = await vm.exec(["sh", "-c", "tty; stty size"], { pty: true, stdin: true });
  assert.match(t.stdout, /^\/dev\/pts\/\d+\r?\n24 80/);
  const p = vm.exec(["sh", "-c", "read x; stty size"], { pty: true, stdin: true });
  p.resize(40, 132);
  await sleep(100);
  p.write("go\n");
  const r = await p;
  assert.match(r.stdout, /40 132/);
});

test("kill() and abort stop the guest process group", { skip }, async () => {
  const p = vm.exec(["sh", "-c", "sleep 1000 & sleep 1000; wait"]);
  await sleep(300);
  assert.equal(p.kill("SIGKILL"), true);
  const r = await p;
  assert.equal(r.signal, 9);
  const left = await vm.exec("pgrep -x sleep || true");
  assert.equal(left.stdout.trim(), "", "the whole process group is gone");
});

test("20 concurrent execs, one running for the whole test", { skip }, async () => {
  const long = vm.exec(["sleep", "1000"]);
  const results = await Promise.all(Array.from({ length: 19 }, (_, i) => vm.exec(`echo ${i}`)));
  results.forEach((r, i) => assert.equal(r.stdout, `${i}\n`));
  long.kill("SIGTERM");
  assert.equal((await long).signal, 15);
});
