"use strict";
// The VM class: lazy boot, singleflight start/close, exec.

const { randomUUID } = require("node:crypto");
const path = require("node:path");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const { mergeEnv, envToEntries } = require("./env.cjs");
const { ExecProcess, normalizeCommand, windowBytes } = require("./exec.cjs");
const { ensureImage, cacheRoot } = require("./image.cjs");
const { VmFs, kStdinToFile, kStdoutFromFile } = require("./fs.cjs");
const { buildVfs } = require("./vfs.cjs");
const { resolveOptions, optionError, defaultDebugLog } = require("./options.cjs");
const { netOptions, pumpEgress } = require("./net.cjs");
const { registerVmSession } = require("./sessions.cjs"); // sessions
const { enableSsh } = require("./ssh-access.cjs");
const { enableIngress, normalizeRoutes } = require("./ingress.cjs"); // ingress

const DEFAULT_START_TIMEOUT_MS = 120000;

/** VmCheckpoint.resume's hook: boot this VM from a checkpoint (internal). */
const kResume = Symbol("gondolin.resume");

const CHECKPOINTED = "vm was checkpointed and cannot be restarted; resume the checkpoint instead";

/**
 * Where boot templates live (one subdirectory per image + machine key,
 * built by the addon on first use): `$GONDOLIN_TEMPLATE_DIR`, else
 * `<cache root>/templates`.
 */
function templateDir() {
  if (process.env.GONDOLIN_TEMPLATE_DIR) return path.resolve(process.env.GONDOLIN_TEMPLATE_DIR);
  return path.join(cacheRoot(), "templates");
}

/** `sandbox.bootSnapshot` (default true) unless `GONDOLIN_BOOT_SNAPSHOT=0`. */
function bootTemplate(resolved) {
  if (resolved.bootSnapshot === false) return null;
  if (resolved.bootSnapshot === undefined && process.env.GONDOLIN_BOOT_SNAPSHOT === "0") return null;
  return { dir: templateDir() };
}

function startTimeout(options) {
  let v = options.startTimeoutMs;
  if (v === undefined && process.env.GONDOLIN_START_TIMEOUT_MS !== undefined) {
    v = Number(process.env.GONDOLIN_START_TIMEOUT_MS);
  }
  if (typeof v !== "number" || !Number.isFinite(v)) return DEFAULT_START_TIMEOUT_MS;
  return v <= 0 ? 0 : v;
}

function validateOptions(options) {
  // `remote` (ours, js/remote-client.cjs) says where the VM runs; only
  // VM.create can connect, so here it may only be false (this machine).
  const { remote, ...local } = options;
  if (remote !== undefined && remote !== false) throw optionError("a remote VM comes from VM.create({ remote }), not new VM()");
  const resolved = resolveOptions(local);
  if (options.env !== undefined) invalidOption(() => envToEntries(options.env, "env"));
  return resolved;
}

/**
 * Run a JS-side option parser (env, network, VFS: the parts holding
 * functions and provider objects); its TypeErrors are option errors.
 */
function invalidOption(parse) {
  try {
    return parse();
  } catch (err) {
    if (err instanceof TypeError && err.code === undefined) err.code = "invalid_option";
    throw err;
  }
}

/** vfs hooks that also report each guest file operation as a "vfs" debug line. */
function debugVfsHooks(v, log) {
  const user = (v && v.hooks) || {};
  return {
    ...v,
    hooks: {
      ...user,
      after: async (ctx) => {
        const where = ctx.path ?? (ctx.oldPath !== undefined ? `${ctx.oldPath} -> ${ctx.newPath}` : "");
        log("vfs", `${ctx.op} ${where}${ctx.result !== undefined ? ` = ${ctx.result}` : ""}`.trimEnd());
        if (typeof user.after === "function") await user.after(ctx);
      },
    },
  };
}

class VM {
  static async create(options = {}) {
    // remote: a VM on a `gondolin ws-server` (js/remote-client.cjs)
    const remote = require("./remote-client.cjs");
    const target = options && remote.remoteTarget(options);
    if (target) return remote.RemoteVM.create(options, target);
    const vm = new VM(options);
    // Resolve (and on first use, build) the image now, as upstream resolves assets in create().
    vm._image = await ensureImage((options.sandbox || {}).imagePath);
    // Like upstream, create() does not boot: start() or the first use does.
    return vm;
  }

