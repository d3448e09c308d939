// Remote VMs (our extension): `gondolin ws-server` children on 127.0.0.1 and
// VM.create({ remote }) in this process. One shared server and few VMs:
// each boot costs seconds under TCG.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawn, execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import http from "node:http";
import { VM, MemoryProvider, RealFSProvider, createHttpHooks } from "@gondolin/native";
import { vmSkip, cli, root, sleep, rssOf } from "./helpers.mjs";

const require = createRequire(import.meta.url);

const skip = vmSkip();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-remote-"));
const TOKEN = crypto.randomBytes(24).toString("hex");
const tokenFile = path.join(tmp, "token");
fs.writeFileSync(tokenFile, TOKEN + "\n");
const children = new Set();

/** Start `gondolin ws-server` on a free port; resolves { url, child, exited, log }. */
async function startServer(...args) {
  const env = { ...process.env };
  delete env.GONDOLIN_REMOTE;
  const child = spawn(process.execPath, [cli, "ws-server", "--port", "0", "--memory", "512M", ...args], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const s = { child, log: "" };
  child.stderr.on("data", (d) => (s.log += d));
  s.exited = new Promise((r) => child.once("exit", (code, sig) => (children.delete(child), r({ code, sig }))));
  s.url = await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    s.exited.then(({ code }) => reject(new Error(`ws-server exited ${code} before listening:\n${s.log}`)));
  });
  return s;
}

