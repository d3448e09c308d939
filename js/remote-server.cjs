"use strict";
// `gondolin ws-server`'s protocol side (docs/remote-protocol.md): VMs made
// with the public VM class for authenticated connections, their execs and
// vm.fs calls, HTTP hooks and VFS providers that call back to the client,
// detach/reattach, metrics and drain. The wire itself (WebSocket, TLS, auth,
// frame limits, /healthz, /readyz, /metrics) is the transport's
// (src/remote, through the addon's remoteListen).

const { randomBytes } = require("node:crypto");
const { native } = require("./native.cjs");
const { VM } = require("./vm.cjs");
const { ensureImage } = require("./image.cjs");
const { Peer } = require("./remote-peer.cjs");
const { ServerExec } = require("./remote-server-exec.cjs");
const { Metrics } = require("./remote-metrics.cjs");
const wire = require("./remote-wire.cjs");
const { RemoteOptions, defaultMaxMemory, defaultMaxVms, sizeBytes, refuse } = require("./remote-server-options.cjs");

const kNativeProvider = Symbol.for("gondolin.nativeProvider");
const DEFAULT_DETACH_TTL_MS = 10 * 60 * 1000;
const EIO = 5;
/** Most exec output the guest may have in flight to the server (bytes). */
const GUEST_WINDOW_MAX = 1024 * 1024;
const MAX_EXECS_PER_CONNECTION = 1024;
/** Longest path (cwd, vm.fs argument, file for stdinToFile / stdoutFromFile). */
const MAX_PATH_BYTES = 4096;
/** Longest argv / env entry (Linux's MAX_ARG_STRLEN) and most of them together. */
const MAX_ARG_BYTES = 128 * 1024;
const MAX_ARGV_ENV_BYTES = 1024 * 1024;
const MAX_ARGV_ENV_ENTRIES = 8192;
/** Default server-wide stdin budget: stdin credit out at once over all execs (bytes). */
const DEFAULT_STDIN_BUDGET = 256 * 1024 * 1024;
/** Most client-served VFS mounts per VM, and the vfs.hooks phases a client may name. */
const MAX_MOUNTS = 64;
const VFS_HOOK_PHASES = ["before", "after", "onRead", "onWrite"];

/** exec.start's strings within their caps (each refusal names the field). */
function checkExecStrings(msg) {
  const lists = [["argv", msg.argv], ["env", msg.env || []]];
  let total = 0;
  let count = 0;
  for (const [name, list] of lists) {
    count += list.length;
    for (const s of list) {
      const b = Buffer.byteLength(s);
      if (b > MAX_ARG_BYTES) throw refuse(`exec.start: an ${name} entry is longer than ${MAX_ARG_BYTES} bytes`, "invalid_request");
      total += b;
    }
  }
  if (count > MAX_ARGV_ENV_ENTRIES) throw refuse(`exec.start: more than ${MAX_ARGV_ENV_ENTRIES} argv and env entries`, "invalid_request");
  if (total > MAX_ARGV_ENV_BYTES) throw refuse(`exec.start: argv and env are longer than ${MAX_ARGV_ENV_BYTES} bytes together`, "invalid_request");
  for (const k of ["cwd", "stdinToFile", "stdoutFromFile"]) {
    if (typeof msg[k] === "string" && Buffer.byteLength(msg[k]) > MAX_PATH_BYTES) {
      throw refuse(`exec.start: ${k} is longer than ${MAX_PATH_BYTES} bytes`, "invalid_request");
    }
  }
}


