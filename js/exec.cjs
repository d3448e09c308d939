"use strict";
// ExecProcess (a thenable handle on a running command) and ExecResult.

const { Readable } = require("node:stream");
const { StringDecoder } = require("node:string_decoder");
const { withCode } = require("./errors.cjs");
const { optionError } = require("./options.cjs");

const DEFAULT_WINDOW = 256 * 1024;
/** Ctrl-]: detaches an attached terminal (as telnet and upstream do). */
const ESCAPE = 0x1d;

class ExecResult {
  constructor(id, exitCode, signal, stdout, stderr, encoding) {
    this.id = id;
    this.exitCode = exitCode;
    if (signal != null) this.signal = signal;
    this._stdout = stdout;
    this._stderr = stderr;
    this._encoding = encoding;
  }
  get stdoutBuffer() {
    return this._stdout;
  }
  get stderrBuffer() {
    return this._stderr;
  }
  get stdout() {
    return this._stdout.toString(this._encoding);
  }
  get stderr() {
    return this._stderr.toString(this._encoding);
  }
  get ok() {
    return this.exitCode === 0;
  }
  json() {
    return JSON.parse(this.stdout);
  }
  lines() {
    return this.stdout.split("\n").filter((l) => l.length > 0);
  }
  toString() {
    return this.stdout;
  }
}

function normalizeCommand(command, options) {
  if (typeof command === "string") {
    const argv = ["/bin/sh", "-lc", command];
    if (options.argv !== undefined) {
      if (!Array.isArray(options.argv)) throw optionError("exec options.argv must be an array of strings");
      argv.push("sh", ...options.argv.map(String));
    }
    return argv;
  }
  if (Array.isArray(command)) {
    if (command.length === 0) throw optionError("command array must include the executable");
    return command.map((a, i) => {
      if (typeof a !== "string") throw optionError(`command[${i}] must be a string`);
      return a;
    });
  }
  throw optionError("command must be a string or an array of strings");
}

function isWritable(v) {
  return v != null && typeof v === "object" && typeof v.write === "function" && !Buffer.isBuffer(v);
}

function outputMode(value, name, fallback) {
  if (value === undefined) return { kind: fallback };
  if (value === "buffer" || value === "pipe" || value === "ignore") return { kind: value };
  if (value === "inherit") return { kind: "writable", stream: name === "stdout" ? process.stdout : process.stderr };
  if (isWritable(value)) return { kind: "writable", stream: value };
  throw optionError(
    `invalid exec ${name} option: ${String(value)} (expected "buffer"|"pipe"|"inherit"|"ignore" or a writable stream)`,
  );
}

/** A piped stream stops pulling from the guest once this much is unread. */
const PIPE_HIGH_WATER_MARK = 1024;

function windowBytes(v) {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) return DEFAULT_WINDOW;
  return Math.min(Math.max(Math.floor(v), 4096), 16 * 1024 * 1024);
}

/**
 * Output sink for one stream. Buffer mode collects; writable mode writes and
 * waits for 'drain'; pipe mode feeds a Readable whose consumer drives pulls.
 */
class Sink {
  constructor(mode, name, proc) {
    this.mode = mode;
    this.name = name;
    this.chunks = [];
    this.readable = null;
    if (mode.kind === "pipe") {
      // The guest may have `windowBytes` unacknowledged; credit returns only
      // when this loop takes a batch, and it stops taking once the Readable
      // is over its mark. So the Readable holds at most one batch plus
      // PIPE_HIGH_WATER_MARK - 1 bytes (upstream: window + 1 KiB).
      this.readable = new Readable({ highWaterMark: PIPE_HIGH_WATER_MARK, read: () => proc._wantMore() });
    }
  }
  /** Returns a promise when the consumer needs time (backpressure), else null. */
  push(data) {
    switch (this.mode.kind) {
      case "buffer":
        this.chunks.push(data);
        return null;
      case "ignore":
        return null;
      case "pipe":
        return this.readable.push(data) ? null : "paused";
      case "writable": {
        const s = this.mode.stream;
        let ok;
        try {
          ok = s.write(data);
        } catch (err) {
          this.fail(err);
          return null;
        }
        if (ok !== false || typeof s.once !== "function") return null;
        return new Promise((resolve) => {
          const done = () => {
            s.off?.("drain", done);
            s.off?.("error", done);
            s.off?.("close", done);
            resolve();
          };
          s.once("drain", done);
          s.once("error", done);
          s.once("close", done);
        });
      }
    }
    return null;
  }
  fail(err) {
    // Node's errno fields of the stream's error when it has them (EPIPE), else io_error.
    const e = withCode(`${this.name} output write failed: ${err && err.message}`, "io_error", { cause: err });
    for (const k of ["code", "errno", "syscall", "path"]) if (err && err[k] !== undefined) e[k] = err[k];
    this.mode = { kind: "ignore" };
    this.writeError = e;
  }
  end() {
    if (this.readable) this.readable.push(null);
  }
  buffer() {
    return Buffer.concat(this.chunks);
  }
}