async function waitFor(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

/** How many VMs a server runs, from its /metrics gauge (`sessions` lists only the caller's own). */
async function serverVms(url) {
  const text = await (await fetch(`${url.replace(/^ws/, "http")}/metrics`)).text();
  const m = /^gondolin_remote_vms (\d+)$/m.exec(text);
  return m ? Number(m[1]) : NaN;
}

let server;
let vm;

before(async () => {
  if (skip) return;
  server = await startServer("--token-file", tokenFile, "--allow-internal-egress");
  vm = await VM.create({ remote: { url: server.url, token: TOKEN }, env: { VM_LEVEL: "vm" } });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close().catch(() => {});
  for (const c of children) c.kill("SIGKILL");
  fs.rmSync(tmp, { recursive: true, force: true });
});

test("exec: capture, stderr, exit code, env, cwd", { skip }, async () => {
  assert.ok(vm instanceof VM);
  const r = await vm.exec("echo hello; echo err >&2; exit 7");
  assert.deepEqual([r.stdout, r.stderr, r.exitCode], ["hello\n", "err\n", 7]);
  const e = await vm.exec("echo $VM_LEVEL $X; pwd", { env: { X: "x" }, cwd: "/tmp" });
  assert.equal(e.stdout, "vm x\n/tmp\n");
  const p = await vm.exec(["uname", "-s"]);
  assert.equal(p.stdout, "Linux\n");
  const k = vm.exec(["sleep", "30"]);
  await sleep(300);
  k.kill("SIGKILL");
  assert.equal((await k).signal, 9);
  const ac = new AbortController();
  const ab = vm.exec(["sleep", "30"], { signal: ac.signal });
  setTimeout(() => ac.abort(), 200);
  await assert.rejects(ab, (err) => err.code === "exec_aborted");
});

test("exec: stdin as a value, as a stream, and written piecewise", { skip }, async () => {
  const a = await vm.exec(["cat"], { stdin: "from a string" });
  assert.equal(a.stdout, "from a string");
  const big = crypto.randomBytes(3 * 1024 * 1024);
  const b = await vm.exec(["sha256sum"], { stdin: big });
  assert.equal(b.stdout.split(" ")[0], crypto.createHash("sha256").update(big).digest("hex"));
  const proc = vm.exec(["sh", "-c", "read l; echo got:$l; cat"], { stdin: true });
  proc.write("one\n");
  proc.write("two\n");
  proc.end();
  assert.equal((await proc).stdout, "got:one\ntwo\n");
});

test("exec: streaming output with backpressure, and a pty with resize", { skip }, async () => {
  const proc = vm.exec(["sh", "-c", "head -c 8000000 /dev/zero"], { stdout: "pipe" });
  let n = 0;
  for await (const c of proc.stdout) {
    n += c.length;
    if (n < 1e6) await sleep(1); // a slow reader for the first megabyte
  }
  assert.equal(n, 8000000);
  assert.equal((await proc).exitCode, 0);
  const t = vm.exec(["sh", "-c", "tty; read x; stty size"], { pty: true, stdin: true, stdout: "pipe" });
  let out = "";
  t.stdout.on("data", (d) => (out += d));
  await waitFor("the pty prompt", () => out.includes("/dev/pts/"));
  t.resize(33, 101);
  await sleep(200);
  t.write("\n");
  await t;
  assert.match(out, /33 101/);
});

test("a client that stops reading pauses the guest; the server's memory stays flat", { skip }, async () => {
  const proc = vm.exec(["sh", "-c", "head -c 200000000 /dev/zero; echo done >&2"], { stdout: "pipe", stderr: "pipe" });
  const r = proc.stdout;
  await new Promise((res) => r.once("readable", res));
  const base = rssOf(server.child.pid);
  await sleep(2500); // nobody reads: credit stops, the server stops pulling, the guest blocks
  const grown = rssOf(server.child.pid) - base;
  assert.ok(grown < 32 * 1024 * 1024, `server RSS grew ${grown} bytes while the client read nothing`);
  let n = 0;
  for await (const c of r) n += c.length;
  const res = await proc;
  assert.equal(n, 200000000);
  assert.equal(res.exitCode, 0);
});

test("vm.fs: a 20 MiB round trip, stat, listDir, mkdir, rename, delete, streams", { skip }, async () => {
  const data = crypto.randomBytes(20 * 1024 * 1024);
  await vm.fs.mkdir("/tmp/rt/sub", { recursive: true });
  await vm.fs.writeFile("/tmp/rt/big", data);
  const back = await vm.fs.readFile("/tmp/rt/big");
  assert.ok(back.equals(data));
  assert.equal((await vm.fs.stat("/tmp/rt/big")).size, data.length);
  assert.deepEqual(await vm.fs.listDir("/tmp/rt"), ["big", "sub"]);
  await vm.fs.rename("/tmp/rt/big", "/tmp/rt/moved");
  let n = 0;
  for await (const c of await vm.fs.readFileStream("/tmp/rt/moved")) n += c.length;
  assert.equal(n, data.length);
  await vm.fs.deleteFile("/tmp/rt", { recursive: true });
  await assert.rejects(vm.fs.stat("/tmp/rt"), (e) => e.code === "ENOENT");
  await assert.rejects(vm.fs.readFile("/nope"), (e) => e.code === "ENOENT");
});

function firstHostIp() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return null;
}