/** Checked arguments of each vm.fs call a client may make (the NativeVm guest* methods). */
const FS_OPS = {
  guestStat: (a) => typeof a[0] === "string" && typeof a[1] === "boolean" && a.length === 2,
  guestReadDir: (a) => typeof a[0] === "string" && a.length === 1,
  guestMkdir: (a) => typeof a[0] === "string" && (a[1] == null || Number.isInteger(a[1])) && typeof a[2] === "boolean" && a.length === 3,
  guestRename: (a) => typeof a[0] === "string" && typeof a[1] === "string" && a.length === 2,
  guestRemove: (a) => typeof a[0] === "string" && typeof a[1] === "boolean" && typeof a[2] === "boolean" && a.length === 3,
  guestAccess: (a) => typeof a[0] === "string" && Number.isInteger(a[1]) && a.length === 2,
};

class RemoteServerCore {
  /**
   * @param cfg { image?, kernel?, initrd?, rootfs?, memory?, cpus?, maxVms?, maxMemory?, detachTtlMs?, log? }
   */
  constructor(cfg = {}) {
    this.cfg = cfg;
    this.entries = new Map();
    this.byToken = new Map();
    this.metrics = new Metrics(() => this.entries.size);
    this.draining = false;
    this.server = null;
    this.log = cfg.log || (() => {});
    this.maxMemoryBytes = cfg.maxMemory ? sizeBytes(cfg.maxMemory) : defaultMaxMemory();
    if (Number.isNaN(this.maxMemoryBytes)) throw refuse(`--max-memory: cannot read size ${cfg.maxMemory} (use e.g. 8G)`);
    this.maxMemoryLabel = cfg.maxMemory ?? `${Math.round(this.maxMemoryBytes / 2 ** 20)}M (the default)`;
    this.maxVms = cfg.maxVms ?? defaultMaxVms();
    /** Stdin credit out over all execs, and its bound (see takeStdinBudget). */
    this.stdinHeld = 0;
    this.stdinBudget = cfg.stdinBudget ?? DEFAULT_STDIN_BUDGET;
    /** The allowlist of what a client may set (js/remote-server-options.cjs). */
    this.remoteOptions = new RemoteOptions(cfg);
  }

  /** Listen with the transport; resolves to the transport's RemoteServer. */
  async listen(opts) {
    this.server = await native.remoteListen(
      { maxMessageBytes: wire.MAX_MESSAGE_BYTES + wire.HEADER_BYTES, ...opts },
      (conn) => this.accept(conn),
    );
    this.metrics.sink = (text) => this.server.setMetrics(text);
    this.metrics.publish();
    return this.server;
  }

  /** Serve one connection (authenticated by the transport). */
  accept(conn) {
    const state = { execs: new Map(), pendingSids: new Set(), vms: new Set() };
    const peer = new Peer(conn, {
      request: (msg) => this.request(peer, state, msg),
      message: (msg) => this.message(state, msg),
      data: (d) => {
        const ex = state.execs.get(d.sid);
        if (d.kind !== "stdin") throw new Error(`client sent ${d.kind} data`);
        if (ex) ex.stdin(d.data);
      },
      closed: (reason) => this.disconnected(peer, state, reason),
    });
    peer.run();
    return peer;
  }