class ExecProcess {
  /**
   * @param {Promise<object>} nativePromise resolves to a NativeExec once the VM runs
   */
  constructor(nativePromise, options) {
    this._options = options;
    this._encoding = options.encoding || "utf-8";
    const fallback = options.buffer === false ? "ignore" : "buffer";
    this._sinks = {
      stdout: new Sink(outputMode(options.stdout, "stdout", fallback), "stdout", this),
      stderr: new Sink(outputMode(options.stderr, "stderr", fallback), "stderr", this),
    };
    this._stdinEnabled = options.stdin !== undefined && options.stdin !== false;
    this._native = null;
    this._id = 0;
    this._settled = false;
    this._wake = null;
    this._paused = false;
    this._pendingStdin = [];
    this._stdinChain = Promise.resolve();
    this._attached = false;

    this._result = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    // Rejections are delivered to whoever awaits; don't crash on an unawaited one.
    this._result.catch(() => {});

    if (options.signal) {
      if (options.signal.aborted) {
        this._abort();
      } else {
        this._onAbort = () => this._abort();
        options.signal.addEventListener("abort", this._onAbort, { once: true });
      }
    }

    nativePromise.then(
      (n) => this._run(n),
      (err) => this._finish(err),
    );
  }

  get id() {
    return this._id;
  }
  get result() {
    return this._result;
  }
  then(onFulfilled, onRejected) {
    return this._result.then(onFulfilled, onRejected);
  }
  catch(onRejected) {
    return this._result.catch(onRejected);
  }
  finally(onFinally) {
    return this._result.finally(onFinally);
  }
  get stdout() {
    return this._sinks.stdout.readable;
  }
  get stderr() {
    return this._sinks.stderr.readable;
  }

  write(data) {
    if (!this._stdinEnabled) throw withCode("stdin was not enabled for this exec", "stdin_disabled");
    const buf = typeof data === "string" ? Buffer.from(data) : Buffer.from(data);
    this._stdinOp((n) => n.write(buf));
  }
  end() {
    if (!this._stdinEnabled) throw withCode("stdin was not enabled for this exec", "stdin_disabled");
    this._stdinOp((n) => n.end());
  }
  resize(rows, cols) {
    if (!Number.isFinite(rows) || !Number.isFinite(cols)) return;
    const r = Math.max(1, Math.trunc(rows));
    const c = Math.max(1, Math.trunc(cols));
    if (this._native && !this._settled) {
      try {
        this._native.resize(r, c);
      } catch {}
    } else {
      this._pendingResize = [r, c];
    }
  }
  /** Send a signal (default SIGTERM) to the process group in the guest. */
  kill(signal = "SIGTERM") {
    const num = typeof signal === "number" ? signal : require("node:os").constants.signals[signal];
    if (!Number.isInteger(num) || num <= 0 || num > 64) throw optionError(`invalid signal: ${signal}`);
    if (this._settled) return false;
    if (!this._native) {
      this._pendingKill = num;
      return true;
    }
    try {
      this._native.kill(num);
      return true;
    } catch {
      return false;
    }
  }

  /** stdout as text. Throws the exec's error (abort, VM gone) after the last chunk. */
  [Symbol.asyncIterator]() {
    const r = this._pipedStdout();
    return (async function* (self) {
      for await (const text of self._text(r)) yield text;
      await self._result;
    })(this);
  }

  lines() {
    const r = this._pipedStdout();
    return (async function* (self) {
      let rest = "";
      for await (const text of self._text(r)) {
        rest += text;
        const parts = rest.split("\n");
        rest = parts.pop();
        for (const p of parts) yield p;
      }
      if (rest.length > 0) yield rest;
      await self._result;
    })(this);
  }

