"use strict";
// The client side of one remote exec, shaped as a NativeExec (id, next(),
// write(), end(), kill(), resize()) so js/exec.cjs's ExecProcess drives it
// exactly as a local one. Output credit goes back to the server only when
// next() hands a batch to ExecProcess, which stops calling next() while its
// consumer is slow: so a slow consumer pauses the guest process, and this
// side never holds more than `window` bytes. Stdin is sent only within the
// credit the server granted.

const wire = require("./remote-wire.cjs");
const { closedError } = require("./remote-peer.cjs");


class RemoteExecChannel {
  constructor(peer, sid, window, stdin) {
    this.peer = peer;
    this.sid = sid;
    this.id = 0;
    this.window = window;
    this.outstanding = 0;
    this.queue = [];
    this.waiter = null;
    this.finished = false;
    this.stdinCredit = stdin ? wire.STDIN_WINDOW_BYTES : 0;
    this.creditWaiter = null;
    this.stdinChain = Promise.resolve();
  }

  _wake() {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }

  /** Output from the server; more than the granted window breaks the protocol (the peer closes). */
  onData(kind, data) {
    if (kind !== "stdout" && kind !== "stderr") throw new Error(`server sent ${kind} data`);
    if (this.finished) throw new Error(`data on stream ${this.sid} after its end`);
    this.outstanding += data.length;
    if (this.outstanding > this.window) throw new Error(`stream ${this.sid}: server sent beyond its credit (flow control violated)`);
    this.queue.push({ kind, data });
    this._wake();
  }

  onEnd(msg) {
    if (msg.t === "exec.exit") this.queue.push({ kind: "exit", exitCode: msg.exitCode, signal: msg.signal ?? undefined });
    else this.queue.push({ kind: "error", code: msg.code, message: msg.message });
    this.finished = true;
    this._wake();
    this._wakeCredit();
  }

  onClosed(reason) {
    if (this.finished) return;
    const e = closedError(reason);
    this.queue.push({ kind: "error", code: e.code, message: e.message });
    this.finished = true;
    this._wake();
    this._wakeCredit();
  }

  onStdinCredit(bytes) {
    this.stdinCredit += bytes;
    if (this.stdinCredit > wire.MAX_WINDOW_BYTES) throw new Error(`stream ${this.sid}: stdin credit above ${wire.MAX_WINDOW_BYTES}`);
    this._wakeCredit();
  }

  _wakeCredit() {
    if (this.creditWaiter) {
      const w = this.creditWaiter;
      this.creditWaiter = null;
      w();
    }
  }

  /** The next batch of events, or null after the terminal one was taken. */
  async next() {
    while (this.queue.length === 0 && !this.finished) await new Promise((r) => (this.waiter = r));
    if (this.queue.length === 0) return null;
    const batch = this.queue.splice(0);
    let bytes = 0;
    for (const ev of batch) if (ev.data) bytes += ev.data.length;
    if (bytes > 0) {
      this.outstanding -= bytes;
      // Awaited: a server that sends but does not read gets no more credit
      // (and this side queues no more) until the transport takes this one.
      if (!this.finished) await this.peer.send({ t: "exec.credit", sid: this.sid, bytes }).catch(() => {});
    }
    return batch;
  }

  /** Stdin; resolves once every byte went out within the server's credit. */
  write(buf) {
    const run = async () => {
      for (let off = 0; off < buf.length; ) {
        while (this.stdinCredit <= 0 && !this.finished && !this.peer.closed) await new Promise((r) => (this.creditWaiter = r));
        if (this.finished) throw Object.assign(new Error("the process already exited"), { code: "exec_exited" });
        if (this.peer.closed) throw closedError(this.peer.closeReason);
        const take = Math.min(this.stdinCredit, wire.MAX_DATA_BYTES, buf.length - off);
        this.stdinCredit -= take;
        await this.peer.sendData(this.sid, "stdin", buf.subarray(off, off + take));
        off += take;
      }
    };
    const p = this.stdinChain.then(run);
    this.stdinChain = p.catch(() => {});
    return p;
  }

  end() {
    this.stdinChain = this.stdinChain.then(() => this.peer.send({ t: "exec.end", sid: this.sid })).catch(() => {});
  }

  kill(signal) {
    if (this.finished) return;
    this.peer.send({ t: "exec.kill", sid: this.sid, signal }).catch(() => {});
  }

  resize(rows, cols) {
    this.peer.send({ t: "exec.resize", sid: this.sid, rows, cols }).catch(() => {});
  }
}

module.exports = { RemoteExecChannel };