  async request(peer, state, msg) {
    switch (msg.t) {
      case "hello":
        if (msg.v !== wire.PROTOCOL_VERSION) {
          throw refuse(`this server speaks protocol v${wire.PROTOCOL_VERSION}, the client v${msg.v}`, "protocol_mismatch");
        }
        return { v: wire.PROTOCOL_VERSION, server: "gondolin", maxDataBytes: wire.MAX_DATA_BYTES };
      case "vm.create":
        return this.create(peer, state, msg);
      case "vm.attach":
        return this.attach(peer, state, msg);
      case "vm.start": {
        const e = this.entry(state, msg.vm);
        const fresh = !e.vm._native;
        await e.vm.start();
        if (fresh) this.metrics.boot();
        return {};
      }
      case "vm.close": {
        const e = this.entry(state, msg.vm);
        await this.closeEntry(e, "closed by its client", true);
        return {};
      }
      case "vm.detach": {
        const e = this.entry(state, msg.vm);
        if (!e.token) {
          e.token = randomBytes(24).toString("base64url");
          this.byToken.set(e.token, e);
        }
        return { token: e.token };
      }
      case "exec.start":
        return this.execStart(peer, state, msg);
      case "fs": {
        const e = this.entry(state, msg.vm);
        const check = Object.hasOwn(FS_OPS, msg.op) ? FS_OPS[msg.op] : null;
        if (!check) throw refuse(`unknown vm.fs operation ${JSON.stringify(msg.op)}`, "invalid_request");
        if (!check(msg.args)) throw refuse(`bad arguments for ${msg.op}`, "invalid_request");
        for (const a of msg.args) if (typeof a === "string" && Buffer.byteLength(a) > MAX_PATH_BYTES) throw refuse(`${msg.op}: a path longer than ${MAX_PATH_BYTES} bytes`, "invalid_request");
        await e.vm.start();
        if (e.vm._closed) throw refuse("VM is closed", "vm_closed");
        return { outcome: await e.vm._native[msg.op](...msg.args) };
      }
      case "sessions":
        // This connection's VMs only: another client's are none of its business.
        return { vms: [...state.vms].map((e) => this.describe(e)) };
      default:
        throw refuse(`${msg.t} is not a request a client sends`, "invalid_request");
    }
  }

  message(state, msg) {
    const ex = state.execs.get(msg.sid);
    switch (msg.t) {
      case "exec.credit":
        if (ex) ex.grant(msg.bytes);
        return;
      case "exec.end":
        if (ex) ex.end();
        return;
      case "exec.kill":
        if (!(msg.signal > 0 && msg.signal <= 64)) throw new Error(`exec.kill: invalid signal ${msg.signal}`);
        if (ex) ex.kill(msg.signal);
        return;
      case "exec.resize":
        if (ex) ex.resize(msg.rows, msg.cols);
        return;
      case "vfs.invalidate": {
        const e = this.entries.get(msg.vm);
        if (Buffer.byteLength(msg.path) > MAX_PATH_BYTES) throw new Error(`vfs.invalidate: a path longer than ${MAX_PATH_BYTES} bytes`);
        if (e && state.vms.has(e) && e.vm._native && !e.vm._closed) e.vm._native.vfsInvalidate(msg.path);
        return;
      }
      default:
        throw new Error(`${msg.t} is not a message a client sends`);
    }
  }

  /** The entry of `vmId` if this connection owns it. */
  entry(state, vmId) {
    const e = this.entries.get(vmId);
    if (!e || !state.vms.has(e)) throw refuse(`no VM ${vmId} on this connection`, "vm_closed");
    return e;
  }

  describe(e) {
    return {
      vm: e.id,
      createdAt: e.createdAt,
      running: Boolean(e.vm._native) && !e.vm._closed,
      attached: e.peer !== null,
      detachable: Boolean(e.token),
      memory: e.memory,
    };
  }

