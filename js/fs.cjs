"use strict";
// vm.fs: host-side file helpers for any guest path. Metadata calls (stat,
// access, mkdir, listDir, rename, deleteFile) are one typed request each to
// sandboxd, answered with data or the guest's errno number, so no program
// runs and no (localized) error text is read. File contents move through
// sandboxd's file execs (no process either), which stream with the same
// credit-based backpressure as exec output and report a failure as the
// errno in their exit status. Both run beside long-running execs instead
// of queueing behind them (upstream serializes them).

const fs = require("node:fs");
const path = require("node:path");
const util = require("node:util");
const { Readable } = require("node:stream");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const { makeStats, statsObject } = require("./vfs.cjs");

/** Exec options (internal): run no process, store stdin in this guest file / send this guest file as stdout. */
const kStdinToFile = Symbol("gondolin.stdinToFile");
const kStdoutFromFile = Symbol("gondolin.stdoutFromFile");

/**
 * The error for a guest errno (a positive Linux number): `code` is its
 * name (`ENOENT`, `UNKNOWN` if Linux has none), `errno` is negative as in
 * Node. The words come from the host's table when it names the number the
 * same way (a Linux host), else only the code is shown.
 */
function errnoError(prefix, errno, code = native.guestErrnoName(errno) ?? "UNKNOWN") {
  const known = util.getSystemErrorMap().get(-errno);
  const words = known && known[0] === code ? ` (${known[1]})` : "";
  const err = new Error(`${prefix}: ${code}${words}`);
  err.code = code;
  err.errno = -errno;
  return err;
}

/** The error of a failed file exec: its status is the errno, unless it was killed. */
function fileExecError(prefix, r) {
  if (r.signal) return new Error(`${prefix}: signal ${r.signal}`);
  return errnoError(prefix, r.exitCode);
}

function resolvePath(p, cwd, name = "filePath") {
  if (typeof p !== "string" || p.length === 0) throw new TypeError(`${name} must be a non-empty string`);
  if (p.includes("\0")) throw new TypeError(`${name} contains null bytes`);
  if (p.startsWith("/")) return p;
  if (typeof cwd !== "string" || !cwd.startsWith("/")) {
    throw new TypeError(`${name} is relative (${p}); pass an absolute path or an absolute options.cwd`);
  }
  return path.posix.join(cwd, p);
}

function checkMode(mode, allowed) {
  if (mode === undefined) return;
  if (!Number.isInteger(mode) || mode < 0) throw new TypeError("mode must be a non-negative integer");
  if (allowed !== undefined && (mode & ~allowed) !== 0) {
    throw new TypeError("mode can only contain fs.constants.R_OK, W_OK, and X_OK");
  }
  if (mode > 0o7777) throw new TypeError("mode must fit in permission bits (max 0o7777)");
}

const VFS_CHUNK = 1024 * 1024;

/**
 * vm.fs on a path the VFS serves: straight to the host provider stack (no
 * guest round trip, no boot), then the guest's cached view is dropped.
 */
