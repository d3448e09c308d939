"use strict";
// A VM on a `gondolin ws-server` (our extension): VM.create({ remote: { url,
// token } }) or GONDOLIN_REMOTE. The object is a VM (same prototype chain,
// same exec/shell/vm.fs code in js/vm.cjs, js/exec.cjs, js/fs.cjs); only its
// "native" side is a shim that speaks docs/remote-protocol.md. HTTP hooks,
// VFS providers, vfs.hooks and onEgress stay in this process: the server
// calls them across the connection.

const fs = require("node:fs");
const { native } = require("./native.cjs");
const { VM } = require("./vm.cjs");
const { VmFs } = require("./fs.cjs");
const { netOptions } = require("./net.cjs");
const { toNative, attach, normalizeVfsPath, RealFSProvider } = require("./vfs.cjs");
const { optionError } = require("./options.cjs");
const { Peer, closedError } = require("./remote-peer.cjs");
const wire = require("./remote-wire.cjs");
const { RemoteExecChannel } = require("./remote-exec-channel.cjs");

/**
 * Output credit of a remote exec left at the default windowBytes: room for
 * a network round trip of data in flight. An explicit windowBytes is kept
 * exactly (the host then buffers no more than it would locally).
 */
const DEFAULT_REMOTE_WINDOW = 4 * 1024 * 1024;
const DEFAULT_LOCAL_WINDOW = require("./exec.cjs").windowBytes(undefined);

/**
 * Where `options` wants its VM: null for here, else { url, token, attach }.
 * `remote: false` forces a local VM even with GONDOLIN_REMOTE set.
 */
function remoteTarget(options) {
  const r = options.remote;
  if (r === false) return null;
  if (r === undefined || r === null) {
    const url = process.env.GONDOLIN_REMOTE;
    if (!url) return null;
    const ca = process.env.GONDOLIN_REMOTE_CA ? fs.readFileSync(process.env.GONDOLIN_REMOTE_CA, "utf8") : undefined;
    return { url, token: process.env.GONDOLIN_REMOTE_TOKEN, ca };
  }
  if (typeof r !== "object") throw optionError("remote must be { url, token?, tokenFile?, attach?, ca?, caFile? } or false");
  for (const k of Object.keys(r)) {
    if (!["url", "token", "tokenFile", "attach", "ca", "caFile"].includes(k)) {
      throw optionError(`unknown option remote.${k}; valid keys: url, token, tokenFile, attach, ca, caFile`);
    }
  }
  const url = r.url ?? process.env.GONDOLIN_REMOTE;
  if (typeof url !== "string" || !/^wss?:\/\//.test(url)) {
    throw optionError(`remote.url must be a ws:// or wss:// URL (got ${JSON.stringify(url)})`);
  }
  let token = r.token;
  if (token === undefined && r.tokenFile !== undefined) token = fs.readFileSync(r.tokenFile, "utf8").trim();
  if (token === undefined) token = process.env.GONDOLIN_REMOTE_TOKEN;
  if (token !== undefined && typeof token !== "string") throw optionError("remote.token must be a string");
  let ca = r.ca;
  if (ca === undefined && r.caFile !== undefined) ca = fs.readFileSync(r.caFile, "utf8");
  if (ca === undefined && process.env.GONDOLIN_REMOTE_CA) ca = fs.readFileSync(process.env.GONDOLIN_REMOTE_CA, "utf8");
  return { url, token, attach: r.attach, ca };
}

/** Is `v` plain JSON data (no functions, no class instances)? Returns the path of the first offender. */
function nonJson(v, where, depth = 0) {
  if (depth > 16) return where;
  if (v === null || ["string", "number", "boolean", "undefined"].includes(typeof v)) return null;
  if (typeof v !== "object") return where;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const bad = nonJson(v[i], `${where}[${i}]`, depth + 1);
      if (bad) return bad;
    }
    return null;
  }
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return where;
  for (const [k, x] of Object.entries(v)) {
    const bad = nonJson(x, `${where}.${k}`, depth + 1);
    if (bad) return bad;
  }
  return null;
}

function isRealFs(p) {
  for (let q = p; q && typeof q === "object"; q = q.backend) if (q instanceof RealFSProvider) return q;
  return null;
}

/**
 * Split VM options into what goes to the server (JSON) and what stays here:
 * { wireOptions, net, hooks, dispatch, mounts: [{ path, mid, readonly, symlinks }], providers, onEgress }.
 */