  constructor(options = {}) {
    this._resolved = validateOptions(options);
    this._options = options;
    const sandbox = options.sandbox || {};
    this._debugFlags = this._resolved.debug;
    // Upstream: the sink defaults to console.log when any flag is on; null = silent.
    const sink = options.debugLog !== undefined ? options.debugLog : sandbox.debugLog;
    this._debugLog = sink === undefined ? defaultDebugLog : sink;
    this._net = invalidOption(() => netOptions(options));
    // Egress records are the "net" debug lines.
    if (this._net.net && this._debugFlags.has("net")) this._net.net.events = true;
    this.id = randomUUID();
    this._image = null;
    this._native = null;
    this._starting = null;
    this._closing = null;
    /** The running boot's cancel switch (close() during a boot kills QEMU). */
    this._bootCancel = null;
    this._closed = false;
    this._checkpointed = false;
    /** Set by VmCheckpoint.resume: { checkpoint, image, memory }. */
    this._resume = null;
    // The provider stack exists before boot: vm.fs on VFS paths uses it
    // without booting the guest.
    // A mount at /data moves the FUSE root out of the way (checked in Rust).
    let vfs = this._resolved.fuseMount ? { ...options.vfs, fuseMount: this._resolved.fuseMount } : options.vfs;
    if (vfs !== null && this._debugFlags.has("vfs")) vfs = debugVfsHooks(vfs, (c, m) => this._debug(c, m));
    this._vfs = invalidOption(() => buildVfs(vfs === options.vfs ? options : { ...options, vfs }, this));
    this.fs = new VmFs(this);
  }

  /** Send one debug line to the sink when `component` is enabled; sink errors are ignored. */
  _debug(component, message) {
    const log = this._debugLog;
    if (!log || !this._debugFlags.has(component)) return;
    try {
      log(component, message);
    } catch {
      // a debug sink must not break the VM
    }
  }

  /** Replace the debug sink; null silences it. Which components log is fixed at construction. */
  setDebugLog(callback) {
    if (callback !== null && typeof callback !== "function") throw optionError("debugLog must be a function or null");
    this._debugLog = callback;
  }

  /** The QEMU process id, or null before boot and after close. */
  getHostPid() {
    if (!this._native || this._closed) return null;
    return this._native.info().qemuPid ?? null;
  }

  /**
   * If `p` (absolute, normalized) is served by the VFS, the provider path
   * under the FUSE root; else null.
   */
  _vfsPath(p) {
    const v = this._vfs;
    if (!v) return null;
    const under = (base) => p === base || p.startsWith(base + "/");
    if (under(v.fuseMount)) return p.slice(v.fuseMount.length) || "/";
    let best = null;
    for (const b of v.binds) if (under(b) && (!best || b.length > best.length)) best = b;
    return best ? p : null;
  }

  /** Boot (once) and wait until the guest is ready. */
  /**
   * The boot a first use triggers. With `autoStart: false` (upstream 0.13)
   * a VM never boots implicitly: use before `start()` is refused.
   */
  _implicitStart() {
    if (this._options.autoStart === false && !this._starting) {
      return Promise.reject(
        withCode("VM is not started and autoStart is false; call vm.start() first", "vm_not_started"),
      );
    }
    return this.start();
  }

  start() {
    if (this._checkpointed) return Promise.reject(withCode(CHECKPOINTED, "vm_closed"));
    if (this._closed) return Promise.reject(withCode("VM is closed", "vm_closed"));
    if (!this._starting) {
      this._starting = this._boot();
      this._starting.catch(() => {});
    }
    return this._starting;
  }

