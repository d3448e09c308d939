"use strict";
// VFS providers. The built-in classes (MemoryProvider, RealFSProvider,
// ReadonlyProvider, ShadowProvider) are Rust providers held through a
// NativeProvider: the guest's file operations on them never enter JS. Any
// other object with the provider methods is a JS provider: Rust calls it
// through one dispatcher function (makeDispatcher below), and it can be
// stacked under the built-in wrappers.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { native } = require("./native.cjs");
const { nearest, optionError } = require("./options.cjs");

const kNative = Symbol.for("gondolin.nativeProvider");
const kShadowPaths = Symbol.for("gondolin.shadowPaths");
const kAttached = Symbol("gondolin.attachedVms");
const ERRNO = os.constants.errno;
/** Largest read/write the guest sends in one request. */
const MAX_RPC_DATA = 1024 * 1024;

const S_IFMT = { file: 0o100000, dir: 0o040000, symlink: 0o120000, other: 0o010000 };

function normalizeVfsPath(inputPath) {
  const p = path.posix.normalize("/" + String(inputPath));
  return p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p;
}

function isWriteFlag(flags) {
  return /[wa+]/.test(String(flags));
}

function errnoError(code, syscall, p, message) {
  const err = new Error(`${code}: ${message ? message + ", " : ""}${syscall} '${p ?? ""}'`);
  err.code = code;
  err.errno = -(ERRNO[code] ?? ERRNO.EIO);
  err.syscall = syscall;
  if (p !== undefined) err.path = p;
  return err;
}

/** Throw the error an outcome carries, as a Node ErrnoException. */
function check(outcome, syscall, p) {
  if (outcome.errno || outcome.code) {
    throw errnoError(outcome.code || "EIO", syscall, p, outcome.message);
  }
  return outcome;
}

/** A node:fs Stats from plain fields (times in ms; mode with type bits). */
function statsObject(f) {
  const st = Object.create(fs.Stats.prototype);
  Object.assign(st, { dev: 0, rdev: 0, blksize: 4096, blocks: Math.ceil(f.size / 512) }, f);
  st.birthtimeMs = f.birthtimeMs ?? f.ctimeMs;
  st.atime = new Date(st.atimeMs);
  st.mtime = new Date(st.mtimeMs);
  st.ctime = new Date(st.ctimeMs);
  st.birthtime = new Date(st.birthtimeMs);
  return st;
}

/** Stats from a provider outcome's `stat`. */
function makeStats(s) {
  const { kind, mode, ...rest } = s;
  return statsObject({ ...rest, mode: (S_IFMT[kind] ?? 0) | (mode & 0o7777) });
}

function statKind(st) {
  if (st.isDirectory()) return "dir";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isFile()) return "file";
  return "other";
}

class VirtualDirent {
  constructor(name, kind = "dir") {
    this.name = name;
    this._kind = kind;
  }
  isDirectory() { return this._kind === "dir"; }
  isFile() { return this._kind === "file"; }
  isSymbolicLink() { return this._kind === "symlink"; }
  isBlockDevice() { return false; }
  isCharacterDevice() { return false; }
  isFIFO() { return false; }
  isSocket() { return false; }
}

function formatVirtualEntries(entries, withTypes) {
  return withTypes ? entries.map((n) => new VirtualDirent(n)) : entries.slice();
}

function createVirtualDirStats() {
  const now = Date.now();
  return makeStats({ kind: "dir", mode: 0o755, nlink: 1, uid: 0, gid: 0, size: 4096, atimeMs: now, mtimeMs: now, ctimeMs: now, ino: 0 });
}

function toBuffer(data, encoding) {
  if (typeof data === "string") return Buffer.from(data, encoding || "utf8");
  if (Buffer.isBuffer(data)) return data;
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw optionError("data must be a string, Buffer or Uint8Array");
}

function encodingOf(options) {
  return typeof options === "string" ? options : options && options.encoding;
}

