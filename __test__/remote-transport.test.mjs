// The native remote transport (src/napi/remote.rs) on 127.0.0.1, no VMs:
// listen on port 0, connect, echo text and binary, 401 and 503, close codes
// both ways, and the health endpoints.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { native } = require("../js/native.cjs");

/** Listen on an ephemeral port; connections are pushed to `conns`. */
async function listen(opts = {}) {
  const conns = [];
  const waiters = [];
  const server = await native.remoteListen({ host: "127.0.0.1", port: 0, token: "t0k", ...opts }, (c) => {
    const w = waiters.shift();
    if (w) w(c);
    else conns.push(c);
  });
  const next = () => (conns.length ? Promise.resolve(conns.shift()) : new Promise((r) => waiters.push(r)));
  return { server, next, url: `ws://127.0.0.1:${server.port}` };
}

/** Echo until closed. */
async function echo(conn) {
  for (;;) {
    const batch = await conn.recv();
    if (batch.length === 0) return;
    for (const m of batch) await conn.send(m);
  }
}

/** Drain until recv() gives []; then { code, reason }. */
async function untilClosed(conn) {
  while ((await conn.recv()).length > 0);
  return { code: conn.closeCode, reason: conn.closeReason };
}

test("echo text and binary, then close codes both ways", async () => {
  const { server, next, url } = await listen();
  assert.ok(server.port > 0);
  const client = await native.remoteConnect(url, { token: "t0k" });
  const peer = await next();
  assert.match(peer.remoteAddress, /^127\.0\.0\.1:\d+$/);
  assert.equal(client.remoteAddress, `127.0.0.1:${server.port}`);
  const echoing = echo(peer);

  await client.send("héllo");
  await client.send(Buffer.from([0, 1, 2, 255]));
  const got = [];
  while (got.length < 2) got.push(...(await client.recv()));
  assert.equal(got[0], "héllo");
  assert.ok(Buffer.isBuffer(got[1]));
  assert.deepEqual([...got[1]], [0, 1, 2, 255]);

  assert.equal(client.closeCode, null);
  client.close(4000, "bye");
  assert.deepEqual(await untilClosed(client), { code: 4000, reason: "bye" });
  await echoing;
  assert.deepEqual({ code: peer.closeCode, reason: peer.closeReason }, { code: 4000, reason: "bye" });
  assert.throws(() => client.send("late"), { code: "connection_closed" });

  // The server closes this time.
  const c2 = await native.remoteConnect(url, { token: "t0k" });
  const p2 = await next();
  p2.close(4001, "done");
  assert.deepEqual(await untilClosed(c2), { code: 4001, reason: "done" });

  // Shutdown: 1001 for the open ones.
  const c3 = await native.remoteConnect(url, { token: "t0k" });
  await next();
  await server.close();
  assert.deepEqual(await untilClosed(c3), { code: 1001, reason: "server shutting down" });
});

test("wrong or missing token: remote_unauthorized, nothing handed over", async () => {
  let handed = 0;
  const server = await native.remoteListen({ host: "127.0.0.1", port: 0, token: "right" }, () => handed++);
  const url = `ws://127.0.0.1:${server.port}/`;
  for (const opts of [{}, { token: "wrong" }]) {
    await assert.rejects(native.remoteConnect(url, opts), (e) => {
      assert.equal(e.code, "remote_unauthorized");
      assert.match(e.message, /refused the token \(401\)/);
      return true;
    });
  }
  const res = await fetch(`http://127.0.0.1:${server.port}/v1`);
  assert.equal(res.status, 401);
  assert.equal(res.headers.get("www-authenticate"), "Bearer");
  assert.equal(handed, 0);
  await server.close();
});

test("health, readiness, metrics, 404, drain", async () => {
  const { server } = await listen();
  const base = `http://127.0.0.1:${server.port}`;
  assert.equal(await (await fetch(`${base}/healthz`)).text(), "ok\n");
  assert.equal((await fetch(`${base}/readyz`)).status, 200);
  server.setReady(false);
  assert.equal((await fetch(`${base}/readyz`)).status, 503);
  server.setReady(true);
  server.setMetrics("# TYPE gondolin_vms gauge\ngondolin_vms 2\n");
  const m = await fetch(`${base}/metrics`);
  assert.match(m.headers.get("content-type"), /^text\/plain; version=0\.0\.4/);
  const text = await m.text();
  assert.match(text, /^gondolin_remote_connections 0$/m);
  assert.match(text, /gondolin_vms 2\n$/);
  assert.equal((await fetch(`${base}/elsewhere`)).status, 404);
  server.drain();
  assert.equal((await fetch(`${base}/readyz`)).status, 503);
  await assert.rejects(native.remoteConnect(`ws://127.0.0.1:${server.port}`, { token: "t0k" }), (e) => {
    assert.equal(e.code, "remote_unavailable");
    assert.match(e.message, /draining/);
    return true;
  });
  await server.close();
});

test("bad options name the fix", async () => {
  await assert.rejects(native.remoteListen({ host: "0.0.0.0", port: 0 }, () => {}), (e) => {
    assert.equal(e.code, "invalid_option");
    assert.match(e.message, /--token-file/);
    assert.match(e.message, /--insecure-no-auth/);
    return true;
  });
  await assert.rejects(native.remoteListen({ host: "localhost", port: 0, token: "x" }, () => {}), { code: "invalid_option" });
  await assert.rejects(native.remoteConnect("http://127.0.0.1:1", {}), { code: "invalid_option" });
  await assert.rejects(native.remoteConnect("ws://127.0.0.1:1", { timeoutMs: 2000 }), { code: "io_error" });
});

