"use strict";
// One end of a remote-protocol connection: reads frames in order, checks
// each one (js/remote-wire.cjs), answers requests, matches replies to the
// requests it sent, and closes the connection with a reason when the other
// side breaks the protocol. Used by the server and the client alike.

const wire = require("./remote-wire.cjs");

/**
 * Close codes in the application range (the transport sends only 1000 and
 * 3000–4999 itself), mirroring RFC 6455's 1002 and 1008: a malformed
 * message, and a policy violation (flow control, a message out of place).
 */
const CLOSE_PROTOCOL = 4002;
const CLOSE_POLICY = 4008;

/**
 * Replies given to the transport but not yet in its send queue (the other
 * side is not reading): past either bound the peer stops calling recv(), so
 * a client that pipelines requests without reading the answers is pushed
 * back by TCP instead of growing this process's memory.
 */
const MAX_REPLY_BACKLOG = 256;
const MAX_REPLY_BACKLOG_BYTES = 16 * 1024 * 1024;
/**
 * Events (`egress` records: informational, no reply, nobody awaits them)
 * not yet queued: past this, new ones are dropped and counted in
 * `droppedEvents`.
 */
const MAX_EVENT_BACKLOG = 64;
const DROPPABLE = new Set(["egress"]);
/** Batches read in a row before the read loop yields to the event loop. */
const SYNC_BATCHES_PER_TURN = 8;
/** What a send that is already queued returns (no promise per message). */
const RESOLVED = Promise.resolve();
/**
 * Requests refused as malformed (`invalid_request`: they fail their checks
 * but carry an id): this many within VIOLATION_WINDOW_MS close the
 * connection.
 */
const MAX_VIOLATIONS = 8;
const VIOLATION_WINDOW_MS = 10_000;

class Peer {
  /**
   * @param conn a RemoteConnection (recv/send/close)
   * @param handlers { request(msg) → Promise<reply fields>, message(msg), data({sid, kind, data}), closed(reason) }
   * @param opts { maxTextBytes } the largest text frame accepted that is not
   *   a reply to our own request (default wire.MAX_TEXT_BYTES, 1 MiB; the
   *   client, whose server sends hook requests carrying bodies, raises it)
   */
  constructor(conn, handlers, opts = {}) {
    this.conn = conn;
    this.maxTextBytes = opts.maxTextBytes ?? wire.MAX_TEXT_BYTES;
    this.h = handlers;
    this.nextId = 1;
    this.pending = new Map();
    this.inflight = 0;
    this.closed = false;
    this.closeReason = null;
    this.replyBacklog = 0;
    this.replyBacklogBytes = 0;
    this.roomWaiter = null;
    /** Set while _next() waits for the native transport to call back. */
    this._readableWaiter = null;
    this._readableSet = false;
    /** Batches taken without yielding to the event loop, in a row. */
    this._syncBatches = 0;
    this.eventBacklog = 0;
    /** Events dropped because the other side was not reading. */
    this.droppedEvents = 0;
    this.violations = [];
    /** Our requests sent and not answered, and those waiting to be sent. */
    this.outstanding = 0;
    this.turnWaiters = [];
  }

  /** Start reading; resolves when the connection ended. */
  run() {
    this.done = this._read();
    return this.done;
  }

  async _read() {
    try {
      for (;;) {
        // Replies backed up: read nothing more until they drain (or close).
        if (this._backedUp()) await new Promise((r) => (this.roomWaiter = r));
        const batch = await this._next();
        if (batch.length === 0) break;
        for (const m of batch) {
          if (this.closed) break;
          if (typeof m === "string") this._text(m);
          else this._binary(m);
        }
      }
    } catch (err) {
      this.close(CLOSE_PROTOCOL, `read failed: ${err.message}`);
    }
    this._ended(this.conn.closeReason || (this.conn.closeCode ? `closed (${this.conn.closeCode})` : "connection closed"));
  }