/** A file opened on a native provider; mirrors upstream's VirtualFileHandle. */
class NativeFileHandle {
  constructor(provider, fh, p, flags, mode) {
    this._p = provider;
    this._fh = fh;
    this.path = p;
    this.flags = flags;
    this.mode = mode;
    this.position = 0;
    this.closed = false;
    this._append = String(flags).includes("a");
  }
  _c(op, extra, sync) {
    if (this.closed) throw errnoError("EBADF", op, this.path);
    return this._p._run({ op, fh: this._fh, ...extra }, op, this.path, sync);
  }
  _pos(position) {
    return position === null || position === undefined ? this.position : position;
  }
  _afterRead(out, buffer, offset, position) {
    const n = out.data.copy(buffer, offset);
    if (position === null || position === undefined) this.position += n;
    return n;
  }
  async read(buffer, offset = 0, length = buffer.length - offset, position = null) {
    const out = await this._c("read", { offset: this._pos(position), length });
    return { bytesRead: this._afterRead(out, buffer, offset, position), buffer };
  }
  readSync(buffer, offset = 0, length = buffer.length - offset, position = null) {
    return this._afterRead(this._c("read", { offset: this._pos(position), length }, true), buffer, offset, position);
  }
  _writeArgs(buffer, offset, length, position) {
    return { offset: this._append ? 0 : this._pos(position), data: Buffer.from(buffer.buffer, buffer.byteOffset + offset, length) };
  }
  async write(buffer, offset = 0, length = buffer.length - offset, position = null) {
    const out = await this._c("write", this._writeArgs(buffer, offset, length, position));
    if (position === null || position === undefined) this.position += out.n;
    return { bytesWritten: out.n, buffer };
  }
  writeSync(buffer, offset = 0, length = buffer.length - offset, position = null) {
    const out = this._c("write", this._writeArgs(buffer, offset, length, position), true);
    if (position === null || position === undefined) this.position += out.n;
    return out.n;
  }
  async readFile(options) {
    const chunks = [];
    for (let off = 0; ; ) {
      const out = await this._c("read", { offset: off, length: MAX_RPC_DATA });
      if (out.data.length === 0) break;
      chunks.push(out.data);
      off += out.data.length;
    }
    const buf = Buffer.concat(chunks);
    const enc = encodingOf(options);
    return enc ? buf.toString(enc) : buf;
  }
  readFileSync(options) {
    const chunks = [];
    for (let off = 0; ; ) {
      const out = this._c("read", { offset: off, length: MAX_RPC_DATA }, true);
      if (out.data.length === 0) break;
      chunks.push(out.data);
      off += out.data.length;
    }
    const buf = Buffer.concat(chunks);
    const enc = encodingOf(options);
    return enc ? buf.toString(enc) : buf;
  }
  async writeFile(data, options) {
    const buf = toBuffer(data, encodingOf(options));
    await this._c("ftruncate", { length: 0 });
    for (let off = 0; off < buf.length; ) off += (await this.write(buf, off, Math.min(MAX_RPC_DATA, buf.length - off), off)).bytesWritten;
  }
  writeFileSync(data, options) {
    const buf = toBuffer(data, encodingOf(options));
    this._c("ftruncate", { length: 0 }, true);
    for (let off = 0; off < buf.length; ) off += this.writeSync(buf, off, Math.min(MAX_RPC_DATA, buf.length - off), off);
  }
  async stat() { return makeStats((await this._c("fstat", {})).stat); }
  statSync() { return makeStats(this._c("fstat", {}, true).stat); }
  async truncate(len = 0) { await this._c("ftruncate", { length: len }); }
  truncateSync(len = 0) { this._c("ftruncate", { length: len }, true); }
  async close() {
    if (this.closed) return;
    await this._c("close", {});
    this.closed = true;
  }
  closeSync() {
    if (this.closed) return;
    this._c("close", {}, true);
    this.closed = true;
  }
}

/** Base of the built-in providers: every method forwards to Rust. */
class NativeBackedProvider {
  constructor(nativeProvider) {
    Object.defineProperty(this, kNative, { value: nativeProvider });
  }
  get readonly() { return this[kNative].readonly; }
  get supportsSymlinks() { return this[kNative].supportsSymlinks; }
  get supportsWatch() { return false; }

  _run(call, syscall, p, sync) {
    const done = (o) => {
      check(o, syscall, p);
      // Rust names the paths the operation changed (FsOutcome.changed).
      if (o.changed) for (const c of o.changed) this._changed(c);
      return o;
    };
    if (sync) return done(this[kNative].callSync(call));
    return this[kNative].call(call).then(done);
  }

  /**
   * A change made from the host (not by a guest): guests that mount this
   * provider drop their cached view of `p`, since a MemoryProvider lets
   * them cache for long.
   */
  _changed(p) {
    const attached = this[kAttached];
    if (!attached || typeof p !== "string") return;
    const rel = normalizeVfsPath(p);
    for (const { vm, base } of attached) {
      if (vm._native) vm._native.vfsInvalidate(base === "/" ? rel : rel === "/" ? base : base + rel);
    }
  }
  async stat(p) { return makeStats((await this._run({ op: "stat", path: p }, "stat", p)).stat); }
  statSync(p) { return makeStats(this._run({ op: "stat", path: p }, "stat", p, true).stat); }
  async lstat(p) { return makeStats((await this._run({ op: "lstat", path: p }, "lstat", p)).stat); }
  lstatSync(p) { return makeStats(this._run({ op: "lstat", path: p }, "lstat", p, true).stat); }

