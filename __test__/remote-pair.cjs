"use strict";
// A test stand-in for the native WebSocket transport's RemoteConnection
// (recv()/send()/close()): pair() gives two connected ends in one process,
// so the protocol layer's unit tests need no sockets.


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

module.exports = { pair };