  /**
   * Chunks of `r` decoded as text. A character split across chunks is
   * carried to the next one (a chunk boundary falls anywhere in the byte
   * stream: decoding chunks on their own turned those into U+FFFD).
   */
  async *_text(r) {
    const dec = new StringDecoder(this._encoding);
    for await (const chunk of r) {
      const text = dec.write(chunk);
      if (text.length > 0) yield text;
    }
    const tail = dec.end();
    if (tail.length > 0) yield tail;
  }

  _pipedStdout() {
    const r = this._sinks.stdout.readable;
    if (!r) throw withCode('stdout is not piped (set exec options.stdout="pipe")', "invalid_state");
    return r;
  }

  output() {
    const out = this._sinks.stdout.readable;
    const err = this._sinks.stderr.readable;
    if (!out || !err) throw withCode('stdout/stderr are not piped (set exec options.stdout/stderr="pipe")', "invalid_state");
    return this._merged(out, err);
  }

  async *_merged(out, err) {
    // Merge both streams in arrival order.
    const queue = [];
    let ended = 0;
    let wake = null;
    // One decoder per stream: `text` carries a split character over to the
    // stream's next chunk (`data` stays the bytes as they came).
    const decoders = { stdout: new StringDecoder(this._encoding), stderr: new StringDecoder(this._encoding) };
    const onData = (stream) => () => {
      let data;
      const r = stream === "stdout" ? out : err;
      while ((data = r.read()) !== null) queue.push({ stream, data, text: decoders[stream].write(data) });
      if (wake) wake();
    };
    const onEnd = (stream) => () => {
      // Bytes of an unfinished character at the very end: as U+FFFD.
      const tail = decoders[stream].end();
      if (tail.length > 0) queue.push({ stream, data: Buffer.alloc(0), text: tail });
      ended++;
      if (wake) wake();
    };
    const onOut = onData("stdout");
    const onErr = onData("stderr");
    out.on("readable", onOut);
    err.on("readable", onErr);
    out.once("end", onEnd("stdout"));
    err.once("end", onEnd("stderr"));
    try {
      for (;;) {
        if (queue.length) {
          yield queue.shift();
          continue;
        }
        if (ended === 2) {
          await this._result; // throws the exec's error, if it failed
          return;
        }
        await new Promise((r) => (wake = r));
        wake = null;
      }
    } finally {
      out.off("readable", onOut);
      err.off("readable", onErr);
    }
  }

  /**
   * Wire local stdio to this process. `options.onDetach`: on a TTY stdin,
   * Ctrl-] (0x1d) stops the forwarding (bytes before it still go to the
   * guest) and calls it; the guest process keeps running.
   */
  attach(stdin, stdout, stderr, options = {}) {
    if (this._attached) throw withCode("already attached", "invalid_state");
    const o = this._sinks.stdout;
    const e = this._sinks.stderr;
    const streaming = [o, e].some((s) => s.mode.kind === "pipe" || s.mode.kind === "writable");
    if (!streaming) {
      throw withCode('attach() requires streaming output (set exec options stdout/stderr="pipe" or "inherit")', "invalid_state");
    }
    this._attached = true;
    if (o.readable && stdout) o.readable.pipe(stdout, { end: false });
    if (e.readable && (stderr || stdout)) e.readable.pipe(stderr || stdout, { end: false });
    const wasRaw = stdin && stdin.isTTY ? stdin.isRaw : undefined;
    if (stdin && stdin.isTTY && typeof stdin.setRawMode === "function") stdin.setRawMode(true);
    const detachable = typeof options.onDetach === "function" && stdin && stdin.isTTY;
    let detached = false;
    const onData = (d) => {
      if (detached) return;
      const at = detachable ? d.indexOf(ESCAPE) : -1;
      if (at >= 0) {
        if (at > 0 && this._stdinEnabled) this.write(d.subarray(0, at));
        detached = true;
        // Nobody reads these any more: drain them and swallow the error
        // they end with when the caller closes the VM.
        for (const [r, to] of [[o.readable, stdout], [e.readable, stderr || stdout]]) {
          if (!r) continue;
          r.unpipe(to);
          r.on("error", () => {});
          r.resume();
        }
        cleanup();
        options.onDetach();
        return;
      }
      if (this._stdinEnabled) this.write(d);
    };
    const onEnd = () => {
      if (this._stdinEnabled) this.end();
    };
    const onResize = () => this.resize(stdout.rows, stdout.columns);
    if (stdin) {
      stdin.on("data", onData);
      stdin.once("end", onEnd);
      stdin.resume();
    }
    if (stdout && stdout.isTTY) {
      stdout.on("resize", onResize);
      onResize();
    }
    let cleaned = false;
    const cleanup = () => {
      if (cleaned) return;
      cleaned = true;
      if (stdin) {
        stdin.off("data", onData);
        stdin.off("end", onEnd);
        if (stdin.isTTY && typeof stdin.setRawMode === "function") stdin.setRawMode(Boolean(wasRaw));
        stdin.pause();
      }
      if (stdout && stdout.isTTY) stdout.off("resize", onResize);
    };
    this._result.then(cleanup, cleanup);
  }

