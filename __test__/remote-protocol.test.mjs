// The remote protocol without VMs: wire checks, credit-based flow control
// end to end over an in-process pair (__test__/remote-pair.cjs), and the peer
// closing on a protocol violation. Fast; no guest needed.
import test from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const wire = require("../js/remote-wire.cjs");
const { pair } = require("./remote-pair.cjs");
const { Peer } = require("../js/remote-peer.cjs");
const { ServerExec } = require("../js/remote-server-exec.cjs");
const { RemoteExecChannel } = require("../js/remote-exec-channel.cjs");
const { ExecProcess } = require("../js/exec.cjs");

test("wire: unknown type, missing or mistyped field, bad frames are refused", () => {
  assert.throws(() => wire.decodeMessage('{"t":"nope","id":3}'), (e) => e.re === 3 && /unknown message type/.test(e.message));
  assert.throws(() => wire.decodeMessage('{"t":"exec.start","id":4}'), /missing field vm/);
  assert.throws(() => wire.decodeMessage('{"t":"exec.kill","sid":1,"signal":"x"}'), /signal is not a valid int/);
  assert.throws(() => wire.decodeMessage('{"t":"exec.end","sid":1,"extra":1}'), /unknown field extra/);
  assert.throws(() => wire.decodeMessage("not json"), /not JSON/);
  assert.throws(() => wire.decodeMessage(`{"t":"exec.credit","sid":1,"bytes":${wire.MAX_WINDOW_BYTES + 1}}`), /bytes/);
  assert.throws(() => wire.decodeData(Buffer.alloc(4)), /shorter/);
  const bad = wire.encodeData(1, "stdout", Buffer.alloc(1));
  bad[4] = 9;
  assert.throws(() => wire.decodeData(bad), /unknown kind/);
  assert.throws(() => wire.decodeData(Buffer.alloc(wire.HEADER_BYTES + wire.MAX_DATA_BYTES + 1, 0)), /unknown kind|more than/);
  const d = wire.decodeData(wire.encodeData(7, "stdin", Buffer.from("abc")));
  assert.deepEqual([d.sid, d.kind, d.data.toString()], [7, "stdin", "abc"]);
  const m = wire.decodeMessage(wire.encodeMessage({ t: "call", id: 1, vm: "v", kind: "vfs", call: { data: Buffer.from("x") } }));
  assert.ok(Buffer.isBuffer(m.call.data));
});

/** A NativeExec that produces `total` bytes of stdout in `chunk`-byte events, counting pulls. */
function fakeExec(total, chunk) {
  const f = {
    id: 1,
    produced: 0,
    pulls: 0,
    stdin: [],
    async next() {
      f.pulls++;
      if (f.produced >= total) {
        if (f.exited) return null;
        f.exited = true;
        return [{ kind: "exit", exitCode: 0 }];
      }
      const n = Math.min(chunk, total - f.produced);
      f.produced += n;
      return [{ kind: "stdout", data: Buffer.alloc(n, 0x61) }];
    },
    async write(b) {
      f.stdin.push(Buffer.from(b));
    },
    end() {
      f.ended = true;
    },
    kill() {},
    resize() {},
  };
  return f;
}

const metrics = { bytes() {}, execDone() {}, execStarted() {} };

function wirePair(native, window) {
  const [c, s] = pair();
  let ch;
  let ex;
  const server = new Peer(s, {
    request: async () => ({}),
    message: (m) => (m.t === "exec.credit" ? ex.grant(m.bytes) : m.t === "exec.end" ? ex.end() : null),
    data: (d) => ex.stdin(d.data),
  });
  const client = new Peer(c, {
    request: async () => ({}),
    message: (m) => ch[m.t === "stdin.credit" ? "onStdinCredit" : "onEnd"](m.t === "stdin.credit" ? m.bytes : m),
    data: (d) => ch.onData(d.kind, d.data),
  });
  server.run();
  client.run();
  ch = new RemoteExecChannel(client, 1, window, true);
  ex = new ServerExec(server, 1, native, window, true, metrics);
  return { ch, ex, server, client };
}