  async create(peer, state, msg) {
    if (this.draining) throw refuse("server is draining: it takes no new VMs; connect to another server", "invalid_state");
    // Rebuilt from the allowlist: nothing the client sent reaches the VM unchecked.
    const o = this.remoteOptions.vmOptions(msg.options);
    const entry = { id: null, vm: null, peer, state, token: null, createdAt: new Date().toISOString(), memory: 0, ttl: null };
    const sandbox = { ...(o.sandbox || {}) };
    const clientImage = sandbox.imagePath;
    // The operator's image (--image) may be a path; it is resolved by image(), not by the VM.
    delete sandbox.imagePath;
    const options = { ...o, remote: false, sandbox, debugLog: null };
    if (options.memory === undefined && sandbox.memory === undefined && this.cfg.memory) options.memory = this.cfg.memory;
    if (options.cpus === undefined && sandbox.cpus === undefined && this.cfg.cpus) options.cpus = this.cfg.cpus;
    const mounts = msg.mounts || [];
    const vfsHooks = msg.vfsHooks || [];
    if (mounts.length > MAX_MOUNTS) throw refuse(`more than ${MAX_MOUNTS} VFS mounts`);
    for (const h of vfsHooks) {
      if (!VFS_HOOK_PHASES.includes(h)) throw refuse(`unknown vfs hook ${JSON.stringify(h).slice(0, 64)}; valid: ${VFS_HOOK_PHASES.join(", ")}`);
    }
    if (o.vfs !== null && (mounts.length || vfsHooks.length)) {
      options.vfs = { ...(o.vfs || {}), mounts: this.proxyMounts(entry, mounts) };
      if (vfsHooks.length) options.vfs.hooks = this.proxyVfsHooks(entry, vfsHooks);
    }
    if (msg.egress) options.onEgress = (ev) => entry.peer && entry.peer.send({ t: "egress", vm: entry.id, event: ev }).catch(() => {});
    const hooks = msg.hooks || [];
    const knownHooks = Object.values(native.HttpHook);
    for (const h of hooks) {
      if (!knownHooks.includes(h)) throw refuse(`unknown HTTP hook ${JSON.stringify(h).slice(0, 64)}; valid: ${knownHooks.join(", ")}`);
    }
    const net = msg.net == null ? null : this.remoteOptions.net(msg.net, Boolean(msg.egress));
    const vm = new VM(options);
    if (vm._net.net) {
      // The client's policy (createHttpHooks rules, DNS, TCP maps) or, without
      // one, what the VM made of the checked options: rebuilt from the
      // allowed fields either way. Its callbacks stay with the client.
      vm._net = {
        ...vm._net,
        net: net || this.remoteOptions.net(vm._net.net, Boolean(msg.egress)),
        secrets: null,
        dispatch: hooks.length ? this.proxyHttp(entry) : null,
        hookNames: hooks,
      };
    }
    const memory = vm._resolved.memory ?? "1G";
    entry.memory = sizeBytes(memory);
    // Fail closed: a size this file cannot read must not escape --max-memory.
    if (!(entry.memory > 0)) throw refuse(`memory ${JSON.stringify(memory)}: write it as e.g. 512M or 2G`);
    const max = this.maxVms;
    if (this.entries.size >= max) {
      throw refuse(`server is full: ${this.entries.size} of --max-vms ${max} VMs run; close one or use another server`, "queue_full");
    }
    const used = [...this.entries.values()].reduce((s, e) => s + e.memory, 0);
    if (used + entry.memory > this.maxMemoryBytes) {
      throw refuse(
        `server is full: ${memory} more guest memory would pass --max-memory ${this.maxMemoryLabel} (${Math.round(used / 2 ** 20)} MiB in use)`,
        "queue_full",
      );
    }
    entry.id = vm.id;
    entry.vm = vm;
    this.entries.set(vm.id, entry);
    state.vms.add(entry);
    this.metrics.changed();
    try {
      vm._image = await this.image(clientImage);
    } catch (err) {
      await this.closeEntry(entry, "image failed");
      throw err;
    }
    this.log(`vm ${vm.id} created (${memory}) for ${peer.conn.remoteAddress}`);
    return this.created(entry);
  }

  created(entry) {
    return { vm: entry.id, defaultEnv: entry.vm._image.defaultEnv ?? [], memory: entry.memory, started: Boolean(entry.vm._native) };
  }

  /** A client's image comes from the store by name or build id only; else the server's own. */
  async image(clientSelector) {
    const img = clientSelector !== undefined ? this.remoteOptions.loadImage(clientSelector) : await ensureImage(this.cfg.image);
    const { kernel, initrd, rootfs } = this.cfg;
    if (!kernel && !initrd && !rootfs) return img;
    return Object.assign(Object.create(Object.getPrototypeOf(img)), img, {
      kernel: kernel ?? img.kernel,
      initrd: initrd ?? img.initrd,
      rootfs: rootfs ?? img.rootfs,
    });
  }

