// vm.enableSsh(): the host's ssh, scp and rsync reach the guest's own sshd
// (listening on the guest's loopback only) through a host port piped over
// the VM's network stack. One shared VM.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { VM } from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const skip = vmSkip();
let vm;
let access;
let work;

before(async () => {
  if (skip) return;
  work = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-ssh-in-"));
  vm = await VM.create();
  access = await vm.enableSsh();
});

after(async () => {
  await vm?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

function run(cmd, args) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** The access's own options, as `ssh`/`scp -o` arguments. */
function sshOpts() {
  return [
    "-i", access.identityFile,
    "-o", "IdentitiesOnly=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
  ];
}

test("enableSsh gives upstream's access shape and a working command", { skip }, async () => {
  assert.equal(access.host, "127.0.0.1");
  assert.ok(access.port > 0);
  assert.equal(access.user, "root");
  assert.equal(fs.statSync(access.identityFile).mode & 0o777, 0o600);
  assert.match(access.command, new RegExp(`^ssh -p ${access.port} -i ${access.identityFile} .*root@127\\.0\\.0\\.1$`));
  const r = await run("sh", ["-c", `${access.command} -o LogLevel=ERROR 'id -un; true'`]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "root\n");
  const f = await run("ssh", ["-p", String(access.port), ...sshOpts(), "root@127.0.0.1", "false"]);
  assert.equal(f.code, 1, "the remote exit status comes back");
});

test("a second enableSsh returns the same access", { skip }, async () => {
  assert.equal(await vm.enableSsh(), access);
});

test("scp and rsync -e ssh round-trip a file", { skip }, async () => {
  const src = path.join(work, "blob");
  const data = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  fs.writeFileSync(src, data);
  let r = await run("scp", ["-P", String(access.port), ...sshOpts(), src, "root@127.0.0.1:/tmp/blob"]);
  assert.equal(r.code, 0, r.stderr);
  r = await run("scp", ["-P", String(access.port), ...sshOpts(), "root@127.0.0.1:/tmp/blob", `${src}.back`]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(fs.readFileSync(`${src}.back`).equals(data));
  const e = `ssh -p ${access.port} ${sshOpts().join(" ")}`;
  r = await run("rsync", ["-a", "-e", e, src, "root@127.0.0.1:/tmp/rsynced"]);
  assert.equal(r.code, 0, r.stderr);
  const sum = await vm.exec(["sh", "-c", "cmp /tmp/blob /tmp/rsynced && echo same"]);
  assert.equal(sum.stdout, "same\n");
});

test("the guest's sshd listens on its loopback only", { skip }, async () => {
  const r = await vm.exec(["sh", "-c", "cat /proc/net/tcp | awk '$4 == \"0A\" {print $2}'"]);
  const listeners = r.stdout.trim().split("\n");
  assert.ok(listeners.includes("0100007F:0016"), r.stdout); // 127.0.0.1:22
  assert.ok(!listeners.some((l) => l.endsWith(":0016") && l !== "0100007F:0016"), r.stdout);
});

test("an unknown user is refused with upstream's message; nothing is left behind", { skip }, async () => {
  const other = await VM.create();
  try {
    const before = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith("gondolin-ssh-")).length;
    await assert.rejects(other.enableSsh({ user: "nobody-here" }), {
      code: "invalid_option",
      message: "ssh user 'nobody-here' does not exist in guest image (vm.enableSsh({ user }))",
    });
    const after = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith("gondolin-ssh-")).length;
    assert.equal(after, before, "the key directory is removed");
    await assert.rejects(other.enableSsh({ listenPort: 70000 }), { code: "invalid_option" });
  } finally {
    await other.close();
  }
});

test("close() stops the port and removes the key", { skip }, async () => {
  const dir = path.dirname(access.identityFile);
  await access.close();
  assert.equal(fs.existsSync(dir), false);
  const r = await run("ssh", ["-p", String(access.port), ...sshOpts(), "-o", "ConnectTimeout=3", "root@127.0.0.1", "true"]);
  assert.notEqual(r.code, 0);
  const again = await vm.enableSsh();
  assert.notEqual(again, access, "a closed access is not handed out again");
  const ok = await run("ssh", ["-p", String(again.port), "-i", again.identityFile, "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", "true"]);
  assert.equal(ok.code, 0, ok.stderr);
});

test("gondolin bash --ssh prints a command that logs in; the key goes with the VM", { skip }, async () => {
  const { spawn } = await import("node:child_process");
  const { cli } = await import("./helpers.mjs");
  const child = spawn(process.execPath, [cli, "bash", "--ssh", "--", "sh", "-c", "sleep 60"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  const command = await new Promise((resolve, reject) => {
    child.stderr.on("data", (d) => {
      stderr += d;
      const m = /^SSH enabled: (ssh -p \d+ .*)$/m.exec(stderr);
      if (m) resolve(m[1]);
    });
    child.on("exit", () => reject(new Error(`gondolin bash exited: ${stderr}`)));
  });
  const key = /-i (\S+)/.exec(command)[1];
  const r = await run("sh", ["-c", `${command} -o LogLevel=ERROR 'echo hi from $(hostname)'`]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^hi from /);
  const exited = new Promise((resolve) => child.on("exit", resolve));
  child.kill("SIGTERM");
  await exited;
  assert.equal(fs.existsSync(key), false, "closing the VM removes the key");
});
