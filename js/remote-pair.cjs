"use strict";
// Stand-ins for the native WebSocket transport (docs/REMOTE-TRANSPORT shape:
// RemoteConnection recv()/send()/close(), RemoteServer port/setReady/
// setMetrics/drain/close) so the protocol layer can be tested without it:
//
// - pair(): two connected ends in one process (unit tests).
// - devListen()/devConnect(): the same over a local TCP socket with a
//   length-prefixed framing, for tests that need separate processes. It is
//   NOT WebSocket and has no TLS: used only when the addon lacks
//   remoteListen/remoteConnect (js/remote-transport.cjs says so on stderr).

const net = require("node:net");
const { timingSafeEqual, createHash } = require("node:crypto");

const BATCH = 64;

/** One end: a bounded inbox the other end's send() fills. */
class QueueEnd {
  constructor(remoteAddress) {
    this.remoteAddress = remoteAddress;
    this.inbox = [];
    this.waiter = null;
    this.spaceWaiters = [];
    this.closed = false;
    this.closeCode = null;
    this.closeReason = null;
    this.onPull = null; // called when the inbox got room (TCP: resume the socket)
  }
  _deliver(msg) {
    this.inbox.push(msg);
    this._wake();
  }
  _wake() {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }
  _ended(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.closeCode = code;
    this.closeReason = reason;
    this._wake();
    for (const w of this.spaceWaiters.splice(0)) w();
  }
  async recv() {
    while (this.inbox.length === 0 && !this.closed) await new Promise((r) => (this.waiter = r));
    const out = this.inbox.splice(0, BATCH);
    for (const w of this.spaceWaiters.splice(0)) w();
    if (this.onPull) this.onPull();
    return out;
  }
}

/** Two connected in-process ends, [client, server]. */
function pair() {
  const a = new QueueEnd("in-process");
  const b = new QueueEnd("in-process");
  const wire = (self, other) => {
    self.send = async (data) => {
      if (self.closed) throw new Error("connection closed");
      while (other.inbox.length >= BATCH && !other.closed && !self.closed) {
        await new Promise((r) => other.spaceWaiters.push(r));
      }
      if (self.closed || other.closed) throw new Error("connection closed");
      other._deliver(typeof data === "string" ? data : Buffer.from(data));
    };
    self.close = (code = 1000, reason = "") => {
      self._ended(code, reason);
      other._ended(code, reason);
    };
  };
  wire(a, b);
  wire(b, a);
  return [a, b];
}

// ---- dev TCP transport: [u32 length][u8 type: 0 text, 1 binary, 2 close][payload] ----

const MAX_FRAME = 17 * 1024 * 1024;

function tcpEnd(sock) {
  // Small control messages must not wait for Nagle + delayed ACK (~40 ms).
  sock.setNoDelay(true);
  const end = new QueueEnd(`${sock.remoteAddress}:${sock.remotePort}`);
  let buf = Buffer.alloc(0);
  end.onPull = () => {
    if (end.inbox.length < BATCH) sock.resume();
  };
  sock.on("data", (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    while (buf.length >= 5) {
      const len = buf.readUInt32BE(0);
      if (len > MAX_FRAME) {
        end.close(1009, "frame too large");
        return;
      }
      if (buf.length < 5 + len) break;
      const type = buf[4];
      const payload = buf.subarray(5, 5 + len);
      buf = buf.subarray(5 + len);
      if (type === 0) end._deliver(payload.toString("utf8"));
      else if (type === 1) end._deliver(payload);
      else if (type === 2) {
        const m = JSON.parse(payload.toString());
        end._ended(m.code, m.reason);
        sock.end();
        return;
      }
    }
    if (end.inbox.length >= BATCH) sock.pause();
  });
  sock.on("close", () => end._ended(end.closeCode ?? 1006, end.closeReason ?? "connection lost"));
  sock.on("error", () => {});
  const frame = (type, payload) => {
    const head = Buffer.alloc(5);
    head.writeUInt32BE(payload.length, 0);
    head[4] = type;
    return Buffer.concat([head, payload]);
  };
  end.send = async (data) => {
    if (end.closed) throw new Error("connection closed");
    const payload = typeof data === "string" ? Buffer.from(data) : data;
    const head = Buffer.alloc(5);
    head.writeUInt32BE(payload.length, 0);
    head[4] = typeof data === "string" ? 0 : 1;
    sock.cork();
    sock.write(head);
    const ok = sock.write(payload);
    sock.uncork();
    if (!ok) await new Promise((r) => { sock.once("drain", r); sock.once("close", r); });
  };
  end.close = (code = 1000, reason = "") => {
    if (end.closed) return;
    try {
      sock.end(frame(2, Buffer.from(JSON.stringify({ code, reason }))));
    } catch {}
    end._ended(code, reason);
  };
  return end;
}