  async _boot() {
    const o = this._options;
    const sandbox = o.sandbox || {};
    const image = this._image || (this._image = await ensureImage(sandbox.imagePath));
    if (this._closed) throw withCode("VM is closed", "vm_closed");
    const mode = this._rootfsMode(image);
    let cmdline = sandbox.append ?? image.cmdline;
    if (this._resolved.tmpfsCmdline) cmdline = `${cmdline} ${this._resolved.tmpfsCmdline}`;
    const memory = this._resolved.memory ?? "1G";
    const cpus = this._resolved.cpus ?? 2;
    this._debug("vm", `booting: ${memory} memory, ${cpus} cpus, rootfs ${mode}`);
    let n;
    // close() during the boot cancels it: the addon drops the boot and kills QEMU.
    const cancel = new native.NativeBootCancel();
    this._bootCancel = cancel;
    try {
      n = await native.startVm({
        kernel: image.kernel,
        initrd: image.initrd,
        rootfs: image.rootfs,
        cmdline,
        rootfsMode: mode,
        rootfsSize: this._resolved.rootfsSize,
        memory,
        cpus,
        accel: sandbox.accel,
        qemuPath: sandbox.qemuPath,
        machine: sandbox.machineType,
        cpu: sandbox.cpu ?? process.env.GONDOLIN_CPU,
        startTimeoutMs: startTimeout(o),
        // Guest console and QEMU stderr echo to stderr with the "vm" component.
        debug: this._debugFlags.has("vm") && this._debugLog !== null,
        fuseMount: this._vfs ? this._vfs.fuseMount : undefined,
        binds: this._vfs ? this._vfs.binds : undefined,
        net: this._net.net || undefined,
        // A resumed VM starts from its checkpoint, never from a template.
        resume: this._resume ? { checkpoint: this._resume.checkpoint } : undefined,
        // (undefined, not null: napi reads an absent object field as None.)
        bootTemplate: (!this._resume && bootTemplate(this._resolved)) || undefined,
      }, this._vfs ? this._vfs.root : null, this._net.secrets, this._net.dispatch, this._net.hookNames, cancel);
    } catch (err) {
      this._closed = true;
      this._bootCancel = null;
      this._debug("vm", `boot failed: ${err.message}`);
      throw err;
    }
    if (this._closed) {
      // close() ran while we were booting: don't leak the VM.
      await n.close();
      throw withCode("VM is closed", "vm_closed");
    }
    this._bootCancel = null;
    this._native = n;
    const info = n.info();
    this._debug(
      "vm",
      `running: accel ${info.accel}, ${info.startedFrom || "boot"} ${Math.round(info.bootMs)} ms, qemu pid ${info.qemuPid}`,
    );
    const onEgress = this._egressSink(o.onEgress);
    if (onEgress) pumpEgress(n, onEgress).catch(() => {});
    try {
      this._session = await registerVmSession(this, o.sessionLabel, (req) => this._snapshotForSession(req.path, req.memory));
    } catch (err) {
      // sessions: the VM works without its registry entry; warn once per process.
      if (!VM._sessionWarned) process.emitWarning(`gondolin: could not register the session: ${err.message}`);
      VM._sessionWarned = true;
    }
  }

  /** The egress consumer: the user's onEgress and/or the "net" debug lines. */
  _egressSink(onEgress) {
    const user = typeof onEgress === "function" ? onEgress : null;
    if (!this._debugFlags.has("net")) return user;
    return (e) => {
      const what = e.url ? `${e.method} ${e.url}` : `${e.protocol} ${e.host}`;
      const why = e.reason ? ` (${e.reason})` : "";
      this._debug("net", `${e.decision} ${what}${e.status !== undefined ? ` ${e.status}` : ""}${why}`);
      if (user) user(e);
    };
  }

  /** Run a command; returns a thenable ExecProcess at once. */
  exec(command, options = {}) {
    if (options === null || typeof options !== "object") throw optionError("exec options must be an object");
    const argv = normalizeCommand(command, options);
    const env = mergeEnv(
      [this._image ? this._image.defaultEnv : undefined, "the image's env"],
      [this._options.env, "env"],
      [options.env, "exec options.env"],
    );
    if (options.cwd !== undefined && (typeof options.cwd !== "string" || !options.cwd.startsWith("/"))) {
      throw optionError(`exec options.cwd must be an absolute path (got ${JSON.stringify(options.cwd)})`);
    }
    const stdin = options.stdin !== undefined && options.stdin !== false;
    const pty = Boolean(options.pty);
    const req = {
      argv,
      env,
      cwd: options.cwd,
      stdin,
      ptyRows: pty ? 24 : undefined,
      ptyCols: pty ? 80 : undefined,
      windowBytes: windowBytes(options.windowBytes),
      stdinToFile: options[kStdinToFile],
      stdoutFromFile: options[kStdoutFromFile],
    };
    const nativeExec = this._closed
      ? Promise.reject(this._closedError())
      : this._implicitStart().then(() => {
          if (this._closed) throw this._closedError();
          return this._native.exec(req);
        });
    const proc = new ExecProcess(nativeExec, options);
    if (this._debugFlags.has("exec")) {
      // Env keys only: values may be secrets (as upstream).
      const keys = env.map((e) => e.slice(0, e.indexOf("=")));
      this._debug("exec", `exec ${JSON.stringify(argv)}${options.cwd ? ` cwd=${options.cwd}` : ""} env keys=[${keys.join(",")}]`);
      proc.result.then(
        (r) => this._debug("exec", `exit ${r.exitCode} ${JSON.stringify(argv[0])}`),
        (err) => this._debug("exec", `failed ${JSON.stringify(argv[0])}: ${err && err.message}`),
      );
    }
    return proc;
  }