test("flow control: a consumer that stops reading stops the producer (bounded by the window)", async () => {
  const native = fakeExec(64 * 1024 * 1024, 64 * 1024);
  const window = 1024 * 1024;
  const { ch, ex } = wirePair(native, window);
  const done = ex.pump();
  const proc = new ExecProcess(Promise.resolve(ch), { stdout: "pipe" });
  // Nobody reads proc.stdout: the producer must stall near window + one batch + the pipe's mark.
  await new Promise((r) => setTimeout(r, 300));
  const stalled = native.produced;
  assert.ok(stalled <= 3 * window, `produced ${stalled} bytes with nobody reading`);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(native.produced, stalled, "producer kept going");
  let got = 0;
  for await (const chunk of proc.stdout) got += chunk.length;
  const r = await proc;
  assert.equal(r.exitCode, 0);
  assert.equal(got, 64 * 1024 * 1024);
  assert.equal((await done).exitCode, 0);
});

test("stdin: bytes arrive in order within the server's credit, then EOF", async () => {
  const native = fakeExec(0, 1);
  const { ch, ex } = wirePair(native, 1024 * 1024);
  const big = Buffer.alloc(3 * wire.STDIN_WINDOW_BYTES + 5, 7);
  await ch.write(Buffer.from("hello "));
  await ch.write(big);
  ch.end();
  await new Promise((r) => setTimeout(r, 200));
  const all = Buffer.concat(native.stdin);
  assert.equal(all.length, 6 + big.length);
  assert.equal(all.subarray(0, 6).toString(), "hello ");
  assert.ok(native.ended);
  await ex.pump();
});

test("a peer that sends beyond its credit is closed with a reason", async () => {
  const native = fakeExec(0, 1);
  native.write = () => new Promise(() => {}); // a guest that takes no stdin: credit never comes back
  const { server, client } = wirePair(native, 1024 * 1024);
  // Bypass the channel: push more stdin than the 1 MiB credit.
  for (let i = 0; i < 5; i++) await client.sendData(1, "stdin", Buffer.alloc(wire.MAX_DATA_BYTES)).catch(() => {});
  await server.done;
  assert.match(server.closeReason, /flow control violated/);
  assert.ok(client.closed);
});

test("a malformed frame closes the connection with a reason; a bad request gets an error reply", async () => {
  const [c, s] = pair();
  const server = new Peer(s, { request: async () => ({}), message: () => {}, data: () => {} });
  const client = new Peer(c, { request: async () => ({}), message: () => {}, data: () => {} });
  server.run();
  client.run();
  await assert.rejects(client.request({ t: "vm.start" }), (e) => e.code === "invalid_request" && /missing field vm/.test(e.message));
  await c.send("{not json");
  await server.done;
  assert.match(server.closeReason, /not JSON/);
});

test("metrics: Prometheus text with VMs, boots, execs, a latency histogram and bytes", () => {
  const { Metrics } = require("../js/remote-metrics.cjs");
  const m = new Metrics(() => 2);
  m.boot();
  m.execStarted();
  m.execDone(0.02);
  m.bytes("stdout", 10);
  const t = m.text();
  for (const line of [
    "gondolin_remote_vms 2",
    "gondolin_remote_boots_total 1",
    "gondolin_remote_execs_total 1",
    'gondolin_remote_exec_seconds_bucket{le="0.025"} 1',
    'gondolin_remote_exec_seconds_bucket{le="0.01"} 0',
    'gondolin_remote_exec_seconds_bucket{le="+Inf"} 1',
    "gondolin_remote_exec_seconds_count 1",
    'gondolin_remote_exec_bytes_total{stream="stdout"} 10',
  ]) {
    assert.ok(t.includes(line + "\n"), line);
  }
  if (m.timer) clearTimeout(m.timer);
});

