// The per-VM configuration the host sends once the guest is up (the
// `Configure` control message, our extension: upstream passes mounts on the
// kernel command line). Two shared VMs: one with network and 201 mounts
// (one with a space and a comma in its path), one without network.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { VM, MemoryProvider, RealFSProvider } from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const skip = vmSkip();
const ODD = "/odd dir, with comma";
const MANY = 200;
let vm; // network on, many mounts
let plain; // no network, no user mounts
let hostDir; // behind ODD

before(async () => {
  if (skip) return;
  hostDir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-configure-"));
  fs.writeFileSync(path.join(hostDir, "from-host.txt"), "host\n");
  const mounts = { [ODD]: new RealFSProvider(hostDir) };
  for (let i = 0; i < MANY; i++) mounts[`/many/m${i}`] = new MemoryProvider();
  vm = await VM.create({ vfs: { mounts } });
  plain = await VM.create({ sandbox: { netEnabled: false } });
});

after(async () => {
  await Promise.all([vm?.close(), plain?.close()]);
  if (hostDir) fs.rmSync(hostDir, { recursive: true, force: true });
});

async function ok(machine, script) {
  const r = await machine.exec(["/bin/sh", "-c", script]);
  assert.equal(r.exitCode, 0, `${script}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

test("the guest clock is the host's (within 1 s) after start", { skip }, async () => {
  for (const machine of [vm, plain]) {
    const before = Date.now();
    const guestNs = BigInt((await ok(machine, "date +%s%N")).trim());
    const after = Date.now();
    const guestMs = Number(guestNs / 1_000_000n);
    assert.ok(
      guestMs >= before - 1000 && guestMs <= after + 1000,
      `guest ${guestMs} vs host ${before}..${after}`,
    );
  }
});

test("two VMs read different kernel UUIDs and urandom bytes", { skip }, async () => {
  const read = "cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
  const [a, b] = await Promise.all([ok(vm, read), ok(plain, read)]);
  const [uuidA, bytesA] = a.trim().split("\n");
  const [uuidB, bytesB] = b.trim().split("\n");
  assert.match(uuidA, /^[0-9a-f-]{36}$/);
  assert.notEqual(uuidA, uuidB);
  assert.equal(bytesA.length, 32);
  assert.notEqual(bytesA, bytesB);
});

test("mounts come from Configure, not the kernel command line", { skip }, async () => {
  const cmdline = await ok(vm, "cat /proc/cmdline");
  for (const word of ["gondolin.fs", "gondolin.binds", "gondolin.net"]) {
    assert.ok(!cmdline.includes(word), `${word} in ${cmdline}`);
  }
  // A path with a space and a comma, both ways.
  assert.equal(await ok(vm, `cat '${ODD}/from-host.txt'`), "host\n");
  await ok(vm, `echo guest > '${ODD}/from-guest.txt'`);
  assert.equal(fs.readFileSync(path.join(hostDir, "from-guest.txt"), "utf8"), "guest\n");
});

test(`${MANY} mounts are all bound and separate`, { skip }, async () => {
  // Upstream once overflowed the kernel command line with many mounts.
  const count = await ok(vm, "grep -c ' /many/m[0-9]* fuse.sandboxfs ' /proc/mounts");
  assert.equal(Number(count), MANY);
  await ok(vm, `echo first > /many/m0/f && echo last > /many/m${MANY - 1}/f`);
  assert.equal(await ok(vm, `cat /many/m0/f /many/m${MANY - 1}/f`), "first\nlast\n");
  const r = await vm.exec(["/bin/sh", "-c", "cat /many/m1/f"]);
  assert.notEqual(r.exitCode, 0, "each mount has its own provider");
});

test("with network: eth0 is up and execs trust the MITM CA", { skip }, async () => {
  const env = await ok(vm, 'echo "$SSL_CERT_FILE|$NODE_EXTRA_CA_CERTS|$UV_SYSTEM_CERTS"');
  assert.equal(env, "/run/gondolin/ca-certificates.crt|/run/gondolin/mitm-ca.crt|true\n");
  const bundle = await ok(vm, 'grep -c "BEGIN CERTIFICATE" "$SSL_CERT_FILE"; cat /etc/resolv.conf');
  assert.ok(Number(bundle.split("\n")[0]) >= 1, bundle);
  assert.match(bundle, /nameserver 192\.168\.127\.1/);
  assert.match(await ok(vm, "cat /proc/net/route"), /^eth0\s+00000000\s+017FA8C0/m);
  // An exec's own value still wins.
  const mine = await vm.exec(["/bin/sh", "-c", 'echo "$SSL_CERT_FILE"'], { env: { SSL_CERT_FILE: "/mine" } });
  assert.equal(mine.stdout, "/mine\n");
});

test("without network: no CA variables and no VFS beyond the default", { skip }, async () => {
  assert.equal(await ok(plain, 'echo "[$SSL_CERT_FILE]"'), "[]\n");
  const r = await plain.exec(["/bin/sh", "-c", "grep -c ' /many/' /proc/mounts"]);
  assert.equal(r.stdout.trim(), "0");
});