class VfsDirect {
  constructor(vm, rel) {
    this.vm = vm;
    this.rel = rel;
  }
  async call(call, prefix) {
    const out = await this.vm._vfs.root.call(call);
    if (out.errno || out.code) {
      const code = out.code || "EIO";
      const err = new Error(`${prefix}: ${code}${out.message ? ": " + out.message : ""}`);
      err.code = code;
      err.errno = -(out.errno || 5);
      throw err;
    }
    return out;
  }
  changed(rel = this.rel) {
    if (this.vm._native) this.vm._native.vfsInvalidate(rel);
  }
  async stat(prefix) {
    return makeStats((await this.call({ op: "stat", path: this.rel }, prefix)).stat);
  }
  async access(mode, prefix) {
    const st = await this.stat(prefix);
    if (mode & fs.constants.W_OK && this.vm._vfs.root.readonly) {
      const err = new Error(`${prefix}: EROFS`);
      err.code = "EROFS";
      throw err;
    }
    if (mode & fs.constants.X_OK && !st.isDirectory() && (st.mode & 0o111) === 0) {
      const err = new Error(`${prefix}: EACCES`);
      err.code = "EACCES";
      throw err;
    }
  }
  async mkdir(options, prefix) {
    const mode = options.mode ?? 0o755;
    if (!options.recursive) {
      await this.call({ op: "mkdir", path: this.rel, mode }, prefix);
    } else {
      const parts = this.rel.split("/").filter(Boolean);
      for (let i = 1; i <= parts.length; i++) {
        const sub = "/" + parts.slice(0, i).join("/");
        try {
          await this.call({ op: "mkdir", path: sub, mode }, prefix);
        } catch (e) {
          if (e.code !== "EEXIST") throw e;
        }
      }
    }
    this.changed();
  }
  async listDir(prefix) {
    return (await this.call({ op: "readdir", path: this.rel }, prefix)).entries.map((e) => e.name).sort();
  }
  async rename(toRel, prefix) {
    await this.call({ op: "rename", path: this.rel, path2: toRel }, prefix);
    this.changed();
    this.changed(toRel);
  }
  async readFile(prefix) {
    return (await this.call({ op: "readFile", path: this.rel }, prefix)).data;
  }
  async readStream(prefix) {
    const { fh } = await this.call({ op: "open", path: this.rel, flags: "r" }, prefix);
    const self = this;
    return Readable.from(
      (async function* () {
        try {
          for (let off = 0; ; ) {
            const { data } = await self.call({ op: "read", fh, offset: off, length: VFS_CHUNK }, prefix);
            if (data.length === 0) return;
            off += data.length;
            yield data;
          }
        } finally {
          await self.vm._vfs.root.call({ op: "close", fh });
        }
      })(),
      { objectMode: false },
    );
  }
  async writeFile(data, prefix) {
    const { fh } = await this.call({ op: "open", path: this.rel, flags: "w", mode: 0o644 }, prefix);
    let off = 0;
    const put = async (buf) => {
      for (let i = 0; i < buf.length; i += VFS_CHUNK) {
        const part = buf.subarray(i, i + VFS_CHUNK);
        const { n } = await this.call({ op: "write", fh, offset: off, data: part }, prefix);
        off += n;
      }
    };
    try {
      if (Buffer.isBuffer(data)) await put(data);
      else for await (const chunk of data) await put(typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk));
    } finally {
      await this.call({ op: "close", fh }, prefix);
      this.changed();
    }
  }
  async remove(rel, options, prefix) {
    let st;
    try {
      st = (await this.call({ op: "lstat", path: rel }, prefix)).stat;
    } catch (e) {
      if (options.force && e.code === "ENOENT") return;
      throw e;
    }
    if (st.kind === "dir") {
      if (!options.recursive) {
        const err = new Error(`${prefix}: EISDIR`);
        err.code = "EISDIR";
        throw err;
      }
      for (const e of (await this.call({ op: "readdir", path: rel }, prefix)).entries) {
        await this.remove(path.posix.join(rel, e.name), options, prefix);
      }
      await this.call({ op: "rmdir", path: rel }, prefix);
    } else {
      await this.call({ op: "unlink", path: rel }, prefix);
    }
    this.changed(rel);
  }
}

class VmFs {
  constructor(vm) {
    this._vm = vm;
  }

  /** The direct VFS route for `p`, or null when the guest must do it. */
  _direct(p) {
    const rel = this._vm._vfsPath(path.posix.normalize(p));
    return rel === null ? null : new VfsDirect(this._vm, rel);
  }

  /**
   * One typed call to sandboxd: `native[method](...args)` on the booted VM.
   * Resolves with the outcome; a guest errno rejects with errnoError.
   */
  async _guest(prefix, options, method, ...args) {
    const signal = options.signal;
    signal?.throwIfAborted();
    await this._vm._implicitStart();
    if (this._vm._closed) throw withCode("VM is closed", "vm_closed");
    let call = this._vm._native[method](...args);
    if (signal) {
      // The guest finishes the (short) call; the caller stops waiting.
      let onAbort;
      const aborted = new Promise((_, reject) => {
        onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
      });
      call = Promise.race([call, aborted]).finally(() => signal.removeEventListener("abort", onAbort));
    }
    const out = await call;
    if (out.errno) throw errnoError(prefix, out.errno, out.code);
    return out;
  }

  async _fileExec(argv, prefix, opts, execOpts) {
    const r = await this._vm.exec(argv, { signal: opts.signal, ...execOpts });
    if (r.exitCode !== 0) throw fileExecError(prefix, r);
    return r;
  }