function splitOptions(options) {
  const { remote, httpHooks, fetch, onEgress, debugLog, vfs, env, ...rest } = options;
  const sandbox = { ...(rest.sandbox || {}) };
  for (const k of ["httpHooks", "fetch", "vfsProvider", "debugLog"]) delete sandbox[k];
  if (sandbox.ssh !== undefined || rest.ssh !== undefined) {
    throw optionError("ssh (SSH egress) is not available on a remote VM: its keys and agent would have to live on the server");
  }
  const n = netOptions(options);
  if (n.secrets && n.secrets.list().length > 0) {
    throw optionError(
      "createHttpHooks secrets are not available on a remote VM (protocol v1): the substitution runs where the VM's network runs, " +
        "which is the server; use an onRequest hook (it runs here) to add credentials instead",
    );
  }
  const out = { ...rest, sandbox };
  if (Object.keys(sandbox).length === 0) delete out.sandbox;
  const mounts = [];
  const providers = [];
  const vfsHooks = {};
  const attachable = [];
  if (vfs === null) out.vfs = null;
  else if (vfs !== undefined || (options.sandbox && options.sandbox.vfsProvider)) {
    const v = vfs || {};
    if (typeof v !== "object") throw optionError("vfs must be an object or null");
    const { mounts: userMounts, hooks, ...vrest } = v;
    if (hooks !== undefined && hooks !== null) {
      if (typeof hooks !== "object") throw optionError("vfs.hooks must be an object");
      for (const [k, f] of Object.entries(hooks)) {
        if (typeof f !== "function") throw optionError(`vfs.hooks.${k} must be a function`);
        vfsHooks[k] = f;
      }
    }
    if (Object.keys(vrest).length) out.vfs = vrest;
    const all = { ...(userMounts || {}) };
    if (options.sandbox && options.sandbox.vfsProvider) all["/"] = options.sandbox.vfsProvider;
    for (const [path, p] of Object.entries(all)) {
      const real = isRealFs(p);
      if (real) {
        throw optionError(
          `vfs.mounts[${JSON.stringify(path)}] is a RealFSProvider (${real.rootPath}): on a remote VM that path would be the ` +
            `server's disk, not yours. Serve it from here with a JS provider, or copy files in with vm.fs.writeFile`,
        );
      }
      const np = toNative(p);
      attachable.push([p, normalizeVfsPath(path)]);
      mounts.push({ path, mid: providers.length, readonly: Boolean(p.readonly), symlinks: Boolean(p.supportsSymlinks) });
      providers.push(np);
    }
  }
  const bad = nonJson(out, "options");
  if (bad) {
    throw optionError(`${bad} is not plain JSON data, so it cannot go to a remote server (only httpHooks, fetch, onEgress, vfs.hooks and VFS providers stay in this process)`);
  }
  return {
    wireOptions: out,
    net: n.net ? { ...n.net, events: false } : undefined,
    hooks: n.hookNames || [],
    dispatch: n.dispatch,
    mounts,
    providers,
    vfsHooks,
    attachable,
    onEgress: typeof onEgress === "function" ? onEgress : null,
    env,
  };
}

/**
 * The code of a failed connect: the transport's own (remote_unauthorized,
 * remote_unavailable where the addon has them), else by HTTP status, else
 * connection_closed.
 */
function connectErrorCode(err) {
  const codes = require("./errors.cjs").ErrorCodes;
  if (err && typeof err.code === "string" && codes.includes(err.code)) return err.code;
  if (err && err.status === 401 && codes.includes("remote_unauthorized")) return "remote_unauthorized";
  if (err && err.status === 503 && codes.includes("remote_unavailable")) return "remote_unavailable";
  return "connection_closed";
}

/** Connect to `target`; a failure names the URL and carries a GondolinErrorCode. */
async function connectTo(target) {
  try {
    return await native.remoteConnect(target.url, {
      token: target.token,
      ca: target.ca,
      maxMessageBytes: wire.MAX_MESSAGE_BYTES + wire.HEADER_BYTES,
    });
  } catch (err) {
    const e = new Error(`gondolin remote ${target.url}: ${err.message}`, { cause: err });
    e.code = connectErrorCode(err);
    if (err.status !== undefined) e.status = err.status;
    throw e;
  }
}