  _entries(out, options) {
    const withTypes = options && options.withFileTypes;
    return out.entries.map((e) => (withTypes ? new VirtualDirent(e.name, e.kind) : e.name));
  }
  async readdir(p, options) { return this._entries(await this._run({ op: "readdir", path: p }, "scandir", p), options); }
  readdirSync(p, options) { return this._entries(this._run({ op: "readdir", path: p }, "scandir", p, true), options); }

  async mkdir(p, options = {}) {
    const mode = typeof options === "number" ? options : options.mode;
    if (options.recursive) {
      let first;
      const parts = normalizeVfsPath(p).split("/").filter(Boolean);
      for (let i = 1; i <= parts.length; i++) {
        const sub = "/" + parts.slice(0, i).join("/");
        try {
          await this._run({ op: "mkdir", path: sub, mode }, "mkdir", sub);
          first = first ?? sub;
        } catch (e) {
          if (e.code !== "EEXIST") throw e;
        }
      }
      return first;
    }
    await this._run({ op: "mkdir", path: p, mode }, "mkdir", p);
  }
  mkdirSync(p, options = {}) {
    const mode = typeof options === "number" ? options : options.mode;
    if (options.recursive) {
      let first;
      const parts = normalizeVfsPath(p).split("/").filter(Boolean);
      for (let i = 1; i <= parts.length; i++) {
        const sub = "/" + parts.slice(0, i).join("/");
        try {
          this._run({ op: "mkdir", path: sub, mode }, "mkdir", sub, true);
          first = first ?? sub;
        } catch (e) {
          if (e.code !== "EEXIST") throw e;
        }
      }
      return first;
    }
    this._run({ op: "mkdir", path: p, mode }, "mkdir", p, true);
  }
  async rmdir(p) { await this._run({ op: "rmdir", path: p }, "rmdir", p); }
  rmdirSync(p) { this._run({ op: "rmdir", path: p }, "rmdir", p, true); }
  async unlink(p) { await this._run({ op: "unlink", path: p }, "unlink", p); }
  unlinkSync(p) { this._run({ op: "unlink", path: p }, "unlink", p, true); }
  async rename(a, b) { await this._run({ op: "rename", path: a, path2: b }, "rename", a); }
  renameSync(a, b) { this._run({ op: "rename", path: a, path2: b }, "rename", a, true); }
  async link(a, b) { await this._run({ op: "link", path: a, path2: b }, "link", a); }
  linkSync(a, b) { this._run({ op: "link", path: a, path2: b }, "link", a, true); }
  async symlink(target, p) { await this._run({ op: "symlink", path: p, path2: target }, "symlink", p); }
  symlinkSync(target, p) { this._run({ op: "symlink", path: p, path2: target }, "symlink", p, true); }
  async readlink(p) { return (await this._run({ op: "readlink", path: p }, "readlink", p)).target; }
  readlinkSync(p) { return this._run({ op: "readlink", path: p }, "readlink", p, true).target; }
  async realpath(p) { return (await this._run({ op: "realpath", path: p }, "realpath", p)).target; }
  realpathSync(p) { return this._run({ op: "realpath", path: p }, "realpath", p, true).target; }
  async access(p, mode = 0) { await this._run({ op: "access", path: p, mode }, "access", p); }
  accessSync(p, mode = 0) { this._run({ op: "access", path: p, mode }, "access", p, true); }
  async statfs(p) { return (await this._run({ op: "statfs", path: p }, "statfs", p)).statfs; }
  async truncate(p, len = 0) { await this._run({ op: "truncate", path: p, length: len }, "truncate", p); }
  async chmod(p, mode) { await this._run({ op: "chmod", path: p, mode }, "chmod", p); }
  async utimes(p, atime, mtime) {
    const ms = (t) => (t instanceof Date ? t.getTime() : Number(t) * 1000);
    await this._run({ op: "utimes", path: p, atimeMs: ms(atime), mtimeMs: ms(mtime) }, "utime", p);
  }
  async exists(p) {
    try {
      await this.stat(p);
      return true;
    } catch {
      return false;
    }
  }
  existsSync(p) {
    try {
      this.statSync(p);
      return true;
    } catch {
      return false;
    }
  }
  async readFile(p, options) {
    const out = await this._run({ op: "readFile", path: p }, "open", p);
    const enc = encodingOf(options);
    return enc ? out.data.toString(enc) : out.data;
  }
  readFileSync(p, options) {
    const out = this._run({ op: "readFile", path: p }, "open", p, true);
    const enc = encodingOf(options);
    return enc ? out.data.toString(enc) : out.data;
  }
  async writeFile(p, data, options) {
    const flags = (options && options.flag) || "w";
    await this._run({ op: "writeFile", path: p, flags, mode: options && options.mode, data: toBuffer(data, encodingOf(options)) }, "open", p);
  }
  writeFileSync(p, data, options) {
    const flags = (options && options.flag) || "w";
    this._run({ op: "writeFile", path: p, flags, mode: options && options.mode, data: toBuffer(data, encodingOf(options)) }, "open", p, true);
  }
  async appendFile(p, data, options) { await this.writeFile(p, data, { ...(typeof options === "object" ? options : { encoding: options }), flag: "a" }); }
  appendFileSync(p, data, options) { this.writeFileSync(p, data, { ...(typeof options === "object" ? options : { encoding: options }), flag: "a" }); }
  async copyFile(src, dest) { await this.writeFile(dest, await this.readFile(src)); }
  copyFileSync(src, dest) { this.writeFileSync(dest, this.readFileSync(src)); }
  async open(p, flags = "r", mode = 0o644) {
    const out = await this._run({ op: "open", path: p, flags, mode }, "open", p);
    return new NativeFileHandle(this, out.fh, p, flags, mode);
  }
  openSync(p, flags = "r", mode = 0o644) {
    const out = this._run({ op: "open", path: p, flags, mode }, "open", p, true);
    return new NativeFileHandle(this, out.fh, p, flags, mode);
  }
  async close() {}
}

