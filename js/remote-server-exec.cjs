"use strict";
// One exec on the server side of a remote connection. Output is pulled from
// the NativeExec only while the client has credit: the guest gets its own
// credit back only when next() is called, so a client that stops granting
// stops the guest process and the server holds at most one batch. Stdin is
// taken only up to the credit the server granted; each chunk's credit goes
// back once the guest accepted it.

const wire = require("./remote-wire.cjs");


class ServerExec {
  constructor(peer, sid, n, window, stdin, metrics) {
    this.peer = peer;
    this.sid = sid;
    this.n = n;
    this.credit = window;
    this.creditWaiter = null;
    this.stdinCredit = stdin ? wire.STDIN_WINDOW_BYTES : 0;
    this.stdinEnabled = stdin;
    this.stdinChain = Promise.resolve();
    this.metrics = metrics;
    this.done = false;
  }

  /** The client granted `bytes` more output. */
  grant(bytes) {
    this.credit += bytes;
    if (this.credit > wire.MAX_WINDOW_BYTES) throw new Error(`exec ${this.sid}: credit above ${wire.MAX_WINDOW_BYTES} bytes`);
    if (this.creditWaiter) {
      const w = this.creditWaiter;
      this.creditWaiter = null;
      w();
    }
  }

  /** Stdin bytes from the client; more than granted is a protocol violation. */
  stdin(data) {
    if (!this.stdinEnabled) throw new Error(`exec ${this.sid}: stdin data but stdin was not enabled`);
    if (data.length > this.stdinCredit) throw new Error(`exec ${this.sid}: stdin beyond its credit (flow control violated)`);
    this.stdinCredit -= data.length;
    this.metrics.bytes("stdin", data.length);
    const n = this.n;
    this.stdinChain = this.stdinChain
      .then(() => n.write(data))
      .then(
        () => {
          this.stdinCredit += data.length;
          if (!this.done) return this.peer.send({ t: "stdin.credit", sid: this.sid, bytes: data.length });
        },
        () => {},
      )
      .catch(() => {});
  }

  end() {
    this.stdinChain = this.stdinChain.then(() => {
      try {
        this.n.end();
      } catch {}
    });
  }

  kill(signal) {
    try {
      this.n.kill(signal);
    } catch {}
  }

  resize(rows, cols) {
    try {
      this.n.resize(rows, cols);
    } catch {}
  }

  async _waitCredit() {
    while (this.credit <= 0 && !this.peer.closed) await new Promise((r) => (this.creditWaiter = r));
    if (this.peer.closed) throw new Error("connection closed");
  }

  /** Forward events until the exec ends; resolves with { exitCode } or { error }. */
  async pump() {
    const started = process.hrtime.bigint();
    let outcome = { error: "connection_closed" };
    try {
      for (;;) {
        const batch = await this.n.next();
        if (batch === null) break;
        for (const ev of batch) {
          if (ev.kind === "stdout" || ev.kind === "stderr") {
            const data = ev.data;
            for (let off = 0; off < data.length; ) {
              await this._waitCredit();
              const take = Math.min(this.credit, wire.MAX_DATA_BYTES, data.length - off);
              this.credit -= take;
              await this.peer.sendData(this.sid, ev.kind, data.subarray(off, off + take));
              this.metrics.bytes(ev.kind, take);
              off += take;
            }
          } else if (ev.kind === "exit") {
            outcome = { exitCode: ev.exitCode };
            await this.peer.send({ t: "exec.exit", sid: this.sid, exitCode: ev.exitCode, signal: ev.signal ?? undefined });
          } else if (ev.kind === "error") {
            outcome = { error: ev.code };
            await this.peer.send({ t: "exec.error", sid: this.sid, code: ev.code || "io_error", message: ev.message || "" });
          }
        }
      }
    } catch {
      // The connection went: the caller kills the process.
      this.kill(9);
    }
    this.done = true;
    this.metrics.execDone(Number(process.hrtime.bigint() - started) / 1e9);
    return outcome;
  }
}

module.exports = { ServerExec };