  /**
   * The next batch. The native transport hands over what is queued without
   * a promise (tryRecv) and calls back once more arrives; a transport with
   * only recv() (test stand-ins) is awaited.
   */
  _next() {
    const conn = this.conn;
    if (typeof conn.tryRecv !== "function") return conn.recv();
    if (!this._readableSet) {
      this._readableSet = true;
      conn.onReadable(() => {
        const w = this._readableWaiter;
        this._readableWaiter = null;
        if (w) w();
      });
    }
    const batch = conn.tryRecv();
    if (batch !== null) {
      // A peer that keeps the queue full would otherwise hold the JS thread
      // in microtasks: give timers, I/O and other connections their turn.
      if (++this._syncBatches < SYNC_BATCHES_PER_TURN) return batch;
      this._syncBatches = 0;
      return new Promise((r) => setImmediate(r, batch));
    }
    this._syncBatches = 0;
    return new Promise((r) => (this._readableWaiter = r)).then(() => this._next());
  }

  _ended(reason) {
    if (this.closeReason === null) this.closeReason = reason;
    this.closed = true;
    this._room();
    for (const w of this.turnWaiters.splice(0)) w();
    for (const p of this.pending.values()) p.reject(closedError(this.closeReason));
    this.pending.clear();
    if (!this._closedCalled) {
      this._closedCalled = true;
      this.h.closed?.(this.closeReason);
    }
  }

  _binary(buf) {
    let d;
    try {
      d = wire.decodeData(buf);
    } catch (e) {
      return this.close(CLOSE_PROTOCOL, e.message);
    }
    try {
      this.h.data(d);
    } catch (e) {
      this.close(CLOSE_POLICY, e.message);
    }
  }

  _text(text) {
    // Control messages are small; only a reply to one of our own requests
    // (a hook's answer) may be larger. Checked before parsing.
    const max = this.maxTextBytes;
    const big = text.length > max || (text.length > max / 3 && Buffer.byteLength(text) > max);
    if (big && this.pending.size === 0) {
      return this.close(CLOSE_POLICY, `text frame over ${max} bytes (send bytes in binary frames)`);
    }
    let msg;
    try {
      msg = wire.decodeMessage(text);
    } catch (e) {
      if (e.re !== undefined && !big) {
        if (this._violation(e.message)) return;
        this._reply({ t: "err", re: e.re, code: "invalid_request", message: e.message });
        return;
      }
      return this.close(CLOSE_PROTOCOL, e.message);
    }
    if (big && msg.t !== "ok" && msg.t !== "err") {
      return this.close(CLOSE_POLICY, `${msg.t}: text frame over ${max} bytes (only a reply may be larger)`);
    }
    if (msg.t === "ok" || msg.t === "err") {
      const p = this.pending.get(msg.re);
      if (!p) return this.close(CLOSE_PROTOCOL, `reply to unknown request ${msg.re}`);
      this.pending.delete(msg.re);
      if (msg.t === "ok") p.resolve(msg);
      else p.reject(remoteError(msg));
      return;
    }
    if (wire.isRequest(msg.t)) {
      if (this.inflight >= wire.MAX_INFLIGHT) {
        this._reply({ t: "err", re: msg.id, code: "queue_full", message: `more than ${wire.MAX_INFLIGHT} requests in flight` });
        return;
      }
      // In flight while its handler runs; its reply then counts in the
      // reply backlog until the transport has queued it (no gap between).
      this.inflight++;
      Promise.resolve()
        .then(() => this.h.request(msg))
        .finally(() => this.inflight--)
        .then(
          (fields) => this._reply({ ...(fields || {}), t: "ok", re: msg.id }),
          (err) => this._reply({ t: "err", re: msg.id, code: errCode(err), message: String((err && err.message) || err) }),
        );
      return;
    }
    try {
      this.h.message(msg);
    } catch (e) {
      this.close(CLOSE_POLICY, e.message);
    }
  }

  /** Records one violation; true (and closed) once there were too many lately. */
  _violation(what) {
    const now = Date.now();
    this.violations.push(now);
    while (this.violations.length > 0 && now - this.violations[0] > VIOLATION_WINDOW_MS) this.violations.shift();
    if (this.violations.length < MAX_VIOLATIONS) return false;
    this.close(CLOSE_POLICY, `${MAX_VIOLATIONS} protocol violations within ${VIOLATION_WINDOW_MS / 1000} s, the last: ${what}`);
    return true;
  }

  _backedUp() {
    return !this.closed && (this.replyBacklog >= MAX_REPLY_BACKLOG || this.replyBacklogBytes >= MAX_REPLY_BACKLOG_BYTES);
  }