const MEMORY_PROVIDER_KEYS = ["capacityBytes"];

class MemoryProvider extends NativeBackedProvider {
  /** @param {{ capacityBytes?: number }} [options] capacityBytes: most bytes of file data held (default 1 GiB) */
  constructor(options = {}) {
    if (options === null || typeof options !== "object") throw optionError("MemoryProvider options must be an object");
    for (const key of Object.keys(options)) {
      if (!MEMORY_PROVIDER_KEYS.includes(key)) {
        const near = nearest(key, MEMORY_PROVIDER_KEYS);
        throw optionError(`unknown option MemoryProvider ${key}; ${near ? `did you mean ${near}?` : `valid keys: ${MEMORY_PROVIDER_KEYS.join(", ")}`}`);
      }
    }
    const { capacityBytes } = options;
    if (capacityBytes !== undefined && !(Number.isSafeInteger(capacityBytes) && capacityBytes >= 0)) {
      throw optionError(`MemoryProvider capacityBytes must be a non-negative integer number of bytes (got ${capacityBytes})`);
    }
    super(native.memoryProvider(capacityBytes));
  }
  /** After this, every mutation fails with EROFS. */
  setReadOnly() {
    this[kNative].setReadOnly();
  }
}

class RealFSProvider extends NativeBackedProvider {
  /**
   * @param {string} rootPath host directory served to the guest
   * @param {{ allowChown?: boolean }} [options] allowChown: let the guest
   *   change owners of host files (default false: chown fails with EPERM)
   */
  constructor(rootPath, options = {}) {
    if (typeof rootPath !== "string" || rootPath === "") {
      throw optionError("RealFSProvider rootPath must be a non-empty string");
    }
    const allowChown = options?.allowChown ?? false;
    if (typeof allowChown !== "boolean") {
      throw optionError("RealFSProvider options.allowChown must be a boolean");
    }
    const resolved = path.resolve(rootPath);
    super(native.realfsProvider(resolved, allowChown));
    Object.defineProperty(this, "rootPath", { value: native.realfsRoot(resolved), enumerable: true });
  }
}

class ReadonlyProvider extends NativeBackedProvider {
  /**
   * @param {VirtualProvider | string} backend provider to wrap; a host
   *   directory path is short for `new RealFSProvider(path)` (the seeds' spelling)
   */
  constructor(backend) {
    if (typeof backend === "string") backend = new RealFSProvider(backend);
    super(native.readonlyProvider(toNative(backend)));
    this.backend = backend;
  }
}

