// Mapped TCP egress (`tcp.hosts`) against a real VM: host servers on
// 127.0.0.1 (an echo, a server that speaks first, redis-server) reached
// from the guest by name, with python sockets as the clients.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import { VM } from "@gondolin/native";
import { cli, vmSkip, sleep } from "./helpers.mjs";

const skip = vmSkip();
let vm;
let echoPort;
let bannerPort;
let redisPort;
let deadPort;
let redis;
const servers = [];
const events = [];

function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));
}

async function freePort() {
  const s = net.createServer();
  const port = await listen(s);
  await new Promise((r) => s.close(r));
  return port;
}

async function waitForPort(port, child) {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1", () => (c.destroy(), resolve(true)));
      c.on("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

before(async () => {
  if (skip) return;
  // Echo; the client's FIN ends the echo after everything was sent back.
  const echo = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {});
    s.pipe(s);
  });
  // Speaks first, then answers one line.
  const banner = net.createServer((s) => {
    s.on("error", () => {});
    s.write("220 banner.test ready\r\n");
    s.once("data", (d) => s.end(`250 got ${d.toString().trim()}\r\n`));
  });
  servers.push(echo, banner);
  echoPort = await listen(echo);
  bannerPort = await listen(banner);
  deadPort = await freePort();
  redisPort = await freePort();
  redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  await waitForPort(redisPort, redis);
  vm = await VM.create({
    tcp: {
      hosts: {
        "Echo.Internal.": `127.0.0.1:${echoPort}`, // every port; normalized
        "echo.internal:25": `127.0.0.1:${bannerPort}`, // HOST:PORT beats HOST
        "svc.internal:25": `localhost:${bannerPort}`,
        "svc.internal:6379": `127.0.0.1:${redisPort}`,
        "dead.internal:9": `127.0.0.1:${deadPort}`,
      },
    },
    onEgress: (e) => events.push(e),
  });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
  for (const s of servers) s.close();
  if (redis) redis.kill();
});

async function py(code) {
  const r = await vm.exec(["python3", "-c", code]);
  assert.equal(r.exitCode, 0, r.stderr);
  return r.stdout;
}

const PRELUDE = `
import socket, sys
def conn(host, port):
    s = socket.create_connection((host, port), timeout=20)
    return s
def read_all(s):
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b
`;

test("a mapped name reaches the host's echo server, half-close included", { skip }, async () => {
  const out = await py(`${PRELUDE}
print(socket.gethostbyname("echo.internal"))
data = bytes(range(256)) * 4096  # 1 MiB
s = conn("echo.internal", 7)
s.sendall(data)
s.shutdown(socket.SHUT_WR)  # half-close: the echo still comes back
got = read_all(s)
print(len(got), got == data)
`);
  const [ip, result] = out.trim().split("\n");
  assert.match(ip, /^198\.19\.\d+\.\d+$/, "per-host synthetic DNS was turned on");
  assert.equal(result, "1048576 True");
  // One record per flow, after it ended: bytes sent to the guest.
  let e;
  for (let i = 0; i < 50 && !(e = events.find((x) => x.host === "echo.internal:7")); i++) await sleep(100);
  assert.ok(e, JSON.stringify(events));
  assert.deepEqual(
    { protocol: e.protocol, decision: e.decision, bytes: e.bytes, reason: e.reason, url: e.url, method: e.method },
    { protocol: "tcp", decision: "allow", bytes: 1048576, reason: undefined, url: undefined, method: undefined },
  );
});

test("a server that speaks first works (no sniffing), and HOST:PORT beats HOST", { skip }, async () => {
  const out = await py(`${PRELUDE}
for host in ("svc.internal", "echo.internal"):
    s = conn(host, 25)
    f = s.makefile("rb")
    print(f.readline().decode().strip())
    s.sendall(b"HELO guest\\r\\n")
    print(f.readline().decode().strip())
`);
  assert.equal(out, "220 banner.test ready\n250 got HELO guest\n".repeat(2));
});

test("redis-server on the host through tcp.hosts (RESP PING/SET/GET)", { skip }, async () => {
  const out = await py(`${PRELUDE}
s = conn("svc.internal", 6379)
f = s.makefile("rb")
def cmd(*args):
    msg = b"*%d\\r\\n" % len(args) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(a), a) for a in args)
    s.sendall(msg)
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return f.read(n + 2)[:-2].decode()
    return line.decode().strip()
print(cmd(b"PING"))
print(cmd(b"SET", b"gondolin", b"mapped tcp"))
print(cmd(b"GET", b"gondolin"))
`);
  assert.equal(out, "+PONG\n+OK\nmapped tcp\n");
  const spy = spawnSync("redis-cli", ["-p", String(redisPort), "GET", "gondolin"], { encoding: "utf8" });
  if (spy.status === 0) assert.equal(spy.stdout.trim(), "mapped tcp", "the host's redis holds the value");
});

