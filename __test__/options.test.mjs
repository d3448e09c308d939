// VMOptions as users copy them from upstream's docs: upstream 0.13 options
// (tmpfs, autoStart, getHostPid, debug + debugLog), the seeds' spellings
// (a mount at /data, sandbox.rootOverlay, debug: ["*"]) and option checks.
// One shared VM for the whole file.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { createRequire } from "node:module";
import { VM, MemoryProvider, DEFAULT_GUEST_TMPFS } from "@gondolin/native";
import { vmSkip, sleep } from "./helpers.mjs";

const require = createRequire(import.meta.url);
const { resolveOptions } = require("../js/options.cjs");
const skip = vmSkip();

test("unknown or bad options fail at construction with invalid_option and the nearest key", async () => {
  const refused = (options, re) =>
    assert.throws(() => new VM(options), (err) => err.code === "invalid_option" && re.test(err.message));
  refused({ memroy: "1G" }, /unknown option memroy; did you mean memory\?/);
  refused({ sandbox: { debg: true } }, /unknown option sandbox\.debg; did you mean sandbox\.debug\?/);
  refused({ vfs: { fuseMnt: "/x" } }, /unknown option vfs\.fuseMnt; did you mean vfs\.fuseMount\?/);
  refused({ zzzzzzzz: 1 }, /unknown option zzzzzzzz; valid keys: sandbox, rootfs/);
  refused({ ssh: { allowHosts: [] } }, /unknown option ssh\.allowHosts; did you mean ssh\.allowedHosts\?/);
  refused({ ssh: { allowedHosts: ["git.test"] } }, /ssh egress requires at least one credential or ssh agent/);
  refused({ sandbox: { debug: ["nett"] } }, /did you mean "net"\?/);
  refused({ tmpfs: { "/proc": {} } }, /reserved path: \/proc/);
  refused({ tmpfs: { "/tmp": { size: "0" } } }, /tmpfs size for \/tmp/);
  refused({ vfs: { fuseMount: "/data", mounts: { "/data/x": new MemoryProvider() } } }, /collides with vfs\.fuseMount \/data/);
  refused({ sandbox: { rootOverlay: true }, rootfs: { mode: "readonly" } }, /contradicts rootfs\.mode/);
  refused({ dns: { mode: "x" } }, /dns\.mode must be/);
  refused({ rootfs: { size: "4096" } }, /^rootfs\.size must be a size like "8G" or "10240M" \(got "4096"\)$/);
  refused({ rootfs: { size: 4 } }, /rootfs\.size must be a size like "8G"/);
  refused({ rootfs: { size: "32T" } }, /at most 16T/);
  refused({ rootfs: { mode: "readonly", size: "4G" } }, /rootfs\.size needs a writable root disk/);
  // Refused by VM.create, before any image work or boot.
  await assert.rejects(VM.create({ memory: "32M" }), (err) => err.code === "invalid_option" && /at least 128M/.test(err.message));
  // rootOverlay: true = writable discarded root (cow); false = read-only root.
  assert.equal(resolveOptions({ sandbox: { rootOverlay: true } }).rootfsMode, "cow");
  assert.equal(resolveOptions({ sandbox: { rootOverlay: false } }).rootfsMode, "readonly");
  assert.deepEqual(Object.keys(DEFAULT_GUEST_TMPFS), ["/tmp", "/root", "/var/tmp", "/var/cache", "/var/log"]);
});

const lines = [];
const data = new MemoryProvider();
let vm;
after(() => vm && vm.close());

test("autoStart: false creates the VM stopped; use before start() is refused; getHostPid is QEMU's pid", { skip }, async () => {
  vm = await VM.create({
    autoStart: false,
    memory: "512M",
    // The seeds' spellings: a mount at /data, rootOverlay, debug ["*"] with sandbox.debugLog.
    vfs: { mounts: { "/data": data } },
    tmpfs: { "/tmp": { size: "64m" }, "/scratch": { size: "16m", mode: "0750" } },
    sandbox: { rootOverlay: true, debug: ["*"], debugLog: (component, message) => lines.push([component, message]) },
  });
  assert.equal(vm.info, null);
  assert.equal(vm.getHostPid(), null);
  assert.equal(lines.length, 0, "nothing logged, nothing booted");
  await assert.rejects(vm.exec("echo up"), { code: "vm_not_started", message: /call vm\.start\(\) first/ });
  assert.equal(vm.getHostPid(), null, "a refused use does not boot");
  await vm.start();
  const r = await vm.exec("echo up");
  assert.equal(r.stdout, "up\n");
  const pid = vm.getHostPid();
  assert.equal(typeof pid, "number");
  assert.match(fs.readFileSync(`/proc/${pid}/cmdline`, "utf8"), /qemu-system/);
});