  async access(filePath, options = {}) {
    const p = resolvePath(filePath, options.cwd);
    const mode = options.mode ?? fs.constants.F_OK;
    checkMode(mode, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
    const d = this._direct(p);
    if (d) return d.access(mode, `failed to access guest file '${p}'`);
    await this._guest(`failed to access guest file '${p}'`, options, "guestAccess", p, mode);
  }

  async mkdir(dirPath, options = {}) {
    const p = resolvePath(dirPath, options.cwd, "dirPath");
    checkMode(options.mode);
    const d = this._direct(p);
    if (d) return d.mkdir(options, `failed to create guest directory '${p}'`);
    const prefix = `failed to create guest directory '${p}'`;
    await this._guest(prefix, options, "guestMkdir", p, options.mode, Boolean(options.recursive));
  }

  async listDir(dirPath, options = {}) {
    const p = resolvePath(dirPath, options.cwd, "dirPath");
    const d = this._direct(p);
    if (d) return d.listDir(`failed to list guest directory '${p}'`);
    const out = await this._guest(`failed to list guest directory '${p}'`, options, "guestReadDir", p);
    return out.entries.map((e) => e.name).sort();
  }

  async stat(filePath, options = {}) {
    const p = resolvePath(filePath, options.cwd);
    const d = this._direct(p);
    if (d) return d.stat(`failed to stat guest file '${p}'`);
    const out = await this._guest(`failed to stat guest file '${p}'`, options, "guestStat", p, true);
    return statsObject(out.stat);
  }

  async rename(oldPath, newPath, options = {}) {
    const a = resolvePath(oldPath, options.cwd, "oldPath");
    const b = resolvePath(newPath, options.cwd, "newPath");
    const da = this._direct(a);
    const db = this._direct(b);
    if (da && db) return da.rename(db.rel, `failed to rename guest path '${a}' to '${b}'`);
    if (da || db) {
      const err = new Error(`failed to rename guest path '${a}' to '${b}': EXDEV (one side is host-served)`);
      err.code = "EXDEV";
      throw err;
    }
    await this._guest(`failed to rename guest path '${a}' to '${b}'`, options, "guestRename", a, b);
  }

  async readFile(filePath, options = {}) {
    const p = resolvePath(filePath, options.cwd);
    const enc = typeof options === "string" ? options : options.encoding;
    const d = this._direct(p);
    const buf = d
      ? await d.readFile(`failed to read guest file '${p}'`)
      : (await this._fileExec(["gondolin:read-file", p], `failed to read guest file '${p}'`, options, { [kStdoutFromFile]: p }))
          .stdoutBuffer;
    return enc ? buf.toString(enc) : buf;
  }

  /** A Readable of the file; resolves once the file opened (errors before data reject). */
  async readFileStream(filePath, options = {}) {
    const p = resolvePath(filePath, options.cwd);
    const d = this._direct(p);
    if (d) return d.readStream(`failed to stream guest file '${p}'`);
    const proc = this._vm.exec(["gondolin:read-file", p], { stdout: "pipe", signal: options.signal, [kStdoutFromFile]: p });
    const stream = proc.stdout;
    const prefix = `failed to stream guest file '${p}'`;
    // Resolve on the first byte, or reject if the file fails before any data.
    let onReadable;
    const started = await Promise.race([
      new Promise((resolve) => {
        onReadable = () => {
          if (stream.readableLength > 0) resolve("data");
        };
        stream.on("readable", onReadable);
      }),
      proc.result,
    ]).finally(() => stream.off("readable", onReadable));
    if (started !== "data" && started.exitCode !== 0) throw fileExecError(prefix, started);
    proc.result.then(
      (r) => {
        if (r.exitCode !== 0) stream.destroy(fileExecError(prefix, r));
      },
      (e) => stream.destroy(e),
    );
    return stream;
  }

  async writeFile(filePath, data, options = {}) {
    const p = resolvePath(filePath, options.cwd);
    let input = data;
    if (typeof data === "string") input = Buffer.from(data, options.encoding || "utf-8");
    else if (data instanceof Uint8Array) input = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    else if (!data || typeof data[Symbol.asyncIterator] !== "function") {
      throw new TypeError("data must be a string, Buffer, Uint8Array, Readable or AsyncIterable");
    }
    const d = this._direct(p);
    if (d) return d.writeFile(input, `failed to write guest file '${p}'`);
    // sandboxd writes stdin straight into the file: no shell, no cat, no pipe.
    await this._fileExec(["gondolin:write-file", p], `failed to write guest file '${p}'`, options, {
      stdin: input,
      [kStdinToFile]: p,
    });
  }

  async deleteFile(filePath, options = {}) {
    const p = resolvePath(filePath, options.cwd);
    if (path.posix.resolve(p) === "/") {
      const err = new Error(`failed to delete guest file '${p}': CannotDeleteRootDirectory`);
      err.code = "EPERM";
      throw err;
    }
    const prefix = `failed to delete guest file '${p}'`;
    const d = this._direct(p);
    const recursive = Boolean(options.recursive);
    const force = Boolean(options.force);
    try {
      await (d ? d.remove(d.rel, options, prefix) : this._guest(prefix, options, "guestRemove", p, recursive, force));
    } catch (err) {
      // Upstream's wording (the guest's error name), whichever route failed.
      if (err.code === "ENOENT") err.message = `${prefix}: FileNotFound`;
      throw err;
    }
  }
}

module.exports = { VmFs, resolvePath, kStdinToFile, kStdoutFromFile };