test("an unmapped port on a mapped name is refused; a dead upstream resets the flow", { skip }, async () => {
  const out = await py(`${PRELUDE}
# The host resets a flow whose upstream refused right after the handshake:
# the guest may see that in connect() already (ECONNRESET / ECONNREFUSED).
for host, port in (("svc.internal", 26), ("dead.internal", 9)):
    try:
        s = socket.create_connection((socket.gethostbyname(host), port), timeout=20)
        s.sendall(b"hello there\\r\\n")
        got = s.recv(100)
        print(host, "eof" if got == b"" else "data")
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        print(host, "reset")
`);
  assert.equal(out, "svc.internal reset\ndead.internal reset\n");
  let dead;
  for (let i = 0; i < 50 && !(dead = events.find((x) => x.host === "dead.internal:9")); i++) await sleep(100);
  assert.ok(dead, JSON.stringify(events));
  assert.equal(dead.decision, "deny");
  assert.match(dead.reason, new RegExp(`^upstream connect failed: 127\\.0\\.0\\.1:${deadPort}: `));
  const refused = events.find((x) => x.protocol === "tcp" && x.decision === "deny" && x.reason === "unknown-protocol");
  assert.ok(refused, "the unmapped flow went through sniffing and was refused");
});

/** This process's open TCP sockets connected to 127.0.0.1:port (Linux: /proc/net/tcp and /proc/self/fd). */
function ownSocketsTo(port) {
  const inodes = new Set();
  for (const line of fs.readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 9 && f[2] === `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`) inodes.add(f[9]);
  }
  let n = 0;
  for (const fd of fs.readdirSync("/proc/self/fd")) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`));
      if (m && inodes.has(m[1])) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

test("closing the VM closes its open mapped connections on the host", { skip }, async () => {
  // A server that keeps its side open and silent, whatever the guest does.
  let connected;
  const accepted = new Promise((resolve) => (connected = resolve));
  const quiet = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {});
    connected();
  });
  servers.push(quiet);
  const port = await listen(quiet);
  const other = await VM.create({ tcp: { hosts: { "quiet.internal": `127.0.0.1:${port}` } } });
  try {
    // A guest process that holds the connection open, in the background.
    const r = await other.exec(["/bin/bash", "-c", "exec 3<>/dev/tcp/quiet.internal/4000; setsid -f sleep 600 <&3 >/dev/null 2>&1; echo ok"]);
    assert.equal(r.stdout.trim(), "ok", r.stderr);
    await accepted;
    assert.equal(ownSocketsTo(port), 1, "the host holds the upstream connection");
  } finally {
    await other.close();
  }
  let left = 1;
  for (let i = 0; i < 50 && (left = ownSocketsTo(port)) > 0; i++) await sleep(100);
  assert.equal(left, 0, "the upstream socket was still open 5 s after close()");
});

test("tcp.hosts is checked at construction with upstream's messages", () => {
  const refused = (options, message) =>
    assert.throws(() => new VM(options), (err) => {
      assert.equal(err.code, "invalid_option");
      assert.equal(err.message, message);
      return true;
    });
  refused({ tcp: { hosts: { db: "127.0.0.1" } } }, "tcp.hosts value requires an explicit :PORT: 127.0.0.1");
  refused({ tcp: { hosts: { "*.db": "127.0.0.1:1" } } }, "tcp.hosts key does not support wildcard '*': *.db");
  refused({ tcp: { hosts: { "db.": "127.0.0.1:1", DB: "127.0.0.1:2" } } }, "duplicate tcp.hosts mapping for db");
  refused({ tcp: { hosts: { "[::1:5": "127.0.0.1:1" } } }, "tcp.hosts key has invalid bracket syntax: [::1:5");
  refused({ tcp: { hosts: { "db:70000": "127.0.0.1:1" } } }, "tcp.hosts key port must be in range 1..65535: db:70000");
  refused({ tcp: { hosts: { db: "127.0.0.1:1" } }, dns: { mode: "open" } }, "tcp host mapping requires dns mode 'synthetic'");
  refused(
    { tcp: { hosts: { db: "127.0.0.1:1" } }, dns: { syntheticHostMapping: "single" } },
    "tcp host mapping requires dns syntheticHostMapping='per-host'",
  );
  refused({ tcp: { host: {} } }, "unknown option tcp.host; did you mean tcp.hosts?");
});

test("--tcp-map: format errors and the DNS it needs", () => {
  const run = (...args) => spawnSync(process.execPath, [cli, "exec", ...args, "--", "true"], { encoding: "utf8", timeout: 60000 });
  let r = run("--tcp-map", "db.internal");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /Invalid --tcp-map format: db\.internal \(expected GUEST_HOST\[:PORT\]=UPSTREAM_HOST:PORT\)/);
  r = run("--tcp-map", "=127.0.0.1:5432");
  assert.match(r.stderr, /Invalid --tcp-map format: =127\.0\.0\.1:5432 /);
  r = run("--tcp-map", "db=127.0.0.1:5432", "--dns", "open");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--tcp-map requires --dns synthetic/);
  r = run("--tcp-map", "db=127.0.0.1");
  assert.equal(r.status, 1);
  assert.match(r.stderr, /tcp\.hosts value requires an explicit :PORT: 127\.0\.0\.1/);
});