  attach(peer, state, msg) {
    const e = this.byToken.get(msg.token);
    if (!e) throw refuse("no detached VM has this token (it expired, was closed, or the token is wrong)", "vm_closed");
    if (e.peer && e.peer !== peer && !e.peer.closed) {
      e.state.vms.delete(e);
      e.peer.send({ t: "vm.gone", vm: e.id, reason: "attached by another connection" }).catch(() => {});
    }
    clearTimeout(e.ttl);
    e.ttl = null;
    e.peer = peer;
    e.state = state;
    state.vms.add(e);
    this.log(`vm ${e.id} reattached by ${peer.conn.remoteAddress}`);
    return this.created(e);
  }

  /** Providers whose every call goes to the client's provider `mid`. */
  proxyMounts(entry, mounts) {
    const out = {};
    for (const m of mounts) {
      if (!m || typeof m.path !== "string" || !Number.isInteger(m.mid)) throw refuse("mounts entries need { path, mid }");
      if (Buffer.byteLength(m.path) > MAX_PATH_BYTES) throw refuse(`a mount path is longer than ${MAX_PATH_BYTES} bytes`);
      const readonly = Boolean(m.readonly);
      const symlinks = Boolean(m.symlinks);
      const np = native.jsProvider(
        async (call) => {
          const peer = entry.peer;
          if (!peer) return { code: "EIO", errno: EIO, message: "the VM's client is detached" };
          try {
            return (await peer.request({ t: "call", vm: entry.id, kind: "vfs", mid: m.mid, call })).outcome || {};
          } catch (err) {
            return { code: "EIO", errno: EIO, message: `client provider failed: ${err.message}` };
          }
        },
        readonly,
        symlinks,
      );
      out[m.path] = { [kNativeProvider]: np, readonly, supportsSymlinks: symlinks };
    }
    return out;
  }

  /** vfs.hooks whose every call runs in the client (a failure is the client's errno code, else EIO). */
  proxyVfsHooks(entry, phases) {
    const hooks = {};
    for (const phase of phases) {
      hooks[phase] = async (...args) => {
        const peer = entry.peer;
        if (!peer) throw Object.assign(new Error("the VM's client is detached"), { code: "EIO" });
        const r = await peer.request({ t: "call", vm: entry.id, kind: "vfshook", call: { phase, args } });
        return r.result;
      };
    }
    return hooks;
  }

  /** The HTTP hook dispatcher whose every call runs in the client. */
  proxyHttp(entry) {
    return async (call) => {
      const peer = entry.peer;
      if (!peer) return { action: "error", message: "the VM's client is detached" };
      try {
        return (await peer.request({ t: "call", vm: entry.id, kind: "http", call })).outcome;
      } catch (err) {
        return { action: "error", message: `client hook failed: ${err.message}` };
      }
    };
  }

  async execStart(peer, state, msg) {
    const e = this.entry(state, msg.vm);
    if (state.execs.has(msg.sid) || state.pendingSids.has(msg.sid)) throw refuse(`stream id ${msg.sid} is in use`, "invalid_request");
    if (state.execs.size + state.pendingSids.size >= MAX_EXECS_PER_CONNECTION) {
      throw refuse(`more than ${MAX_EXECS_PER_CONNECTION} execs on one connection`, "queue_full");
    }
    const pty = msg.pty;
    if (pty && !(Number.isInteger(pty.rows) && Number.isInteger(pty.cols))) throw refuse("pty needs { rows, cols }", "invalid_request");
    checkExecStrings(msg);
    // The sid and the stdin budget are taken before the first await: concurrent starts see them.
    const stdinBytes = msg.stdin ? this.takeStdinBudget() : 0;
    state.pendingSids.add(msg.sid);
    let n;
    try {
      await e.vm.start();
      if (e.vm._closed) throw refuse("VM is closed", "vm_closed");
      n = await e.vm._native.exec(this.execRequest(msg));
    } catch (err) {
      this.stdinHeld -= stdinBytes;
      throw err;
    } finally {
      state.pendingSids.delete(msg.sid);
    }
    const ex = new ServerExec(peer, msg.sid, n, msg.window, msg.stdin, this.metrics);
    state.execs.set(msg.sid, ex);
    this.metrics.execStarted();
    ex.pump().finally(() => {
      state.execs.delete(msg.sid);
      this.stdinHeld -= stdinBytes;
    });
    // The connection went while the exec was starting: nothing would ever kill it.
    if (peer.closed) ex.kill(9);
    return { execId: n.id };
  }