function createShadowPathPredicate(shadowPaths) {
  if (!Array.isArray(shadowPaths)) throw optionError("shadowPaths must be an array of paths");
  const paths = shadowPaths.map((p) => normalizeVfsPath(p)).filter((p) => p !== "/");
  const fn = (ctx) => {
    const candidates = [ctx.path, ctx.oldPath, ctx.newPath].filter((p) => typeof p === "string");
    return candidates.some((c) => {
      const n = normalizeVfsPath(c);
      return paths.some((s) => n === s || n.startsWith(s + "/"));
    });
  };
  Object.defineProperty(fn, kShadowPaths, { value: paths });
  return fn;
}

/** ShadowProvider's `writeMode` values: Rust's WriteMode list. */
const WRITE_MODES = Object.values(native.WriteMode);

class ShadowProvider extends NativeBackedProvider {
  constructor(backend, options) {
    if (!options || typeof options.shouldShadow !== "function") {
      throw optionError("ShadowProvider requires options.shouldShadow callback");
    }
    const writeMode = options.writeMode ?? native.WriteMode.Deny;
    if (!WRITE_MODES.includes(writeMode)) {
      // Checked here: napi's own refusal of a string enum names neither the option nor the choices.
      throw optionError(`ShadowProvider writeMode must be ${WRITE_MODES.map((m) => JSON.stringify(m)).join(" or ")} (got ${JSON.stringify(writeMode)})`);
    }
    if (options.denySymlinkBypass !== undefined && typeof options.denySymlinkBypass !== "boolean") {
      throw optionError("ShadowProvider denySymlinkBypass must be a boolean");
    }
    const paths = options.shouldShadow[kShadowPaths];
    const predicate = paths
      ? null
      : async (ctx) => {
          try {
            return Boolean(await options.shouldShadow(ctx));
          } catch {
            return true; // a predicate that fails hides the path
          }
        };
    const errno = options.denyWriteErrno;
    if (errno !== undefined && !Number.isInteger(errno)) {
      throw optionError(`ShadowProvider denyWriteErrno must be an integer errno (got ${JSON.stringify(errno)})`);
    }
    super(
      native.shadowProvider(
        toNative(backend),
        { paths, writeMode, denySymlinkBypass: options.denySymlinkBypass, denyWriteErrno: errno === undefined ? undefined : Math.abs(errno) },
        predicate,
        options.tmpfs ? toNative(options.tmpfs) : null,
      ),
    );
    this.backend = backend;
  }
}

// ---- JS providers, seen from Rust ----

function errorOutcome(err) {
  const code = err && typeof err.code === "string" && ERRNO[err.code] !== undefined ? err.code : "EIO";
  return { code, errno: ERRNO[code], message: err && err.message ? String(err.message).slice(0, 1024) : undefined };
}

function statOutcome(st) {
  if (!st || typeof st.isDirectory !== "function") throw errnoError("EIO", "stat", undefined, "provider returned no Stats");
  const num = (v, d = 0) => (typeof v === "number" && Number.isFinite(v) ? v : typeof v === "bigint" ? Number(v) : d);
  const mtimeMs = num(st.mtimeMs, st.mtime instanceof Date ? st.mtime.getTime() : Date.now());
  return {
    kind: statKind(st),
    mode: num(st.mode, 0o644) & 0o7777,
    nlink: num(st.nlink, 1),
    uid: num(st.uid),
    gid: num(st.gid),
    size: num(st.size),
    atimeMs: num(st.atimeMs, mtimeMs),
    mtimeMs,
    ctimeMs: num(st.ctimeMs, mtimeMs),
    ino: num(st.ino),
  };
}

function enosys(op) {
  return errnoError("ENOSYS", op, undefined, `provider does not implement ${op}`);
}

/** Call `name` (async) or `nameSync` on a user provider or handle. */
async function invoke(target, name, args) {
  if (typeof target[name] === "function") return await target[name](...args);
  if (typeof target[name + "Sync"] === "function") return target[name + "Sync"](...args);
  throw enosys(name);
}

function has(target, name) {
  return typeof target[name] === "function" || typeof target[name + "Sync"] === "function";
}

const JS_PROVIDER_OPS = native.jsProviderOps();