  _room() {
    if (this.roomWaiter && !this._backedUp()) {
      const w = this.roomWaiter;
      this.roomWaiter = null;
      w();
    }
  }

  /** Send a reply; resolves (never rejects) once it is queued or failed. */
  _reply(msg) {
    let text;
    try {
      text = this._encode(msg);
    } catch (e) {
      text = this._encode({ t: "err", re: msg.re, code: "io_error", message: `reply not sent: ${e.message}` });
    }
    if (this.closed) return Promise.resolve();
    this.replyBacklog++;
    this.replyBacklogBytes += text.length;
    const settled = () => {
      this.replyBacklog--;
      this.replyBacklogBytes -= text.length;
      this._room();
    };
    const queued = this._queue(text);
    if (queued === undefined) {
      settled();
      return RESOLVED;
    }
    return queued.then(
      () => {},
      () => {},
    ).finally(settled);
  }

  /**
   * Hand one frame to the transport, in call order: undefined when it is
   * queued already (the common case, no promise made), else a promise that
   * settles once it is queued or failed.
   */
  _queue(data) {
    try {
      // The native transport returns null when queued; the stand-in a promise.
      return this.conn.send(data) ?? undefined;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  _encode(msg) {
    return wire.encodeMessage(msg);
  }

  /**
   * Send one message; resolves once queued (await it for backpressure).
   * An event (`egress`) is dropped instead, counted in `droppedEvents`, when
   * MAX_EVENT_BACKLOG events are already waiting for the other side to read.
   */
  send(msg) {
    if (this.closed) return Promise.reject(closedError(this.closeReason));
    let text;
    try {
      text = this._encode(msg);
    } catch (e) {
      return Promise.reject(e);
    }
    if (!DROPPABLE.has(msg.t)) return this._queue(text) ?? RESOLVED;
    if (this.eventBacklog >= MAX_EVENT_BACKLOG) {
      this.droppedEvents++;
      return RESOLVED;
    }
    const queued = this._queue(text);
    if (queued === undefined) return RESOLVED;
    this.eventBacklog++;
    return queued.finally(() => this.eventBacklog--);
  }

  sendData(sid, kind, payload) {
    if (this.closed) return Promise.reject(closedError(this.closeReason));
    return this._queue(wire.encodeData(sid, kind, payload)) ?? RESOLVED;
  }

  /**
   * Send a request; resolves with the ok reply, rejects with the err reply
   * or on close. At most MAX_INFLIGHT are out at once (the other side's
   * limit, where more count as violations); later ones wait their turn here.
   */
  async request(msg) {
    while (this.outstanding >= wire.MAX_INFLIGHT && !this.closed) {
      await new Promise((r) => this.turnWaiters.push(r));
    }
    if (this.closed) throw closedError(this.closeReason);
    this.outstanding++;
    try {
      return await this._request(msg);
    } finally {
      this.outstanding--;
      const next = this.turnWaiters.shift();
      if (next) next();
    }
  }

  _request(msg) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.send({ ...msg, id }).catch((e) => {
        this.pending.delete(id);
        reject(e);
      });
    });
  }

  close(code = 1000, reason = "") {
    if (this.closed) return;
    this.closeReason = reason || "closed";
    this.closed = true;
    try {
      this.conn.close(code, closeText(reason));
    } catch {}
    this._ended(this.closeReason);
  }
}

/** A WebSocket close reason holds at most 123 bytes: cut on a character boundary. */
function closeText(reason) {
  let text = String(reason);
  while (Buffer.byteLength(text) > 123) text = text.slice(0, -1);
  return text;
}

function errCode(err) {
  return err && typeof err.code === "string" ? err.code : "io_error";
}

/** An Error for an err reply: the server's code and message. */
function remoteError(msg) {
  const e = new Error(msg.message);
  e.code = msg.code;
  if (msg.errno !== undefined) e.errno = msg.errno;
  return e;
}

function closedError(reason) {
  const e = new Error(`remote connection closed: ${reason || "closed"}`);
  e.code = "connection_closed";
  return e;
}

module.exports = {
  Peer,
  closedError,
  CLOSE_PROTOCOL,
  CLOSE_POLICY,
  MAX_REPLY_BACKLOG,
  MAX_EVENT_BACKLOG,
  MAX_VIOLATIONS,
};