  shell(options = {}) {
    const attach = options.attach ?? Boolean(process.stdin.isTTY);
    let term = process.env.TERM;
    if (!term || term === "xterm-ghostty") term = "xterm-256color";
    const env = Object.fromEntries(envToEntries(options.env, "shell options.env"));
    if (env.TERM === undefined) env.TERM = term;
    const proc = this.exec(options.command || ["/bin/bash", "-i"], {
      env,
      cwd: options.cwd,
      signal: options.signal,
      stdin: true,
      pty: true,
      // Piped either way: attach() forwards the pipes to the terminal.
      stdout: "pipe",
      stderr: "pipe",
    });
    if (attach) proc.attach(process.stdin, process.stdout, process.stderr);
    return proc;
  }

  /**
   * Start the guest's sshd on its loopback and a host port forwarded to it
   * (upstream API). Idempotent: later calls return the same access while it
   * is open. Closed with the VM.
   */
  enableSsh(options = {}) {
    if (this._closed) return Promise.reject(this._closedError());
    if (!this._ssh) {
      this._ssh = enableSsh(this, options).then((access) => {
        const close = access.close;
        access.close = () => {
          if (this._ssh === pending) this._ssh = null;
          return close();
        };
        return access;
      });
      const pending = this._ssh;
      pending.catch(() => {
        if (this._ssh === pending) this._ssh = null;
      });
    }
    return this._ssh;
  }

  // ---- ingress (js/ingress.cjs) ----

  /**
   * Start the host HTTP gateway routed by /etc/gondolin/listeners (upstream
   * API). Idempotent: later calls return the same access while it is open.
   * Closed with the VM. Needs the network (ours: `invalid_state` without).
   */
  enableIngress(options = {}) {
    if (this._closed) return Promise.reject(this._closedError());
    if (!this._ingress) {
      const pending = enableIngress(this, options).then((access) => {
        const close = access.close;
        access.close = () => {
          if (this._ingress === pending) this._ingress = null;
          return close();
        };
        return access;
      });
      this._ingress = pending;
      pending.catch(() => {
        if (this._ingress === pending) this._ingress = null;
      });
    }
    return this._ingress;
  }

  /** The current ingress routes; [] without the /etc/gondolin mount. */
  getIngressRoutes() {
    const l = this._vfs && this._vfs.listeners;
    return l ? l.routes() : [];
  }

  /** Replace the routes and rewrite /etc/gondolin/listeners in canonical form. */
  setIngressRoutes(routes) {
    const l = this._vfs && this._vfs.listeners;
    if (!l) throw withCode("/etc/gondolin mount is not available", "invalid_state");
    l.setRoutes(normalizeRoutes(routes));
  }

  /**
   * Ours: why the last reload of /etc/gondolin/listeners failed (the old
   * routes stayed), or null.
   */
  getIngressReloadError() {
    const l = this._vfs && this._vfs.listeners;
    const e = l ? l.reloadError() : null;
    return e ? withCode(e, "invalid_option") : null;
  }

  /** Why a call on a closed VM fails (a checkpointed one says so). */
  _closedError() {
    return withCode(this._checkpointed ? CHECKPOINTED : "VM is closed", "vm_closed");
  }

  /** The rootfs mode this VM runs (or will run) with. */
  _rootfsMode(image) {
    if (this._resume) return "cow"; // a private overlay over the checkpoint
    return this._resolved.rootfsMode || image.defaultRootfsMode || "cow";
  }

  /** VmCheckpoint.resume: boot from `spec.checkpoint` with `spec.image`. */
  [kResume](spec) {
    this._resume = spec;
    this._image = spec.image;
  }

  /**
   * Save the VM into one checkpoint file (absolute `checkpointPath`) and
   * consume it: QEMU stops, the VM closes, start() is refused afterwards.
   * `options.memory` (our extension) also saves RAM and device state, so a
   * resume continues running processes; without it the checkpoint is
   * upstream's disk-only one. Resolves to the VmCheckpoint.
   */
  checkpoint(checkpointPath, options = {}) {
    return this._checkpoint(checkpointPath, options, false);
  }