/** The dispatcher Rust calls for a JS provider: always resolves to an outcome. */
function makeDispatcher(provider) {
  const handles = new Map();
  let nextFh = 1;
  const handle = (fh) => {
    const h = handles.get(fh);
    if (!h) throw errnoError("EBADF", "read");
    return h;
  };
  const ops = {
    async stat(c) { return { stat: statOutcome(await invoke(provider, "stat", [c.path])) }; },
    async lstat(c) { return { stat: statOutcome(await invoke(provider, has(provider, "lstat") ? "lstat" : "stat", [c.path])) }; },
    async readdir(c) {
      const list = await invoke(provider, "readdir", [c.path, { withFileTypes: true }]);
      const entries = [];
      for (const e of list) {
        if (typeof e === "string") {
          let kind = "file";
          try {
            kind = statKind(await invoke(provider, has(provider, "lstat") ? "lstat" : "stat", [path.posix.join(c.path, e)]));
          } catch {}
          entries.push({ name: e, kind });
        } else {
          entries.push({ name: String(e.name), kind: e.isDirectory() ? "dir" : e.isSymbolicLink && e.isSymbolicLink() ? "symlink" : "file" });
        }
      }
      return { entries };
    },
    async open(c) {
      const h = await invoke(provider, "open", [c.path, c.flags, c.mode]);
      if (!h) throw errnoError("EIO", "open", c.path, "provider returned no handle");
      const fh = nextFh++;
      handles.set(fh, { h, append: String(c.flags).includes("a") });
      return { fh };
    },
    async read(c) {
      const { h } = handle(c.fh);
      const buf = Buffer.alloc(c.length);
      const r = await invoke(h, "read", [buf, 0, c.length, c.offset]);
      const n = typeof r === "number" ? r : r && r.bytesRead;
      return { data: buf.subarray(0, Math.max(0, Math.min(n | 0, c.length))) };
    },
    async write(c) {
      const { h, append } = handle(c.fh);
      const r = await invoke(h, "write", [c.data, 0, c.data.length, append ? null : c.offset]);
      return { n: typeof r === "number" ? r : r && r.bytesWritten };
    },
    async fstat(c) { return { stat: statOutcome(await invoke(handle(c.fh).h, "stat", [])) }; },
    async ftruncate(c) { await invoke(handle(c.fh).h, "truncate", [c.length]); return {}; },
    async fsync() { return {}; },
    async close(c) {
      const { h } = handle(c.fh);
      handles.delete(c.fh);
      await invoke(h, "close", []);
      return {};
    },
    async mkdir(c) { await invoke(provider, "mkdir", [c.path, { mode: c.mode }]); return {}; },
    async rmdir(c) { await invoke(provider, "rmdir", [c.path]); return {}; },
    async unlink(c) { await invoke(provider, "unlink", [c.path]); return {}; },
    async rename(c) { await invoke(provider, "rename", [c.path, c.path2]); return {}; },
    async link(c) { await invoke(provider, "link", [c.path, c.path2]); return {}; },
    async symlink(c) { await invoke(provider, "symlink", [c.path2, c.path]); return {}; },
    async readlink(c) { return { target: String(await invoke(provider, "readlink", [c.path])) }; },
    async realpath(c) { return { target: String(await invoke(provider, "realpath", [c.path])) }; },
    async truncate(c) {
      if (has(provider, "truncate")) {
        await invoke(provider, "truncate", [c.path, c.length]);
        return {};
      }
      const h = await invoke(provider, "open", [c.path, "r+"]);
      try {
        await invoke(h, "truncate", [c.length]);
      } finally {
        await invoke(h, "close", []);
      }
      return {};
    },
    // Upstream providers have no metadata setters: without one the change
    // is accepted and dropped (as upstream does), so `touch` keeps working.
    async chmod(c) { if (has(provider, "chmod")) await invoke(provider, "chmod", [c.path, c.mode]); return {}; },
    async chown(c) { if (has(provider, "chown")) await invoke(provider, "chown", [c.path, c.uid, c.gid]); return {}; },
    async utimes(c) {
      if (has(provider, "utimes")) await invoke(provider, "utimes", [c.path, new Date(c.atimeMs ?? Date.now()), new Date(c.mtimeMs ?? Date.now())]);
      return {};
    },
    // The same through an open handle (a file whose name is gone): upstream
    // handles have no setters, so without one the change is dropped too.
    async fchmod(c) { const { h } = handle(c.fh); if (has(h, "chmod")) await invoke(h, "chmod", [c.mode]); return {}; },
    async fchown(c) { const { h } = handle(c.fh); if (has(h, "chown")) await invoke(h, "chown", [c.uid, c.gid]); return {}; },
    async futimes(c) {
      const { h } = handle(c.fh);
      if (has(h, "utimes")) await invoke(h, "utimes", [new Date(c.atimeMs ?? Date.now()), new Date(c.mtimeMs ?? Date.now())]);
      return {};
    },
    async statfs(c) { return { statfs: await invoke(provider, "statfs", [c.path]) }; },
    async access(c) { await invoke(provider, "access", [c.path, c.mode]); return {}; },
    async closeProvider() { if (typeof provider.close === "function") await provider.close(); return {}; },
  };
  // The operation list is Rust's (FsOp): a missing entry is a bug here.
  for (const op of JS_PROVIDER_OPS) {
    if (typeof ops[op] !== "function") throw new Error(`gondolin: JS provider dispatcher lacks ${op}`);
  }
  return async (call) => {
    try {
      const op = ops[call.op];
      if (!op) throw enosys(call.op);
      return await op(call);
    } catch (err) {
      return errorOutcome(err);
    }
  };
}