test("autoStart defaults to true: VM.create() does not boot; the first use does", { skip }, async () => {
  const lazy = await VM.create({ memory: "256M", vfs: null, sandbox: { netEnabled: false } });
  try {
    assert.equal(lazy.getHostPid(), null, "create() alone boots nothing (as upstream)");
    assert.equal((await lazy.exec("echo hi")).stdout, "hi\n");
    assert.equal(typeof lazy.getHostPid(), "number");
  } finally {
    await lazy.close();
  }
  assert.equal(lazy.getHostPid(), null, "null after close");
});

test("tmpfs: per-path size and mode; paths left out stay on the root disk", { skip }, async () => {
  const r = await vm.exec("df -k /tmp /scratch | tail -n 2; stat -c %a /scratch; grep -c ' /var/tmp tmpfs' /proc/mounts || true");
  const [tmp, scratch, mode, varTmp] = r.stdout.trim().split("\n");
  assert.equal(tmp.split(/\s+/)[1], "65536");
  assert.equal(scratch.split(/\s+/)[1], "16384");
  assert.equal(mode, "750");
  assert.equal(varTmp, "0");
});

test("a mount at /data works: the FUSE root moves out of the way", { skip }, async () => {
  const r = await vm.exec("echo from-guest > /data/g.txt && cat /data/g.txt && grep -c ' /run/gondolin/vfs fuse.sandboxfs' /proc/mounts");
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, "from-guest\n1\n");
  assert.equal(await data.readFile("/g.txt", "utf8"), "from-guest\n");
  assert.equal(await vm.fs.readFile("/data/g.txt", { encoding: "utf8" }), "from-guest\n");
});

test("rootfs.size grows the disk and the guest's filesystem; it never shrinks", { skip }, async () => {
  const big = await VM.create({ rootfs: { size: "4G" }, sandbox: { netEnabled: false } });
  try {
    const r = await big.exec("df -B1 --output=size / | tail -n 1; dd if=/dev/zero of=/var/big bs=1M count=1024 status=none && echo wrote");
    assert.equal(r.exitCode, 0, r.stderr);
    const [size, wrote] = r.stdout.trim().split("\n");
    assert.ok(Number(size) >= 3.5 * 2 ** 30, `df / says ${size} bytes`);
    assert.equal(wrote, "wrote", "1 GiB more than the image had room for");
  } finally {
    await big.close();
  }
  await assert.rejects(
    VM.create({ rootfs: { size: "512M" }, sandbox: { netEnabled: false } }).then((v) => v.exec("true")),
    (err) => err.code === "invalid_option" && /rootfs\.size \(512M\) is smaller than the root disk \(\d+M\); it can only grow/.test(err.message),
  );
});

test("sandbox.rootOverlay: true gives a writable root", { skip }, async () => {
  const r = await vm.exec("echo x > /usr/local/overlay.txt && cat /usr/local/overlay.txt");
  assert.equal(r.stdout, "x\n", r.stderr);
});

test("UV_SYSTEM_CERTS is set beside the other trust variables", { skip }, async () => {
  const r = await vm.exec("printenv UV_SYSTEM_CERTS SSL_CERT_FILE NODE_EXTRA_CA_CERTS");
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout.split("\n")[0], "true");
});

test("debug: the callback gets component-tagged lines; setDebugLog swaps or silences it", { skip }, async () => {
  const components = new Set(lines.map(([c]) => c));
  for (const c of ["vm", "exec", "vfs"]) assert.ok(components.has(c), `no "${c}" line in ${JSON.stringify([...components])}`);
  assert.ok(lines.some(([c, m]) => c === "vm" && /running: accel/.test(m)));
  assert.ok(lines.some(([c, m]) => c === "vfs" && /\/g\.txt/.test(m)), "guest file operations on /data are logged");
  // exec lines carry env keys, never values.
  await vm.exec("true", { env: { SECRET_NAME: "hunter2" } });
  const execLine = lines.find(([c, m]) => c === "exec" && m.includes("SECRET_NAME"));
  assert.ok(execLine);
  assert.ok(!lines.some(([, m]) => m.includes("hunter2")));
  const other = [];
  vm.setDebugLog((c, m) => other.push([c, m]));
  const before = lines.length;
  await vm.exec("true");
  assert.equal(lines.length, before);
  assert.ok(other.some(([c]) => c === "exec"));
  vm.setDebugLog(null);
  const n = other.length;
  await vm.exec("true");
  assert.equal(other.length, n);
});

test("deleteFile of a missing path with recursive rejects with FileNotFound and ENOENT", { skip }, async () => {
  for (const p of ["/tmp/missing-dir", "/data/missing-dir"]) {
    await assert.rejects(
      vm.fs.deleteFile(p, { recursive: true }),
      (err) => err.code === "ENOENT" && err.message === `failed to delete guest file '${p}': FileNotFound`,
    );
    await vm.fs.deleteFile(p, { recursive: true, force: true });
  }
});