test("hooks and a VFS provider run in the client process", { skip }, async () => {
  const hostIp = firstHostIp();
  assert.ok(hostIp, "the host needs a non-loopback IPv4 address");
  const web = http.createServer((req, res) => res.end(`served ${req.url}\n`));
  await new Promise((r) => web.listen(0, "0.0.0.0", r));
  const base = `http://${hostIp}:${web.address().port}`;
  const seen = [];
  const mem = new MemoryProvider();
  await mem.writeFile("/from-client.txt", "written by the client\n");
  // createHttpHooks' rules go to the server; its isRequestAllowed callback stays here.
  const { httpHooks } = createHttpHooks({
    allowedHosts: [hostIp],
    allowedInternalHosts: [hostIp],
    isRequestAllowed: (req) => {
      seen.push(`${process.pid} ${new URL(req.url).pathname}`);
      return !req.url.endsWith("/deny");
    },
  });
  const egress = [];
  const v = await VM.create({
    remote: { url: server.url, token: TOKEN },
    httpHooks,
    vfs: {
      mounts: { "/mem": mem },
      hooks: {
        before(ctx) {
          if (ctx.path === "/mem/blocked.txt" && ctx.op === "open" && /[wa]/.test(ctx.flags)) {
            throw Object.assign(new Error(`blocked in ${process.pid}`), { code: "EACCES" });
          }
        },
        onRead: (p, data) => (p === "/mem/from-client.txt" ? Buffer.from(data.toString().toUpperCase()) : undefined),
      },
    },
    onEgress: (e) => egress.push(`${e.decision} ${e.url && new URL(e.url).pathname}`),
  });
  try {
    const get = async (p) => (await v.exec(`curl -s -m 20 -w ' %{http_code}' ${base}${p}`)).stdout;
    assert.equal(await get("/ok"), "served /ok\n 200");
    assert.match(await get("/deny"), / 403$/);
    assert.deepEqual(seen, [`${process.pid} /ok`, `${process.pid} /deny`]);
    await waitFor("onEgress records", () => egress.length >= 2);
    assert.deepEqual(egress.slice().sort(), ["allow /ok", "deny /deny"]);
    const c = await v.exec("cat /mem/from-client.txt; echo guest > /mem/from-guest.txt");
    assert.equal(c.stdout, "WRITTEN BY THE CLIENT\n", "the client's onRead hook rewrote the bytes");
    const b = await v.exec("echo x > /mem/blocked.txt");
    assert.notEqual(b.exitCode, 0);
    assert.match(b.stderr, /Permission denied/);
    assert.equal(await mem.readFile("/from-guest.txt", "utf8"), "guest\n");
    // A host-side edit after the guest looked reaches it at once (the cache is dropped across the connection).
    await mem.writeFile("/from-guest.txt", "host edit\n");
    assert.equal((await v.exec("cat /mem/from-guest.txt")).stdout, "host edit\n");
  } finally {
    await v.close();
    web.close();
  }
});

test("refusals: RealFSProvider, wrong token (401), bad option", { skip }, async () => {
  await assert.rejects(
    VM.create({ remote: { url: server.url, token: TOKEN }, vfs: { mounts: { "/h": new RealFSProvider(tmp) } } }),
    /RealFSProvider .*server's disk/,
  );
  await sleep(300); // metrics publish at most every 250 ms
  const before = await serverVms(server.url);
  await assert.rejects(VM.create({ remote: { url: server.url, token: "wrong-token" } }), (e) => /401/.test(e.message) && e.code === "remote_unauthorized");
  await assert.rejects(VM.create({ remote: { url: server.url } }), /401/);
  await sleep(300);
  assert.equal(await serverVms(server.url), before);
  await assert.rejects(VM.create({ remote: { url: server.url, token: TOKEN }, memory: () => 1 }), /not plain JSON/);
});

test("malformed frames close that connection with a reason; the server keeps serving", { skip }, async () => {
  const { native } = require("../js/native.cjs");
  for (const bad of ["{not json", '{"t":"exec.credit","sid":1,"bytes":-5}', Buffer.from([0, 0, 0, 1, 9, 0, 0, 0])]) {
    const conn = await native.remoteConnect(server.url, { token: TOKEN });
    await conn.send(bad);
    let batch;
    do batch = await conn.recv();
    while (batch.length > 0);
    assert.ok(conn.closeReason, `closed with a reason after ${bad}`);
    assert.equal(conn.closeCode, 4002, `protocol-error close code after ${bad}: ${conn.closeReason}`);
  }
});

test("a client killed mid-exec loses its VM on the server", { skip }, async () => {
  const script = `
    const { VM } = require(${JSON.stringify(path.join(root, "js", "index.cjs"))});
    (async () => {
      const vm = await VM.create({ remote: { url: process.argv[1], token: process.argv[2] } });
      const p = vm.exec(["sh", "-c", "echo started; sleep 100"], { stdout: "pipe" });
      p.stdout.once("data", () => console.log("RUNNING " + vm.id));
      await p;
    })();`;
  const child = spawn(process.execPath, ["-e", script, server.url, TOKEN], { stdio: ["ignore", "pipe", "inherit"] });
  const id = await new Promise((resolve) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = /RUNNING (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
  });
  assert.ok(server.log.includes(`vm ${id} created`));
  child.kill("SIGKILL");
  await waitFor("the server to close the killed client's VM", () => server.log.includes(`vm ${id} closed`), 10000);
});