test("sends keep call order when the queue fills and messages are held", async () => {
  const { server, next, url } = await listen();
  const client = await native.remoteConnect(url, { token: "t0k" });
  const peer = await next();
  // 16 MiB in 64 KiB binaries with a numbered text after each, none
  // awaited: twice the queue's byte budget, so most are held, not queued.
  const held = [];
  let queued = 0;
  for (let i = 0; i < 256; i++) {
    const chunk = Buffer.alloc(64 * 1024, i & 0xff);
    for (const m of [chunk, `n${i}`]) {
      const p = client.send(m);
      if (p) held.push(p);
      else queued++;
    }
  }
  assert.ok(held.length > 0 && queued > 0, `queued ${queued}, held ${held.length}`);
  const got = [];
  while (got.length < 512) got.push(...(await peer.recv()));
  for (let i = 0; i < 256; i++) {
    assert.ok(Buffer.isBuffer(got[2 * i]) && got[2 * i][0] === (i & 0xff), `binary ${i} out of order`);
    assert.equal(got[2 * i + 1], `n${i}`);
  }
  await Promise.all(held);
  // Held messages of a connection that closes reject, never hang.
  const late = [];
  for (let i = 0; i < 300; i++) {
    const p = client.send(Buffer.alloc(64 * 1024));
    if (p) late.push(p.then(() => "queued", (e) => e.code));
  }
  assert.ok(late.length > 0, "nothing held");
  client.close(4001, "gone");
  const outcomes = await Promise.all(late);
  assert.ok(outcomes.includes("connection_closed"), `held sends after close: ${[...new Set(outcomes)]}`);
  assert.ok(outcomes.every((o) => o === "queued" || o === "connection_closed"), String([...new Set(outcomes)]));
  assert.throws(() => client.send("after"), { code: "connection_closed" });
  await server.close();
});

test("oversized message: 1009 for that connection, the server serves the next", async () => {
  const { server, next, url } = await listen({ maxMessageBytes: 4096 });
  const big = await native.remoteConnect(url, { token: "t0k", maxMessageBytes: 1 << 20 });
  const peer = await next();
  await big.send(Buffer.alloc(8192, 1));
  const st = await untilClosed(big);
  assert.equal(st.code, 1009);
  assert.match(st.reason, /4096/);
  assert.equal((await untilClosed(peer)).code, 1009);

  const ok = await native.remoteConnect(url, { token: "t0k" });
  echo(await next());
  await ok.send("fine");
  assert.deepEqual(await ok.recv(), ["fine"]);
  ok.close();
  await server.close();
});

test("a peer that does not read stops send() resolving; reading resumes it", async () => {
  const { server, next, url } = await listen({ token: null });
  const client = await native.remoteConnect(url, { token: null });
  const peer = await next(); // does not read for now
  const chunk = Buffer.alloc(64 * 1024, 7);
  let sent = 0;
  const stalled = () => new Promise((r) => setTimeout(() => r("stalled"), 500));
  for (;;) {
    const r = await Promise.race([Promise.resolve(client.send(chunk)).then(() => "sent"), stalled()]);
    if (r === "stalled") break;
    sent++;
    assert.ok(sent < 1024, "64 MiB queued without the peer reading");
  }
  assert.ok(sent >= 8, `stalled early: ${sent}`);
  let got = 0;
  while (got < sent) got += (await peer.recv()).length;
  client.close();
  await server.close();
});

test("a peer that keeps the read queue full cannot hold the JS thread: the protocol's read loop yields", async () => {
  const { spawn } = await import("node:child_process");
  const { Peer } = require("../js/remote-peer.cjs");
  const { server, next, url } = await listen({ token: null });
  const N = 30000;
  // The flood comes from another process (a loop here would hold this thread itself).
  const flood = `
    const { native } = require(${JSON.stringify(require.resolve("../js/native.cjs"))});
    (async () => {
      const c = await native.remoteConnect(process.argv[1], { token: null });
      const m = JSON.stringify({ t: "exec.end", sid: 1 });
      for (let i = 0; i < ${N}; i++) { const p = c.send(m); if (p) await p; }
      while ((await c.recv()).length > 0);
    })();`;
  const child = spawn(process.execPath, ["-e", flood, url], { stdio: "inherit" });
  const conn = await next();
  let got = 0;
  // ~100 µs of work per message (a busy handler): the reader refills
  // the transport's queue faster than this side empties it.
  const work = () => {
    const end = process.hrtime.bigint() + 100000n;
    while (process.hrtime.bigint() < end);
    got++;
  };
  const peer = new Peer(conn, { request: async () => ({}), message: work, data: () => {} });
  peer.run();
  let last = Date.now();
  let worst = 0;
  const tick = setInterval(() => {
    const now = Date.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 5);
  while (got < N) await new Promise((r) => setTimeout(r, 20));
  clearInterval(tick);
  peer.close(1000, "done");
  await new Promise((r) => child.on("exit", r));
  await server.close();
  assert.ok(worst < 1000, `timers waited ${worst} ms while ${N} messages were read`);
});