  /** The attach server's `snapshot`: checkpoint, then close the session without waiting (it sends the reply). */
  async _snapshotForSession(checkpointPath, memory) {
    const cp = await this._checkpoint(checkpointPath, { memory }, true);
    return { path: cp.path, name: cp.name };
  }

  async _checkpoint(checkpointPath, options, forSession) {
    if (checkpointPath === undefined || checkpointPath === null || checkpointPath === "") {
      throw withCode("checkpointPath is required", "invalid_option", undefined, TypeError);
    }
    if (typeof checkpointPath !== "string" || !path.isAbsolute(checkpointPath)) {
      throw withCode(`checkpointPath must be an absolute path (got: ${checkpointPath})`, "invalid_option", undefined, TypeError);
    }
    if (options === null || typeof options !== "object") throw optionError("checkpoint options must be an object");
    const unknown = Object.keys(options).find((k) => k !== "memory");
    if (unknown !== undefined) throw optionError(`unknown checkpoint option ${unknown}; valid keys: memory`);
    if (options.memory !== undefined && typeof options.memory !== "boolean") {
      throw optionError("checkpoint options.memory must be a boolean");
    }
    if (this._checkpointed) throw withCode(CHECKPOINTED, "vm_closed");
    if (this._closed) throw withCode("VM is closed", "vm_closed");
    const image = this._image || (this._image = await ensureImage((this._options.sandbox || {}).imagePath));
    const mode = this._rootfsMode(image);
    if (mode === "memory") {
      throw withCode("cannot checkpoint: root disk is running in ephemeral snapshot mode", "invalid_option");
    }
    if (mode !== "cow") throw withCode("cannot checkpoint: root disk must be qcow2 (got raw)", "invalid_option");
    if (!image.buildId) {
      throw withCode(
        "cannot checkpoint: guest assets are missing manifest buildId (rebuild guest assets with a newer gondolin build)",
        "invalid_image",
      );
    }
    await this.start();
    // (The native checkpoint syncs the guest's disk first, within a bound.)
    if (this._checkpointed) throw withCode(CHECKPOINTED, "vm_closed");
    if (this._closed) throw withCode("VM is closed", "vm_closed");
    // From here the VM is consumed: new execs and start() are refused.
    this._checkpointed = true;
    this._closed = true;
    const n = this._native;
    const session = this._session;
    const done = (async () => {
      try {
        // The attach server answering a `snapshot` waits for this function:
        // closing it here would wait on ourselves; it closes after the reply.
        if (session && !forSession) await session.close();
        const name = path.parse(checkpointPath).name;
        const trailer = await n.checkpoint(checkpointPath, {
          memory: options.memory === true,
          name,
          guestAssetBuildId: image.buildId,
        });
        const { VmCheckpoint } = require("./checkpoint.cjs");
        return new VmCheckpoint(checkpointPath, JSON.parse(trailer), this._options);
      } finally {
        // Consumed either way: what is left of the VM goes.
        await n.close().catch(() => {});
        if (this._vfs) this._vfs.detach();
        if (this._ingress) this._ingress.then((a) => a.close(), () => {}); // ingress
        if (session && forSession) session.close().catch(() => {});
        this._debug("vm", `checkpointed to ${checkpointPath}`);
      }
    })();
    this._closing = done.then(
      () => {},
      () => {},
    );
    return done;
  }

  /**
   * Stop the VM and remove its temp files. Idempotent; concurrent calls
   * share one close. During a boot it kills QEMU at once (the boot rejects
   * with `vm_closed`) instead of waiting for the boot to finish.
   */
  close() {
    if (!this._closing) {
      this._closed = true;
      if (this._bootCancel) this._bootCancel.cancel();
      this._closing = (async () => {
        if (this._starting) await this._starting.catch(() => {});
        if (this._session) await this._session.close(); // sessions
        if (this._ssh) await this._ssh.then((a) => a.close(), () => {});
        if (this._ingress) await this._ingress.then((a) => a.close(), () => {}); // ingress
        if (this._native) await this._native.close();
        if (this._vfs) this._vfs.detach();
        if (this._native) this._debug("vm", "closed");
      })();
    }
    return this._closing;
  }

  /** Diagnostics: accelerator, boot time, QEMU pid, temp dir. */
  get info() {
    return this._native ? this._native.info() : null;
  }
}

module.exports = { VM, kResume, templateDir };