test("detach keeps a VM across a disconnect; the token reattaches it", { skip }, async () => {
  const v = await VM.create({ remote: { url: server.url, token: TOKEN } });
  await v.exec("echo kept > /tmp/mark");
  const token = await v.detach();
  const again = await VM.create({ remote: { url: server.url, token: TOKEN, attach: token } });
  try {
    assert.equal(again.id, v.id);
    assert.equal((await again.exec("cat /tmp/mark")).stdout, "kept\n");
  } finally {
    await again.close();
  }
  await assert.rejects(VM.create({ remote: { url: server.url, token: TOKEN, attach: token } }), /no detached VM/);
});

test("two servers, one client: 10 VMs spread round robin; --max-vms is a clear error", { skip }, async () => {
  const other = await startServer("--token-file", tokenFile, "--max-vms", "5", "--memory", "256M");
  const urls = [server.url, other.url];
  const vms = [];
  try {
    for (let i = 0; i < 10; i++) vms.push(await VM.create({ remote: { url: urls[i % 2], token: TOKEN }, memory: "256M" }));
    await waitFor("the other server's gauge", async () => (await serverVms(other.url)) === 5);
    await assert.rejects(VM.create({ remote: { url: other.url, token: TOKEN } }), /--max-vms 5/);
    // Without --allow-internal-egress: mapped TCP is refused even with no HTTP policy sent (review 1).
    await assert.rejects(
      VM.create({ remote: { url: other.url, token: TOKEN }, memory: "256M", tcp: { hosts: { "db.x:6379": "127.0.0.1:6379" } } }),
      (e) => e.code === "invalid_option" && /tcp.*--allow-internal-egress/.test(e.message),
    );
    // Boot one on each server.
    const rs = await Promise.all([vms[0], vms[1]].map((v) => v.exec("echo up")));
    assert.deepEqual(rs.map((r) => r.stdout), ["up\n", "up\n"]);
  } finally {
    await Promise.all(vms.map((v) => v.close()));
    other.child.kill("SIGTERM");
    assert.equal((await other.exited).code, 0);
  }
});

test("wss:// with the server's certificate checked against a given CA", { skip }, async () => {
  const run = (...a) => execFileSync("openssl", a, { cwd: tmp, stdio: "pipe" });
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=remote-test-ca", "-keyout", "ca.key", "-out", "ca.pem");
  run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr");
  fs.writeFileSync(path.join(tmp, "ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
  run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "srv.pem");
  const s = await startServer("--token-file", tokenFile, "--tls-cert", path.join(tmp, "srv.pem"), "--tls-key", path.join(tmp, "srv.key"));
  try {
    assert.match(s.url, /^wss:\/\//);
    const ca = fs.readFileSync(path.join(tmp, "ca.pem"), "utf8");
    await assert.rejects(VM.create({ remote: { url: s.url, token: TOKEN } }), /UnknownIssuer|certificate/);
    const v = await VM.create({ remote: { url: s.url, token: TOKEN, ca } });
    try {
      assert.equal((await v.exec("echo over wss")).stdout, "over wss\n");
    } finally {
      await v.close();
    }
  } finally {
    s.child.kill("SIGTERM");
    await s.exited;
  }
});

test("SIGTERM drains: no new VMs, a running exec finishes, then exit 0", { skip }, async () => {
  const s = await startServer("--insecure-no-auth", "--drain-grace-ms", "20000");
  const v = await VM.create({ remote: { url: s.url } });
  await v.start();
  const proc = v.exec("sleep 2; echo finished");
  const web = s.url.replace(/^ws/, "http");
  // The transport's endpoints: ready, and our metrics after its own.
  assert.equal((await fetch(`${web}/readyz`)).status, 200);
  await sleep(400); // metrics publish at most every 250 ms
  const metrics = await (await fetch(`${web}/metrics`)).text();
  assert.match(metrics, /^gondolin_remote_vms 1$/m);
  assert.match(metrics, /^gondolin_remote_boots_total 1$/m);
  assert.match(metrics, /^gondolin_remote_execs_total \d+$/m);
  assert.match(metrics, /^gondolin_remote_exec_seconds_bucket\{le="\+Inf"\} \d+$/m);
  await sleep(300);
  s.child.kill("SIGTERM");
  await sleep(300);
  assert.equal((await fetch(`${web}/readyz`)).status, 503);
  await assert.rejects(VM.create({ remote: { url: s.url } }), /draining|503/);
  assert.equal((await proc).stdout, "finished\n");
  await v.close();
  const { code } = await s.exited;
  assert.equal(code, 0);
  assert.match(s.log, /drained/);
});

/** Live (not zombie) QEMU children of this process. */
function qemuChildren() {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
    } catch {
      continue;
    }
    // pid (comm) state ppid ...
    const m = /^\d+ \((.*)\) (\S) (\d+)/.exec(stat);
    if (m && m[1].startsWith("qemu") && m[2] !== "Z" && Number(m[3]) === process.pid) out.push(Number(d));
  }
  return out;
}