test("server: option refusals, --max-memory, --max-vms and draining are clear errors (no boot)", async () => {
  const { RemoteServerCore } = require("../js/remote-server.cjs");
  const core = new RemoteServerCore({ memory: "256M", maxMemory: "700M", maxVms: 3 });
  const [c, s] = pair();
  core.accept(s);
  const client = new Peer(c, { request: async () => ({}), message: () => {}, data: () => {} });
  client.run();
  const create = (options = {}) => client.request({ t: "vm.create", options });
  await assert.rejects(create({ sandbox: { qemuPath: "/bin/x" } }), /sandbox\.qemuPath .*names a file on the server/);
  await assert.rejects(create({ sandbox: { imagePath: "/srv/img" } }), /path on the server's disk/);
  await assert.rejects(create({ remote: { url: "ws://x" } }), /option remote cannot be sent/);
  await assert.rejects(client.request({ t: "hello", v: 2 }), (e) => e.code === "protocol_mismatch");
  for (const net of [{ blockInternalRanges: false }, { allowedInternalHosts: ["10.0.0.1"] }, { tcpHosts: [["db", "127.0.0.1:5432"]] }]) {
    await assert.rejects(client.request({ t: "vm.create", options: {}, net }), /server's own network.*--allow-internal-egress/);
  }
  const a = await create();
  const b = await create();
  assert.equal(a.memory, 256 * 1024 * 1024);
  await assert.rejects(create(), (e) => e.code === "queue_full" && /--max-memory 700M/.test(e.message));
  const small = await create({ memory: "128M" });
  await assert.rejects(create({ memory: "128M" }), (e) => e.code === "queue_full" && /--max-vms 3/.test(e.message));
  const list = (await client.request({ t: "sessions" })).vms;
  assert.deepEqual(list.map((e) => e.vm).sort(), [a.vm, b.vm, small.vm].sort());
  core.draining = true;
  await assert.rejects(create({ memory: "128M" }), (e) => e.code === "invalid_state" && /draining/.test(e.message));
  client.close(1000, "done");
  await new Promise((r) => setTimeout(r, 100));
  await waitEmpty(core);
});

async function waitEmpty(core) {
  for (let i = 0; i < 50 && core.entries.size > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(core.entries.size, 0, "the disconnected client's VMs were closed");
}

/** An in-process server core and a client peer on it (no sockets, no boot unless asked). */
function coreAndClient(cfg = {}) {
  const { RemoteServerCore } = require("../js/remote-server.cjs");
  const core = new RemoteServerCore({ memory: "256M", ...cfg });
  const [c, s] = pair();
  const serverPeer = core.accept(s);
  const client = new Peer(c, { request: async () => ({}), message: () => {}, data: () => {} });
  client.run();
  return { core, client, serverPeer };
}

test("server: internal-network reach is refused on every path, not only in `net` (review 1)", async () => {
  const { core, client } = coreAndClient();
  const create = (options, extra = {}) => client.request({ t: "vm.create", options, ...extra });
  const internal = /server's own network.*--allow-internal-egress/;
  // Mapped TCP in the options, with no `net` at all: the VM's own network would carry it.
  await assert.rejects(create({ tcp: { hosts: { "db.x:6379": "127.0.0.1:6379" } } }), internal);
  await assert.rejects(create({ sandbox: { tcp: { hosts: { "db.x:6379": "127.0.0.1:6379" } } } }), internal);
  // DNS that forwards from the server.
  await assert.rejects(create({ dns: { mode: "open" } }), internal);
  await assert.rejects(create({ sandbox: { dns: { mode: "trusted", trustedServers: ["10.0.0.2"] } } }), internal);
  await assert.rejects(create({}, { net: { dnsMode: "open" } }), internal);
  await assert.rejects(create({}, { net: { dnsMode: "trusted", trustedServers: ["10.0.0.2"] } }), internal);
  assert.equal(core.entries.size, 0);
  client.close(1000, "done");
});

test("server: the VM's network is rebuilt from allowed fields with the server's clamps (review 1, 7)", () => {
  const { RemoteOptions } = require("../js/remote-server-options.cjs");
  const ro = new RemoteOptions({});
  const n = ro.net({ allowedHosts: ["example.com"], maxFlows: 1e9, maxHttpBodyBytes: 1e12, maxHttpResponseBodyBytes: 1e12, sshId: 7, events: true }, false);
  assert.equal(n.maxFlows, undefined, "unknown net fields are dropped");
  assert.equal(n.sshId, undefined);
  assert.equal(n.events, false);
  assert.equal(n.blockInternalRanges, true);
  assert.equal(n.maxHttpBodyBytes, 64 * 1024 * 1024);
  assert.equal(n.maxHttpResponseBodyBytes, 64 * 1024 * 1024);
  assert.deepEqual(n.allowedHosts, ["example.com"]);
  assert.throws(() => ro.net({ allowedHosts: ["x".repeat(5000)] }, false), /at most 4096 bytes/);
  const open = new RemoteOptions({ allowInternalEgress: true });
  assert.deepEqual(open.net({ tcpHosts: [["a:1", "127.0.0.1:1"]], blockInternalRanges: false }, false).tcpHosts, [["a:1", "127.0.0.1:1"]]);
});

test("server: raw QEMU options and host paths are refused, limits clamped (review 2, 3, 6, 7)", async () => {
  const { RemoteOptions } = require("../js/remote-server-options.cjs");
  const ro = new RemoteOptions({ maxCpus: 2 });
  for (const k of ["machineType", "cpu", "accel", "append", "qemuPath"]) {
    assert.throws(() => ro.vmOptions({ sandbox: { [k]: "q35,firmware=/etc/shadow" } }), new RegExp(`sandbox\\.${k} cannot be sent`));
  }
  assert.throws(() => ro.vmOptions({ sandbox: { rootOverlay: true } }), /rootOverlay/);
  assert.throws(() => ro.vmOptions({ kernel: "/boot/vmlinuz" }), /option kernel cannot be sent/);
  for (const sel of [".", "..", "./img", "../img", "/srv/img", "~/img", "a/../b", "a/./b"]) {
    assert.throws(() => ro.vmOptions({ sandbox: { imagePath: sel } }), /path on the server's disk|invalid image reference/, sel);
  }
  assert.equal(ro.vmOptions({ sandbox: { imagePath: "debian-base:latest" } }).sandbox.imagePath, "debian-base:latest");
  // A selector that names a directory in the server's cwd is never read as one.
  const fs = require("node:fs");
  const os = require("node:os");
  const path = require("node:path");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-sel-"));
  fs.mkdirSync(path.join(dir, "img"));
  const cwd = process.cwd();
  process.chdir(dir);
  try {
    assert.throws(() => ro.loadImage("img"), /image ref not found: img:latest/);
  } finally {
    process.chdir(cwd);
    fs.rmSync(dir, { recursive: true });
  }
  // Boots are always bounded.
  assert.equal(ro.vmOptions({}).startTimeoutMs, 300000);
  assert.equal(ro.vmOptions({ startTimeoutMs: 0 }).startTimeoutMs, 300000);
  assert.equal(ro.vmOptions({ startTimeoutMs: 1e12 }).startTimeoutMs, 300000);
  assert.equal(ro.vmOptions({ startTimeoutMs: 5000 }).startTimeoutMs, 5000);
  assert.equal(ro.vmOptions({ cpus: 255 }).cpus, 2);
  assert.equal(ro.vmOptions({ sandbox: { cpus: 64 } }).sandbox.cpus, 2);
  assert.equal(ro.vmOptions({ rootfs: { size: "16T" } }).rootfs.size, "16384M");
  assert.equal(ro.vmOptions({ rootfs: { size: "2G" } }).rootfs.size, "2G");
  assert.equal(ro.vmOptions({ maxHttpBodyBytes: 1e12 }).maxHttpBodyBytes, 64 * 1024 * 1024);
  assert.throws(() => ro.vmOptions({ env: { A: "x".repeat(300 * 1024) } }), /larger than/);
});

test("server: --max-vms and --max-memory have defaults sized for the host (review 7)", () => {
  const os = require("node:os");
  const { core } = coreAndClient();
  assert.ok(Number.isFinite(core.maxVms) && core.maxVms >= 8);
  assert.ok(core.maxMemoryBytes > 0 && core.maxMemoryBytes <= os.totalmem());
});

/** A fake VM whose start() resolves when `boot()` is called, and execs that run until killed or finished. */
function fakeVm() {
  let boot;
  const booted = new Promise((r) => (boot = r));
  const execs = [];
  const vm = {
    _closed: false,
    _native: {
      exec: async () => {
        let end;
        const ended = new Promise((r) => (end = r));
        const n = { id: execs.length, killed: null, finish: end, next: async () => (await ended, null), write: async () => {}, end() {}, resize() {} };
        n.kill = (sig) => ((n.killed = sig), end());
        execs.push(n);
        return n;
      },
    },
    start: () => booted,
    close: async () => {},
  };
  return { vm, boot, execs };
}

/** A server core with one fake VM "v" owned by a fake connection. */
function coreWithFakeVm(cfg = {}) {
  const { RemoteServerCore } = require("../js/remote-server.cjs");
  const core = new RemoteServerCore({ memory: "256M", ...cfg });
  const state = { execs: new Map(), pendingSids: new Set(), vms: new Set() };
  const peer = { closed: false, send: async () => {}, sendData: async () => {} };
  const f = fakeVm();
  const entry = { id: "v", vm: f.vm, peer, state };
  core.entries.set("v", entry);
  state.vms.add(entry);
  return { core, state, peer, f };
}

test("server: a stream id is reserved before the boot; concurrent starts cannot reuse it (review 5)", async () => {
  const { core, state, peer, f } = coreWithFakeVm();
  const start = (sid, extra = {}) => core.execStart(peer, state, { vm: "v", sid, argv: ["true"], env: [], stdin: false, window: 1024, ...extra });
  const first = start(1);
  await assert.rejects(start(1), /stream id 1 is in use/);
  f.boot();
  await first;
  await assert.rejects(start(1), /stream id 1 is in use/);
  // Per-string caps.
  await assert.rejects(start(2, { argv: ["x".repeat(200 * 1024)] }), /argv entry is longer/);
  await assert.rejects(start(2, { cwd: "/" + "d".repeat(5000) }), /cwd is longer/);
  await assert.rejects(core.request(peer, state, { t: "fs", vm: "v", op: "guestReadDir", args: ["/" + "d".repeat(5000)] }), /longer than 4096/);
  // A disconnect kills idle execs (they have no output that would notice).
  core.disconnected(peer, { execs: state.execs, pendingSids: new Set(), vms: new Set() }, "test");
  assert.equal(f.execs[0].killed, 9);
});

test("server: stdin credit comes from one server-wide budget (review 5)", async () => {
  const wire = require("../js/remote-wire.cjs");
  const { core, state, peer, f } = coreWithFakeVm({ stdinBudget: 2 * wire.STDIN_WINDOW_BYTES });
  f.boot();
  const start = (sid, stdin) => core.execStart(peer, state, { vm: "v", sid, argv: ["cat"], env: [], stdin, window: 1024 });
  await start(1, true);
  await start(2, true);
  await start(3, false); // no stdin, no budget
  await assert.rejects(start(4, true), (e) => e.code === "queue_full" && /stdin credit/.test(e.message));
  f.execs[0].finish();
  await new Promise((r) => setTimeout(r, 20));
  await start(5, true);
  for (const n of f.execs) n.finish();
});

test("server: `sessions` lists the caller's VMs only (review 10)", async () => {
  const { RemoteServerCore } = require("../js/remote-server.cjs");
  const core = new RemoteServerCore({ memory: "128M" });
  const clients = [0, 1].map(() => {
    const [c, s] = pair();
    core.accept(s);
    const client = new Peer(c, { request: async () => ({}), message: () => {}, data: () => {} });
    client.run();
    return client;
  });
  const a = await clients[0].request({ t: "vm.create", options: {} });
  const b = await clients[1].request({ t: "vm.create", options: {} });
  assert.deepEqual((await clients[0].request({ t: "sessions" })).vms.map((e) => e.vm), [a.vm]);
  assert.deepEqual((await clients[1].request({ t: "sessions" })).vms.map((e) => e.vm), [b.vm]);
  for (const c of clients) c.close(1000, "done");
  await waitEmpty(core);
});

test("server: fs ops, vfs hook phases and mounts are checked (own names only, counts capped)", async () => {
  const { core, state, peer } = coreWithFakeVm();
  for (const op of ["constructor", "toString", "__proto__"]) {
    await assert.rejects(core.request(peer, state, { t: "fs", vm: "v", op, args: [] }), /unknown vm.fs operation/);
  }
  const { client } = coreAndClient();
  await assert.rejects(client.request({ t: "vm.create", options: {}, vfsHooks: ["__proto__"] }), /unknown vfs hook/);
  const mounts = Array.from({ length: 65 }, (_, i) => ({ path: `/m${i}`, mid: i, readonly: false, symlinks: false }));
  await assert.rejects(client.request({ t: "vm.create", options: {}, mounts }), /more than 64 VFS mounts/);
  client.close(1000, "done");
});

test("server: HTTP hook names are the known ones", async () => {
  const { client } = coreAndClient();
  await assert.rejects(client.request({ t: "vm.create", options: {}, hooks: ["constructor"] }), /unknown HTTP hook "constructor"/);
  client.close(1000, "done");
});

test("wire: message types, fields and keys never come from the prototype chain", () => {
  for (const t of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
    assert.throws(() => wire.decodeMessage(JSON.stringify({ t, id: 5 })), (e) => e.re === 5 && /unknown message type/.test(e.message), t);
    assert.equal(wire.isRequest(t), false, t);
  }
  for (const k of ["constructor", "toString", "valueOf"]) {
    assert.throws(() => wire.decodeMessage(`{"t":"exec.end","sid":1,"${k}":1}`), /unknown field/, k);
  }
  const m = wire.decodeMessage('{"t":"vm.create","id":1,"options":{"__proto__":{"polluted":1},"a":{"__proto__":[1]}}}');
  assert.equal(Object.getPrototypeOf(m.options), Object.prototype);
  assert.equal(m.options.polluted, undefined);
  assert.deepEqual(Object.keys(m.options), ["__proto__", "a"]);
  assert.deepEqual(Object.getOwnPropertyDescriptor(m.options, "__proto__").value, { polluted: 1 });
  assert.equal(Object.getPrototypeOf(m.options.a), Object.prototype);
  // And back out unchanged.
  assert.equal(JSON.parse(wire.encodeMessage(m)).options.__proto__.polluted, 1);
  assert.equal({}.polluted, undefined);
});

/** A transport whose other side sends `next()` forever and never reads: send() never resolves. */
function deafConn(next) {
  const c = {
    recvCalls: 0,
    sends: 0,
    closeCode: null,
    closeReason: null,
    async recv() {
      await new Promise((r) => setImmediate(r));
      if (c.closeCode !== null) return [];
      c.recvCalls++;
      return Array.from({ length: 64 }, next);
    },
    send() {
      c.sends++;
      return new Promise(() => {});
    },
    close(code, reason) {
      c.closeCode = code;
      c.closeReason = reason;
    },
  };
  return c;
}

test("a client that pipelines requests and never reads the replies: the server stops reading at a bound", async () => {
  const { MAX_REPLY_BACKLOG } = require("../js/remote-peer.cjs");
  let id = 0;
  const conn = deafConn(() => JSON.stringify({ t: "sessions", id: ++id }));
  const peer = new Peer(conn, { request: async () => ({ vms: [] }), message: () => {}, data: () => {} });
  peer.run();
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(conn.sends <= MAX_REPLY_BACKLOG + 64, `${conn.sends} replies queued for a client that reads nothing`);
  assert.ok(conn.recvCalls <= MAX_REPLY_BACKLOG / 64 + 2, `recv() called ${conn.recvCalls} times`);
  // What is waiting is replies, not handlers.
  assert.equal(peer.inflight, 0);
  assert.ok(peer.replyBacklog >= MAX_REPLY_BACKLOG, `${peer.replyBacklog} replies waiting`);
  peer.close(1000, "done");
  await peer.done;
});

test("egress events to a client that does not read are dropped and counted, not queued", async () => {
  const { MAX_EVENT_BACKLOG } = require("../js/remote-peer.cjs");
  const conn = deafConn(() => "");
  const peer = new Peer(conn, { request: async () => ({}), message: () => {}, data: () => {} });
  for (let i = 0; i < 1000; i++) peer.send({ t: "egress", vm: "v", event: { i } }).catch(() => {});
  assert.equal(conn.sends, MAX_EVENT_BACKLOG);
  assert.equal(peer.droppedEvents, 1000 - MAX_EVENT_BACKLOG);
});

test("text frames: over 1 MiB only as a reply to our own request; a larger request closes the connection", async () => {
  const [c, s] = pair();
  const big = "x".repeat(wire.MAX_TEXT_BYTES);
  let handled = 0;
  const server = new Peer(s, { request: async () => (handled++, {}), message: () => {}, data: () => {} });
  const client = new Peer(c, { request: async () => ({ body: big }), message: () => {}, data: () => {} });
  server.run();
  client.run();
  // The server asked: a big answer is fine.
  assert.equal((await server.request({ t: "sessions" })).body.length, big.length);
  // Unasked: closed before it is parsed or handled.
  await c.send(JSON.stringify({ t: "fs", id: 1, vm: "v", op: "guestStat", args: [big, false] }));
  await server.done;
  assert.equal(handled, 0);
  assert.match(server.closeReason, /text frame over 1048576 bytes/);
});

test("repeated malformed requests close the connection", async () => {
  const { MAX_VIOLATIONS } = require("../js/remote-peer.cjs");
  const [c, s] = pair();
  const server = new Peer(s, { request: async () => ({}), message: () => {}, data: () => {} });
  const client = new Peer(c, { request: async () => ({}), message: () => {}, data: () => {} });
  server.run();
  client.run();
  const results = [];
  for (let i = 0; i < MAX_VIOLATIONS; i++) results.push(client.request({ t: "vm.start" }).catch((e) => e.code));
  const codes = await Promise.all(results);
  assert.deepEqual(codes.slice(0, MAX_VIOLATIONS - 1), Array(MAX_VIOLATIONS - 1).fill("invalid_request"));
  assert.equal(codes[MAX_VIOLATIONS - 1], "connection_closed");
  await server.done;
  assert.match(server.closeReason, /8 protocol violations within 10 s/);
});

test("a client with more requests than MAX_INFLIGHT queues them itself: all answered, no queue_full, no close", async () => {
  const [c, s] = pair();
  let busy = 0;
  let most = 0;
  const server = new Peer(s, {
    request: async () => {
      most = Math.max(most, ++busy);
      await new Promise((r) => setTimeout(r, 5));
      busy--;
      return {};
    },
    message: () => {},
    data: () => {},
  });
  const client = new Peer(c, { request: async () => ({}), message: () => {}, data: () => {} });
  server.run();
  client.run();
  const n = 3 * wire.MAX_INFLIGHT;
  const got = await Promise.allSettled(Array.from({ length: n }, () => client.request({ t: "sessions" })));
  assert.deepEqual(
    got.filter((r) => r.status === "rejected").map((r) => r.reason.code),
    [],
  );
  assert.ok(most <= wire.MAX_INFLIGHT, `${most} at once`);
  assert.equal(server.closed, false);
  client.close(1000, "done");
});