const jsWrapped = new WeakMap();

/** The NativeProvider for any provider object (built-in or JS). */
function toNative(provider) {
  if (provider === null || typeof provider !== "object") throw optionError("a VFS provider must be an object");
  if (provider[kNative]) return provider[kNative];
  let n = jsWrapped.get(provider);
  if (!n) {
    if (!has(provider, "stat") || !has(provider, "open") || !has(provider, "readdir")) {
      throw optionError("a VFS provider needs at least stat, open and readdir methods");
    }
    n = native.jsProvider(makeDispatcher(provider), Boolean(provider.readonly), Boolean(provider.supportsSymlinks));
    jsWrapped.set(provider, n);
  }
  return n;
}

/** The `vfs.hooks` members: Rust's HookPhase list. */
const HOOK_KEYS = Object.values(native.HookPhase);

/** Refuse a `vfs.hooks` key we do not know (naming the nearest) or a non-function. */
function checkHooks(hooks) {
  if (typeof hooks !== "object" || hooks === null) throw optionError("vfs.hooks must be an object");
  for (const [key, fn] of Object.entries(hooks)) {
    if (!HOOK_KEYS.includes(key)) {
      const near = nearest(key, HOOK_KEYS);
      throw optionError(`unknown option vfs.hooks.${key}; ${near ? `did you mean vfs.hooks.${near}?` : `valid keys: ${HOOK_KEYS.join(", ")}`}`);
    }
    if (fn !== undefined && typeof fn !== "function") throw optionError(`vfs.hooks.${key} must be a function`);
  }
}

/** What a content hook returned: replacement bytes, or null to keep the chunk. */
function contentResult(r, phase) {
  if (r === undefined || r === null) return null;
  if (typeof r === "string" || ArrayBuffer.isView(r)) return toBuffer(r);
  throw errnoError("EIO", phase, undefined, `vfs.hooks.${phase} must return a Buffer, Uint8Array, string or undefined`);
}

/** The dispatcher for `vfs.hooks`. */
function makeHookDispatcher(hooks) {
  return async (call) => {
    const fn = hooks[call.phase];
    if (typeof fn !== "function") return {};
    try {
      if (call.phase === "onRead" || call.phase === "onWrite") {
        const data = contentResult(await fn(call.path, call.data, { offset: call.offset }), call.phase);
        return data ? { data } : {};
      }
      const ctx = { op: call.op };
      for (const k of ["path", "oldPath", "newPath", "flags", "mode", "fh", "offset", "length", "size", "result"]) {
        if (call[k] !== undefined && call[k] !== null) ctx[k] = call[k];
      }
      await fn(ctx);
      return {};
    } catch (err) {
      return errorOutcome(err);
    }
  };
}

/** Base class for user providers (upstream's VirtualProvider). */
class VirtualProvider {
  get readonly() { return false; }
  get supportsSymlinks() { return false; }
  get supportsWatch() { return false; }
}

/** Read-only provider base: subclasses implement openReadonlySync, statSync, lstatSync, readdirSync. */
class ReadonlyVirtualProvider extends VirtualProvider {
  get readonly() { return true; }
  openSync(p, flags = "r", mode) {
    if (isWriteFlag(flags)) throw errnoError("EROFS", "open", p);
    return this.openReadonlySync(p, flags, mode);
  }
  async open(p, flags, mode) { return this.openSync(p, flags, mode); }
  async stat(p, o) { return this.statSync(p, o); }
  async lstat(p, o) { return this.lstatSync(p, o); }
  async readdir(p, o) { return this.readdirSync(p, o); }
  mkdirSync(p) { throw errnoError("EROFS", "mkdir", p); }
  rmdirSync(p) { throw errnoError("EROFS", "rmdir", p); }
  unlinkSync(p) { throw errnoError("EROFS", "unlink", p); }
  renameSync(p) { throw errnoError("EROFS", "rename", p); }
  symlinkSync(t, p) { throw errnoError("EROFS", "symlink", p); }
  async mkdir(p) { this.mkdirSync(p); }
  async rmdir(p) { this.rmdirSync(p); }
  async unlink(p) { this.unlinkSync(p); }
  async rename(p) { this.renameSync(p); }
  async symlink(t, p) { this.symlinkSync(t, p); }
}