test("VM.close() during a boot that cannot finish kills QEMU and resolves at once (review 3)", { skip }, async () => {
  const before = new Set(qemuChildren());
  // A kernel command line with no usable init and no panic=-1: the guest never
  // gets ready and QEMU stays up, so only the 30 s start timeout would end the boot.
  const v = new VM({ sandbox: { append: "console=ttyS0 quiet rdinit=/nonexistent", bootSnapshot: false }, startTimeoutMs: 30000 });
  const started = v.start();
  started.catch(() => {});
  let pid;
  await waitFor("QEMU to start", () => (pid = qemuChildren().find((p) => !before.has(p))) !== undefined, 60000);
  await sleep(500);
  const t0 = Date.now();
  await v.close();
  const took = Date.now() - t0;
  assert.ok(took < 5000, `close() took ${took} ms during a boot`);
  await assert.rejects(started, (e) => e.code === "vm_closed");
  await waitFor("the QEMU process to go", () => !qemuChildren().includes(pid), 5000);
});

test("ws-server connection limits from the CLI: per-address cap and head timeout apply; bad values name the flag", async () => {
  const net = await import("node:net");
  const s = await startServer("--insecure-no-auth", "--max-http-per-ip", "1", "--http-head-timeout-ms", "300");
  const { port } = new URL(s.url);
  /** A raw connection: resolves "closed" when the server ends it, with how long it took. */
  const open = () => {
    const sock = net.connect(Number(port), "127.0.0.1");
    const t0 = Date.now();
    sock.data = "";
    sock.on("data", (d) => (sock.data += d));
    sock.ended = new Promise((r) => sock.on("close", () => r(Date.now() - t0)));
    sock.on("error", () => {});
    return new Promise((r) => sock.once("connect", () => r(sock)));
  };
  // An idle connection holds this address's one slot...
  const idle = await open();
  // ...so a second is closed unanswered, while the first is still open.
  const second = await open();
  second.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  await second.ended;
  assert.equal(second.data, "");
  // The idle one sent no head: closed after ~300 ms, not the default 10 s.
  const ms = await idle.ended;
  assert.ok(ms < 3000, `idle connection closed after ${ms} ms`);
  // The slot is free again.
  const res = await fetch(`http://127.0.0.1:${port}/healthz`);
  assert.equal(res.status, 200);
  s.child.kill("SIGTERM");
  await s.exited;

  const bad = spawn(process.execPath, [cli, "ws-server", "--insecure-no-auth", "--http-deadline-ms", "5"], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  bad.stderr.on("data", (d) => (err += d));
  const code = await new Promise((r) => bad.on("exit", r));
  assert.notEqual(code, 0);
  assert.match(err, /--http-deadline-ms must be an integer from 100 to 3600000 \(got 5\)/);
});
