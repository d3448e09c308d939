// Boot templates (issue 15): VMs resumed from one saved guest instead of
// booting, each with its own identity, and a damaged template costing one
// cold boot at most, never a hung VM. Every VM here uses a fresh template
// directory (GONDOLIN_TEMPLATE_DIR), so the tests see the first build too.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { vmSkip } from "./helpers.mjs";
import { VM } from "../js/index.mjs";

const skip = vmSkip();
const tplRoot = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-tpl-test-"));
process.env.GONDOLIN_TEMPLATE_DIR = tplRoot;
after(() => fs.rmSync(tplRoot, { recursive: true, force: true }));

// A machine no other test file uses, so the template is this file's own.
const options = { memory: "768M", cpus: 1 };

async function sh(vm, script) {
  const r = await vm.exec(["/bin/sh", "-c", script]);
  assert.equal(r.exitCode, 0, r.stderr);
  return r.stdout;
}

function templateDirs() {
  return fs.readdirSync(tplRoot).filter((n) => !n.startsWith(".") && !n.endsWith(".lock"));
}

test("the first VM builds the template; the next ones resume from it with their own identity", { skip }, async () => {
  const first = await VM.create(options);
  await first.start();
  assert.equal(first.info.startedFrom, "template", "the first VM resumes from the template it just built");
  await first.close();
  const [dir] = templateDirs();
  assert.ok(dir, "a template directory exists");
  const mode = (p) => fs.statSync(path.join(tplRoot, dir, p)).mode & 0o777;
  assert.equal(mode("."), 0o700);
  for (const f of ["ram", "state", "meta.json", "disk.qcow2"]) assert.equal(mode(f), 0o600, f);

  const vms = await Promise.all([1, 2, 3].map(() => VM.create(options)));
  const tempDirs = [];
  try {
    const t0 = Date.now();
    const outs = await Promise.all(
      vms.map((vm) => sh(vm, "cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1; date +%s.%N")),
    );
    const host = Date.now() / 1000;
    for (const vm of vms) {
      assert.equal(vm.info.startedFrom, "template");
      tempDirs.push(vm.info.tempDir);
    }
    const lines = outs.map((o) => o.trim().split("\n"));
    assert.equal(new Set(lines.map((l) => l[0])).size, 3, "each VM has its own /proc/sys/kernel/random/uuid");
    assert.equal(new Set(lines.map((l) => l[1])).size, 3, "each VM reads its own /dev/urandom bytes");
    for (const l of lines) {
      const guest = Number(l[2]);
      assert.ok(Math.abs(guest - host) < 1 + (Date.now() - t0) / 1000, `guest clock ${guest} vs host ${host}`);
    }
    // One VM's writes stay its own (each has a private overlay).
    await sh(vms[0], "echo a > /etc/only-in-0");
    assert.notEqual((await vms[1].exec(["cat", "/etc/only-in-0"])).exitCode, 0);
  } finally {
    await Promise.all(vms.map((vm) => vm.close()));
  }
  for (const d of tempDirs) assert.equal(fs.existsSync(d), false, `${d} removed`);
});

test("a closed resumed VM leaves no temp dir", { skip }, async () => {
  const vm = await VM.create(options);
  await vm.start();
  const dir = vm.info.tempDir;
  assert.ok(fs.existsSync(dir));
  await vm.close();
  assert.equal(fs.existsSync(dir), false);
});

test("a truncated template is rebuilt; a damaged one costs one cold boot", { skip }, async () => {
  const [dir] = templateDirs();
  const state = path.join(tplRoot, dir, "state");
  // Truncated: caught before QEMU starts; rebuilt, and this VM resumes from it.
  fs.truncateSync(state, 1000);
  let vm = await VM.create(options);
  assert.equal((await sh(vm, "echo ok")).trim(), "ok");
  assert.equal(vm.info.startedFrom, "template");
  await vm.close();
  assert.ok(fs.statSync(state).size > 1000, "rebuilt");

  // Same size, bytes flipped: the load fails (checksum or QEMU itself);
  // the template is dropped and this VM boots the kernel.
  const fd = fs.openSync(state, "r+");
  const size = fs.fstatSync(fd).size;
  fs.writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, Math.floor(size / 2));
  fs.closeSync(fd);
  vm = await VM.create(options);
  assert.equal((await sh(vm, "echo ok")).trim(), "ok");
  assert.equal(vm.info.startedFrom, "boot");
  await vm.close();
  assert.equal(fs.existsSync(path.join(tplRoot, dir)), false, "the damaged template was removed");

  vm = await VM.create(options);
  await vm.start();
  assert.equal(vm.info.startedFrom, "template", "and the next start builds a new one");
  await vm.close();
});

test("a VM closed while it builds the first template leaves no build directory", { skip }, async () => {
  // A machine of its own: this start builds its template.
  const vm = await VM.create({ memory: "640M", cpus: 1 });
  const starting = vm.start().catch((e) => e);
  const builds = () => fs.readdirSync(tplRoot).filter((n) => n.startsWith(".build-"));
  const t0 = Date.now();
  while (builds().length === 0 && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 20));
  assert.ok(builds().length > 0, "the build directory never appeared");
  await vm.close();
  await starting;
  assert.deepEqual(builds(), [], "the cancelled build's directory is left behind");
});

test("bootSnapshot: false boots the kernel", { skip }, async () => {
  const vm = await VM.create({ ...options, sandbox: { bootSnapshot: false } });
  try {
    await vm.start();
    assert.equal(vm.info.startedFrom, "boot");
  } finally {
    await vm.close();
  }
});