/** The NativeVm stand-in: exec and the guest fs calls, sent to the server. */
class RemoteNative {
  constructor(vm) {
    this.vm = vm;
  }
  exec(req) {
    return this.vm._startExec(req);
  }
  info() {
    return { accel: "remote", bootMs: 0, qemuPid: null, remote: this.vm._remote.url };
  }
  /** A provider changed from this side: the guest drops its cached view of `p`. */
  vfsInvalidate(p) {
    this.vm._peer.send({ t: "vfs.invalidate", vm: this.vm.id, path: p }).catch(() => {});
  }
}
for (const op of ["guestStat", "guestReadDir", "guestMkdir", "guestRename", "guestRemove", "guestAccess"]) {
  RemoteNative.prototype[op] = async function (...args) {
    const r = await this.vm._peer.request({ t: "fs", vm: this.vm.id, op, args: args.map((a) => (a === undefined ? null : a)) });
    return r.outcome;
  };
}

function RemoteVM() {
  throw new TypeError("use VM.create({ remote: { url, token } })");
}
Object.setPrototypeOf(RemoteVM.prototype, VM.prototype);

/** Connect, then create (or reattach to) a VM on the server. */
RemoteVM.create = async function create(options, target) {
  const split = splitOptions(options);
  const conn = await connectTo(target);
  const vm = Object.create(RemoteVM.prototype);
  vm._init(options, target, split, conn);
  try {
    await vm._peer.request({ t: "hello", v: wire.PROTOCOL_VERSION, client: "gondolin-js" });
    const common = { hooks: split.hooks, mounts: split.mounts, vfsHooks: Object.keys(split.vfsHooks), egress: Boolean(split.onEgress) };
    const r = target.attach
      ? await vm._peer.request({ t: "vm.attach", token: target.attach, ...common })
      : await vm._peer.request({ t: "vm.create", options: split.wireOptions, net: split.net, ...common });
    vm.id = r.vm;
    vm._image = { defaultEnv: r.defaultEnv };
    // Host-side writes to a mounted built-in provider reach the guest at once, as locally.
    const links = [];
    for (const [p, base] of split.attachable) attach(p, vm, base, links);
    vm._detachProviders = () => links.forEach((f) => f());
    if (r.started) {
      vm._native = new RemoteNative(vm);
      vm._starting = Promise.resolve();
    }
  } catch (err) {
    vm._peer.close(1000, "create failed");
    throw err;
  }
  return vm;
};