/** Tell `provider` (and what it wraps) that `vm` mounts it at `base`. */
function attach(provider, vm, base, links) {
  for (let p = provider; p && typeof p === "object"; p = p.backend) {
    if (!p[kNative]) continue;
    if (!p[kAttached]) Object.defineProperty(p, kAttached, { value: new Set() });
    const link = { vm, base };
    p[kAttached].add(link);
    links.push(() => p[kAttached].delete(link));
  }
}

/**
 * The VM's filesystem: the root provider the guest mounts at fuseMount and
 * the guest paths bind-mounted from it. Returns null for `vfs: null`.
 * `detach()` forgets the VM in every provider when it closes.
 */
/**
 * The host-served /etc/gondolin (src/ingress/etc.rs): the MITM CA read-only
 * under mitm/ when the VM has a network, and `listeners`, the one file the
 * guest may write (64 KiB), which feeds the VM's ingress routes.
 */
class EtcProvider extends NativeBackedProvider {
  constructor(withNet) {
    super(native.etcProvider(withNet ? Buffer.from(native.mitmCaPem()) : undefined));
  }
}

function buildVfs(options, vm) {
  const sandbox = options.sandbox || {};
  if (options.vfs === null) return null;
  const v = options.vfs || {};
  if (typeof v !== "object") throw optionError("vfs must be an object or null");
  const fuseMount = v.fuseMount ?? "/data";
  if (typeof fuseMount !== "string" || !fuseMount.startsWith("/") || fuseMount.includes("\0")) {
    throw optionError(`vfs.fuseMount must be an absolute path (got ${JSON.stringify(fuseMount)})`);
  }
  const mounts = { ...(v.mounts || {}) };
  if (sandbox.vfsProvider) mounts["/"] = sandbox.vfsProvider;
  const keys = new Map();
  for (const [k, p] of Object.entries(mounts)) {
    if (typeof k !== "string" || !k.startsWith("/") || k.includes("\0")) {
      throw optionError(`vfs.mounts keys must be absolute guest paths (got ${JSON.stringify(k)})`);
    }
    const n = normalizeVfsPath(k);
    if (keys.has(n)) throw optionError(`duplicate mount path: ${n}`);
    if (n !== "/" && (n === fuseMount || n.startsWith(fuseMount + "/"))) {
      throw optionError(`vfs.mounts key ${k} lies inside vfs.fuseMount ${fuseMount}; mount it at the provider path instead`);
    }
    keys.set(n, p);
  }
  // ingress: our /etc/gondolin unless the user mounts their own there.
  let listeners = null;
  if (!keys.has("/etc/gondolin")) {
    const etc = new EtcProvider(sandbox.netEnabled !== false);
    listeners = etc[kNative].listeners();
    keys.set("/etc/gondolin", etc);
  }
  if (!keys.has("/")) keys.set("/", new MemoryProvider());
  const builder = new native.NativeMounts();
  const links = [];
  for (const [k, p] of keys) {
    builder.add(k, toNative(p));
    if (vm) attach(p, vm, k, links);
  }
  let root;
  if (v.hooks) {
    checkHooks(v.hooks);
    const kinds = Object.fromEntries(HOOK_KEYS.map((k) => [k, typeof v.hooks[k] === "function"]));
    root = builder.build(makeHookDispatcher(v.hooks), kinds);
  } else {
    root = builder.build(null, null);
  }
  const binds = [...keys.keys()].filter((k) => k !== "/").sort();
  return { root, fuseMount: normalizeVfsPath(fuseMount), binds, listeners, detach: () => links.forEach((f) => f()) };
}

module.exports = {
  MAX_RPC_DATA,
  ERRNO,
  VirtualProvider,
  VirtualProviderClass: VirtualProvider,
  ReadonlyVirtualProvider,
  MemoryProvider,
  RealFSProvider,
  ReadonlyProvider,
  ShadowProvider,
  createShadowPathPredicate,
  normalizeVfsPath,
  isWriteFlag,
  VirtualDirent,
  createVirtualDirStats,
  formatVirtualEntries,
  buildVfs,
  makeStats,
  statsObject,
  check,
  toNative,
  attach, // remote: a remote VM's providers tell it about host-side changes
};