  /**
   * Reserve one exec's stdin credit (what the client may send before the
   * guest takes any) from the server-wide budget.
   */
  takeStdinBudget() {
    const need = wire.STDIN_WINDOW_BYTES;
    if (this.stdinHeld + need > this.stdinBudget) {
      throw refuse(
        `server is busy: ${Math.round(this.stdinHeld / 2 ** 20)} MiB of stdin credit is out, the budget is ` +
          `${Math.round(this.stdinBudget / 2 ** 20)} MiB; retry when an exec with stdin ends`,
        "queue_full",
      );
    }
    this.stdinHeld += need;
    return need;
  }

  execRequest(msg) {
    const pty = msg.pty;
    return {
      argv: msg.argv,
      env: msg.env,
      cwd: msg.cwd,
      stdin: msg.stdin,
      ptyRows: pty ? pty.rows : undefined,
      ptyCols: pty ? pty.cols : undefined,
      // The guest's own window: what the server may hold beyond one batch.
      windowBytes: Math.min(msg.window, GUEST_WINDOW_MAX),
      stdinToFile: msg.stdinToFile,
      stdoutFromFile: msg.stdoutFromFile,
    };
  }

  async closeEntry(e, why, byClient = false) {
    if (e.closing) return e.closing;
    // Tell a connected owner why its VM went (drain, TTL); it fails its calls with that reason.
    if (!byClient && e.peer && !e.peer.closed) e.peer.send({ t: "vm.gone", vm: e.id, reason: `VM closed: ${why}` }).catch(() => {});
    this.byToken.delete(e.token);
    clearTimeout(e.ttl);
    e.closing = e.vm ? e.vm.close().catch(() => {}) : Promise.resolve();
    await e.closing;
    this.entries.delete(e.id);
    e.state.vms.delete(e);
    this.metrics.changed();
    this.log(`vm ${e.id} closed: ${why}`);
  }

  /** A connection ended: its execs are killed; its VMs close, unless detached (then they wait for a reattach). */
  disconnected(peer, state, reason) {
    // An idle exec (no output to send) would never notice the connection went.
    for (const ex of state.execs.values()) ex.kill(9);
    for (const e of [...state.vms]) {
      if (e.peer !== peer) continue;
      if (e.token) {
        e.peer = null;
        const ttl = this.cfg.detachTtlMs ?? DEFAULT_DETACH_TTL_MS;
        e.ttl = setTimeout(() => this.closeEntry(e, "detached and not reattached in time"), ttl);
        e.ttl.unref?.();
        this.log(`vm ${e.id} detached (${reason}); kept ${ttl} ms for a reattach`);
      } else {
        this.closeEntry(e, `its connection closed (${reason})`);
      }
    }
  }

  /**
   * Stop taking VMs (/readyz turns 503, new connections are refused), let
   * running VMs finish for `graceMs`, then close what is left and stop.
   */
  async drain(graceMs = 30000) {
    this.draining = true;
    if (this.server) this.server.drain();
    const deadline = Date.now() + graceMs;
    while (this.entries.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await Promise.all([...this.entries.values()].map((e) => this.closeEntry(e, "server drained")));
    if (this.server) await this.server.close();
  }

  async close() {
    await Promise.all([...this.entries.values()].map((e) => this.closeEntry(e, "server closed")));
    if (this.server) await this.server.close();
  }
}

module.exports = { RemoteServerCore, sizeBytes };