  // --- internals -------------------------------------------------------

  /** Queue a stdin operation; writes and end() reach the guest in call order. */
  _stdinOp(fn) {
    const run = (n) => {
      this._stdinChain = this._stdinChain.then(() => fn(n)).catch(() => {});
    };
    if (this._native) run(this._native);
    else this._pendingStdin.push(run);
  }

  _wantMore() {
    if (this._paused) {
      this._paused = false;
      if (this._wake) {
        const w = this._wake;
        this._wake = null;
        w();
      }
    }
  }

  _abort() {
    if (this._settled) return;
    if (this._native) {
      try {
        this._native.kill(9);
      } catch {}
    } else {
      this._pendingKill = 9;
    }
    this._finish(withCode("exec aborted", "exec_aborted"));
  }

  async _feedStdin(input) {
    const n = this._native;
    try {
      if (typeof input === "string" || Buffer.isBuffer(input) || input instanceof Uint8Array) {
        const buf = typeof input === "string" ? Buffer.from(input) : Buffer.from(input);
        if (buf.length) await n.write(buf);
      } else if (input && typeof input[Symbol.asyncIterator] === "function") {
        for await (const chunk of input) {
          if (this._settled) return;
          await n.write(typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk));
        }
      }
      n.end();
    } catch {
      // The process exited or the VM went away: its result reports why.
    }
  }

  async _run(n) {
    this._native = n;
    this._id = n.id;
    if (this._settled) {
      try {
        n.kill(this._pendingKill || 9);
      } catch {}
      return;
    }
    if (this._pendingKill) {
      try {
        n.kill(this._pendingKill);
      } catch {}
    }
    if (this._pendingResize) n.resize(...this._pendingResize);
    for (const op of this._pendingStdin.splice(0)) op(n);
    const input = this._options.stdin;
    if (input !== undefined && input !== true && input !== false) this._feedStdin(input);

    try {
      for (;;) {
        const batch = await n.next();
        if (batch === null) break;
        for (const ev of batch) {
          if (ev.kind === "stdout" || ev.kind === "stderr") {
            if (this._settled) continue;
            const wait = this._sinks[ev.kind].push(ev.data);
            if (wait === "paused") this._paused = true;
            else if (wait) await wait;
          } else if (ev.kind === "exit") {
            this._finishOk(ev.exitCode, ev.signal);
          } else if (ev.kind === "error") {
            this._finish(withCode(ev.message, ev.code));
          }
        }
        if (this._paused && !this._settled) {
          await new Promise((r) => (this._wake = r));
        }
      }
    } catch (err) {
      this._finish(err);
    }
  }

  _finishOk(exitCode, signal) {
    const writeErr = this._sinks.stdout.writeError || this._sinks.stderr.writeError;
    if (writeErr) return this._finish(writeErr);
    if (this._settled) return;
    this._settled = true;
    this._cleanup();
    this._sinks.stdout.end();
    this._sinks.stderr.end();
    this._resolve(
      new ExecResult(
        this._id,
        exitCode,
        signal == null ? undefined : signal,
        this._sinks.stdout.buffer(),
        this._sinks.stderr.buffer(),
        this._encoding,
      ),
    );
  }

  _finish(err) {
    if (this._settled) return;
    this._settled = true;
    this._cleanup();
    this._reject(err);
    // As child_process does when a child is killed: the pipes END and the
    // promise carries the error. An 'error' event would crash a host that
    // only listens for 'data'. Ended on the next turn so a rejection handler
    // that wants the stream to fail (vm.fs.readFileStream) destroys it first.
    setImmediate(() => {
      this._sinks.stdout.end();
      this._sinks.stderr.end();
    });
  }

  _cleanup() {
    if (this._onAbort) this._options.signal.removeEventListener("abort", this._onAbort);
    if (this._wake) {
      const w = this._wake;
      this._wake = null;
      w();
    }
  }
}

module.exports = { ExecProcess, ExecResult, normalizeCommand, windowBytes };
