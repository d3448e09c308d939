// VM lifecycle with real QEMU: two VMs at once, rootfs modes, close during
// an exec, QEMU dying under a running exec, start timeout, cleanup.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { VM } from "@gondolin/native";
import { vmSkip, sleep } from "./helpers.mjs";

const skip = vmSkip();

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitGone(pid) {
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(50);
  return !alive(pid);
}

test("two VMs at once; readonly and memory rootfs modes; close during an exec", { skip }, async () => {
  const [ro, mem] = await Promise.all([
    VM.create({ rootfs: { mode: "readonly" }, memory: "512M", cpus: 1 }),
    VM.create({ rootfs: { mode: "memory" }, memory: "512M", cpus: 1 }),
  ]);
  try {
    await Promise.all([ro.start(), mem.start()]);
    assert.notEqual(ro.info.qemuPid, mem.info.qemuPid);

    const w = await ro.exec("touch /usr/gondolin-test");
    assert.notEqual(w.exitCode, 0);
    assert.match(w.stderr, /Read-only file system/);
    const tmp = await ro.exec("echo ok > /tmp/x && cat /tmp/x");
    assert.equal(tmp.stdout, "ok\n", "tmpfs stays writable on a readonly rootfs");

    const m = await mem.exec("echo kept > /usr/gondolin-test && cat /usr/gondolin-test");
    assert.equal(m.stdout, "kept\n");

    // Close `ro` while it runs a long command: the exec rejects, QEMU and temp files go.
    const { qemuPid, tempDir } = ro.info;
    const running = ro.exec("sleep 1000");
    await sleep(200);
    await Promise.all([ro.close(), ro.close()]);
    await assert.rejects(running, (e) => e.code === "vm_closed" && /closed/.test(e.message));
    assert.ok(await waitGone(qemuPid), "QEMU must be gone after close()");
    assert.equal(fs.existsSync(tempDir), false, "temp dir must be removed");
    await assert.rejects(ro.exec("true"), /closed/);

    // The other VM is unaffected.
    assert.equal((await mem.exec("echo still here")).stdout, "still here\n");
  } finally {
    await Promise.all([ro.close(), mem.close()]);
  }
});

test("QEMU killed with SIGKILL mid-exec: the exec rejects clearly, close() cleans up", { skip }, async () => {
  const vm = await VM.create({ memory: "512M", cpus: 1 });
  try {
    await vm.start();
    const { qemuPid, tempDir } = vm.info;
    const running = vm.exec("sleep 1000");
    await sleep(200);
    process.kill(qemuPid, "SIGKILL");
    const t0 = Date.now();
    await assert.rejects(running, (e) => {
      assert.equal(e.code, "vm_exited");
      assert.match(e.message, /VM exited unexpectedly: QEMU was killed by signal 9/);
      return true;
    });
    assert.ok(Date.now() - t0 < 5000, "the failure must be reported promptly");
    await assert.rejects(vm.exec("true"), /VM exited unexpectedly/);
    await vm.close();
    assert.equal(fs.existsSync(tempDir), false);
  } finally {
    await vm.close();
  }
});

test("start timeout rejects with vm_start_timeout and leaves nothing behind", { skip }, async () => {
  // A cold boot: resumed from a boot template the guest is ready within 300 ms.
  const vm = await VM.create({ startTimeoutMs: 300, sandbox: { bootSnapshot: false } });
  await assert.rejects(vm.start(), (e) => {
    assert.equal(e.code, "vm_start_timeout");
    assert.equal(e.message, "vm startup timed out after 300ms while waiting for guest readiness");
    return true;
  });
  await vm.close();
});

test("a missing QEMU binary gives an install hint", { skip }, async () => {
  const vm = await VM.create({ sandbox: { qemuPath: "/nonexistent/qemu-system-x86_64" } });
  await assert.rejects(vm.start(), (e) => e.code === "qemu_not_found" && /apt install qemu-system-x86/.test(e.message));
  await vm.close();
});