Object.assign(RemoteVM.prototype, {
  _init(options, target, split, conn) {
    this._options = options;
    this._remote = target;
    this._split = split;
    this._resolved = {};
    this._debugFlags = new Set();
    this._debugLog = null;
    this._net = {};
    this._vfs = null;
    this.id = null;
    this._image = null;
    this._native = null;
    this._starting = null;
    this._closing = null;
    this._closed = false;
    this._checkpointed = false;
    this._channels = new Map();
    this._nextSid = 1;
    this.fs = new VmFs(this);
    this._peer = new Peer(
      conn,
      {
        request: (msg) => this._call(msg),
        message: (msg) => this._message(msg),
        data: (d) => {
          const ch = this._channels.get(d.sid);
          if (!ch) throw new Error(`data for unknown stream ${d.sid}`);
          ch.onData(d.kind, d.data);
        },
        closed: (reason) => {
          if (this._detachProviders) this._detachProviders();
          this._lost = reason;
          this._closed = true;
          for (const ch of this._channels.values()) ch.onClosed(reason);
          this._channels.clear();
        },
      },
      // The server's hook requests carry HTTP bodies and file data as JSON.
      { maxTextBytes: wire.MAX_MESSAGE_BYTES },
    );
    this._peer.run();
  },

  /** A server → client call: an HTTP hook or a VFS provider operation. */
  async _call(msg) {
    if (msg.t !== "call") throw optionError(`${msg.t} is not a request a server sends`);
    if (msg.kind === "http") {
      if (!this._split.dispatch) throw new Error("this VM has no HTTP hooks");
      return { outcome: await this._split.dispatch(msg.call) };
    }
    if (msg.kind === "vfs") {
      const p = this._split.providers[msg.mid];
      if (!p) throw new Error(`no provider ${msg.mid}`);
      return { outcome: await p.call(msg.call) };
    }
    if (msg.kind === "vfshook") {
      const c = msg.call || {};
      const fn = this._split.vfsHooks[c.phase];
      if (typeof fn !== "function" || !Array.isArray(c.args)) throw new Error(`no vfs.hooks.${c.phase}`);
      const result = await fn(...c.args);
      // onRead/onWrite may return replacement bytes; the other phases return nothing.
      return { result: typeof result === "string" || ArrayBuffer.isView(result) ? result : undefined };
    }
    throw new Error(`unknown call kind ${msg.kind}`);
  },

  _message(msg) {
    const ch = msg.sid !== undefined ? this._channels.get(msg.sid) : undefined;
    switch (msg.t) {
      case "exec.exit":
      case "exec.error":
        if (!ch) throw new Error(`${msg.t} for unknown stream ${msg.sid}`);
        this._channels.delete(msg.sid);
        ch.onEnd(msg);
        return;
      case "stdin.credit":
        if (ch) ch.onStdinCredit(msg.bytes);
        return;
      case "egress":
        if (this._split.onEgress) {
          try {
            this._split.onEgress(msg.event);
          } catch (err) {
            process.emitWarning(`gondolin: onEgress threw: ${err && err.message}`);
          }
        }
        return;
      case "vm.gone":
        this._peer.close(1000, msg.reason);
        return;
      default:
        throw new Error(`${msg.t} is not a message a server sends`);
    }
  },

  _startExec(req) {
    if (this._peer.closed) return Promise.reject(closedError(this._lost));
    const sid = this._nextSid++;
    const asked = req.windowBytes || DEFAULT_LOCAL_WINDOW;
    const window = Math.min(asked === DEFAULT_LOCAL_WINDOW ? DEFAULT_REMOTE_WINDOW : asked, wire.MAX_WINDOW_BYTES);
    const ch = new RemoteExecChannel(this._peer, sid, window, Boolean(req.stdin));
    this._channels.set(sid, ch);
    const msg = {
      t: "exec.start",
      vm: this.id,
      sid,
      argv: req.argv,
      env: req.env,
      cwd: req.cwd,
      stdin: Boolean(req.stdin),
      pty: req.ptyRows ? { rows: req.ptyRows, cols: req.ptyCols } : undefined,
      window,
      stdinToFile: req.stdinToFile,
      stdoutFromFile: req.stdoutFromFile,
    };
    return this._peer.request(msg).then(
      (r) => {
        ch.id = r.execId;
        return ch;
      },
      (err) => {
        this._channels.delete(sid);
        throw err;
      },
    );
  },

  async _boot() {
    await this._peer.request({ t: "vm.start", vm: this.id });
    if (this._closed) throw this._closedError();
    this._native = new RemoteNative(this);
  },

  _closedError() {
    const e = new Error(this._lost ? `VM is closed (remote connection: ${this._lost})` : "VM is closed");
    e.code = "vm_closed";
    return e;
  },

  /** Close the VM on the server, then the connection. */
  close() {
    if (!this._closing) {
      this._closed = true;
      this._closing = (async () => {
        if (this._starting) await this._starting.catch(() => {});
        if (!this._peer.closed) {
          await this._peer.request({ t: "vm.close", vm: this.id }).catch(() => {});
          this._peer.close(1000, "client closed the VM");
        }
      })();
    }
    return this._closing;
  },

  /**
   * Ours: keep the VM on the server after this connection ends. Resolves to
   * a token; `VM.create({ remote: { url, token, attach: TOKEN } })` gets the
   * VM back (until the server's detach TTL). This object disconnects.
   */
  async detach() {
    const r = await this._peer.request({ t: "vm.detach", vm: this.id });
    this._closed = true;
    this._closing = Promise.resolve();
    this._peer.close(1000, "client detached");
    return r.token;
  },

  getHostPid() {
    return null;
  },
  setDebugLog() {},
  _vfsPath() {
    return null;
  },
  enableSsh() {
    return Promise.reject(optionError("enableSsh is not available on a remote VM (protocol v1)"));
  },
  enableIngress() {
    return Promise.reject(optionError("enableIngress is not available on a remote VM (protocol v1)"));
  },
  checkpoint() {
    return Promise.reject(optionError("checkpoint is not available on a remote VM (protocol v1): the file would be on the server"));
  },
  getIngressRoutes() {
    return [];
  },
});
Object.defineProperty(RemoteVM.prototype, "info", {
  get() {
    return this._native ? this._native.info() : null;
  },
});

module.exports = { RemoteVM, remoteTarget, splitOptions };