const digest = (s) => createHash("sha256").update(String(s)).digest();

async function devListen(opts, onConnection) {
  const token = opts.token ?? null;
  const state = { ready: true, draining: false, metrics: "" };
  const socks = new Set();
  const ends = new Set();
  const server = net.createServer((sock) => {
    socks.add(sock);
    sock.on("close", () => socks.delete(sock));
    sock.once("readable", function first() {
      // The first frame is the handshake: { token, path }.
      const head = sock.read(5);
      if (!head) return sock.once("readable", first);
      const len = head.readUInt32BE(0);
      if (len > 64 * 1024) return sock.destroy();
      const body = sock.read(len);
      if (!body) {
        sock.unshift(head);
        return sock.once("readable", first);
      }
      let hs;
      try {
        hs = JSON.parse(body.toString());
      } catch {
        return sock.destroy();
      }
      const reply = (status, reason) => sock.write(JSON.stringify({ status, reason }) + "\n");
      if (token !== null && !timingSafeEqual(digest(hs.token ?? ""), digest(token))) {
        reply(401, "remote refused the token (401)");
        return sock.end();
      }
      if (state.draining) {
        reply(503, "server is draining");
        return sock.end();
      }
      reply(101, "ok");
      const end = tcpEnd(sock);
      sock.resume();
      ends.add(end);
      sock.on("close", () => ends.delete(end));
      onConnection(end);
    });
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, resolve);
  });
  return {
    port: server.address().port,
    get metricsText() {
      return state.metrics;
    },
    setReady: (r) => (state.ready = r),
    setMetrics: (t) => (state.metrics = t),
    drain: () => {
      state.draining = true;
      state.ready = false;
    },
    close: async () => {
      for (const e of ends) e.close(1001, "server shutting down");
      await new Promise((r) => server.close(r));
      for (const s of socks) s.destroy();
    },
  };
}

async function devConnect(url, opts = {}) {
  const u = new URL(url);
  const sock = net.connect({ host: u.hostname, port: Number(u.port) || 80 });
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`connect to ${url} timed out`)), opts.timeoutMs ?? 10000);
    sock.once("connect", () => (clearTimeout(t), resolve()));
    sock.once("error", (e) => (clearTimeout(t), reject(e)));
  });
  const hs = Buffer.from(JSON.stringify({ token: opts.token ?? "", path: "/v1" }));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(hs.length, 0);
  sock.write(Buffer.concat([head, hs]));
  const line = await new Promise((resolve, reject) => {
    let acc = "";
    const onData = (d) => {
      const i = d.indexOf(10);
      if (i < 0) {
        acc += d.toString();
        return;
      }
      sock.off("data", onData);
      sock.pause();
      const rest = d.subarray(i + 1);
      if (rest.length) sock.unshift(rest);
      resolve(acc + d.subarray(0, i).toString());
    };
    sock.on("data", onData);
    sock.once("close", () => reject(new Error("remote closed the connection during the handshake")));
  });
  const r = JSON.parse(line);
  if (r.status !== 101) {
    sock.destroy();
    const err = new Error(r.reason);
    err.status = r.status;
    throw err;
  }
  const end = tcpEnd(sock);
  sock.resume();
  return end;
}

module.exports = { pair, devListen, devConnect };
