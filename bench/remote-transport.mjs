#!/usr/bin/env node
// The native remote transport (remoteListen/remoteConnect) over loopback,
// one process, no VMs. Prints JSON.
//   echoP50Us / echoP99Us: a 32-byte text message JS → Rust → WebSocket →
//                  Rust → JS (server echoes it) and back, awaited one at a
//                  time (REMOTE_BENCH_ROUNDS, default 2000, after 200 warm-up)
//   oneWayMiBps:   64 KiB binary messages client → server, REMOTE_BENCH_MIB
//                  (default 256) MiB, timed until the server's JS took the last
//   baseline:      the same two with a raw node `net` socket (echo of 32
//                  bytes; 64 KiB writes one way), measured in the same run
//   ratio:         transport / baseline for both
import net from "node:net";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { native } = require("../js/native.cjs");

const ROUNDS = Number(process.env.REMOTE_BENCH_ROUNDS || 2000);
const MIB = Number(process.env.REMOTE_BENCH_MIB || 256);
const CHUNK = 64 * 1024;
const round = (x, d = 2) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const nowUs = () => Number(process.hrtime.bigint()) / 1000;

/** Reads as the protocol does (js/remote-peer.cjs): tryRecv(), and onReadable when nothing is queued. */
function reader(conn) {
  let wake = null;
  conn.onReadable(() => {
    const w = wake;
    wake = null;
    if (w) w();
  });
  return async () => {
    for (;;) {
      const batch = conn.tryRecv();
      if (batch !== null) return batch;
      await new Promise((r) => (wake = r));
    }
  };
}

/** send() is null when queued at once, else a promise to await (backpressure). */
async function send(conn, m) {
  const p = conn.send(m);
  if (p) await p;
}

async function transport() {
  let onConn;
  const conns = [];
  const server = await native.remoteListen({ host: "127.0.0.1", port: 0, token: "bench" }, (c) =>
    onConn ? onConn(c) : conns.push(c),
  );
  const nextConn = () => (conns.length ? Promise.resolve(conns.shift()) : new Promise((r) => (onConn = r)));
  const url = `ws://127.0.0.1:${server.port}`;

  // Echo round trips.
  const client = await native.remoteConnect(url, { token: "bench" });
  const peer = await nextConn();
  onConn = null;
  const peerNext = reader(peer);
  (async () => {
    for (;;) {
      const batch = await peerNext();
      if (batch.length === 0) return;
      for (const m of batch) await send(peer, m);
    }
  })();
  const msg = "x".repeat(32);
  const times = [];
  const clientNext = reader(client);
  for (let i = 0; i < ROUNDS + 200; i++) {
    const t0 = nowUs();
    await send(client, msg);
    const got = await clientNext();
    if (got.length !== 1) throw new Error(`echo: got ${got.length} messages`);
    if (i >= 200) times.push(nowUs() - t0);
  }
  client.close();

  // One way: 64 KiB binary.
  const sender = await native.remoteConnect(url, { token: "bench" });
  const sink = await nextConn();
  const total = MIB * 1024 * 1024;
  const chunk = Buffer.alloc(CHUNK, 0x61);
  const t0 = nowUs();
  const sinkNext = reader(sink);
  const received = (async () => {
    let n = 0;
    while (n < total) {
      const batch = await sinkNext();
      if (batch.length === 0) throw new Error("sink closed early");
      for (const m of batch) n += m.length;
    }
    return nowUs();
  })();
  for (let sent = 0; sent < total; sent += CHUNK) await send(sender, chunk);
  const t1 = await received;
  sender.close();
  await server.close();
  return {
    echoP50Us: pct(times, 50),
    echoP99Us: pct(times, 99),
    oneWayMiBps: MIB / ((t1 - t0) / 1e6),
  };
}

async function baseline() {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise((r) => echo.listen(0, "127.0.0.1", r));
  const sock = net.connect(echo.address().port, "127.0.0.1");
  sock.setNoDelay(true);
  await new Promise((r) => sock.once("connect", r));
  const msg = Buffer.alloc(32, 0x78);
  const times = [];
  let waiting = null;
  let have = 0;
  sock.on("data", (d) => {
    have += d.length;
    if (have >= 32 && waiting) {
      have -= 32;
      const w = waiting;
      waiting = null;
      w();
    }
  });
  for (let i = 0; i < ROUNDS + 200; i++) {
    const t0 = nowUs();
    await new Promise((r) => {
      waiting = r;
      sock.write(msg);
    });
    if (i >= 200) times.push(nowUs() - t0);
  }
  sock.destroy();
  echo.close();

  const total = MIB * 1024 * 1024;
  const sinkServer = net.createServer();
  const done = new Promise((resolve) =>
    sinkServer.on("connection", (s) => {
      let n = 0;
      s.on("data", (d) => {
        n += d.length;
        if (n >= total) resolve(nowUs());
      });
    }),
  );
  await new Promise((r) => sinkServer.listen(0, "127.0.0.1", r));
  const out = net.connect(sinkServer.address().port, "127.0.0.1");
  await new Promise((r) => out.once("connect", r));
  const chunk = Buffer.alloc(CHUNK, 0x61);
  const t0 = nowUs();
  for (let sent = 0; sent < total; sent += CHUNK) {
    if (!out.write(chunk)) await new Promise((r) => out.once("drain", r));
  }
  const t1 = await done;
  out.destroy();
  sinkServer.close();
  return { echoP50Us: pct(times, 50), echoP99Us: pct(times, 99), oneWayMiBps: MIB / ((t1 - t0) / 1e6) };
}

const base = await baseline();
const ws = await transport();
console.log(
  JSON.stringify(
    {
      rounds: ROUNDS,
      mib: MIB,
      transport: { echoP50Us: round(ws.echoP50Us, 1), echoP99Us: round(ws.echoP99Us, 1), oneWayMiBps: round(ws.oneWayMiBps, 1) },
      baseline: { echoP50Us: round(base.echoP50Us, 1), echoP99Us: round(base.echoP99Us, 1), oneWayMiBps: round(base.oneWayMiBps, 1) },
      ratio: {
        echoP50: round(ws.echoP50Us / base.echoP50Us),
        oneWay: round(ws.oneWayMiBps / base.oneWayMiBps),
      },
    },
    null,
    2,
  ),
);
