"use strict";
// The VM class: lazy boot, singleflight start/close, exec.

const { randomUUID } = require("node:crypto");
const { native } = require("./native.cjs");
const { fromNative, withCode } = require("./errors.cjs");
const { mergeEnv, envToEntries } = require("./env.cjs");
const { ExecProcess, normalizeCommand, windowBytes } = require("./exec.cjs");
const { ensureImage } = require("./image.cjs");
const { VmFs, kStdinToFile, kStdoutFromFile } = require("./fs.cjs");
const { buildVfs } = require("./vfs.cjs");
const { netOptions, pumpEgress } = require("./net.cjs");
const { registerVmSession } = require("./sessions.cjs"); // sessions

const DEFAULT_START_TIMEOUT_MS = 120000;
const ROOTFS_MODES = ["readonly", "memory", "cow"];

function startTimeout(options) {
  let v = options.startTimeoutMs;
  if (v === undefined && process.env.GONDOLIN_START_TIMEOUT_MS !== undefined) {
    v = Number(process.env.GONDOLIN_START_TIMEOUT_MS);
  }
  if (typeof v !== "number" || !Number.isFinite(v)) return DEFAULT_START_TIMEOUT_MS;
  return v <= 0 ? 0 : v;
}

function validateOptions(options) {
  if (options === null || typeof options !== "object") throw new TypeError("VM options must be an object");
  const sandbox = options.sandbox || {};
  if (sandbox.rootDiskSnapshot !== undefined) {
    throw new Error(
      "sandbox.rootDiskSnapshot has been removed; use VM rootfs.mode='memory' or rootfs.mode='cow'",
    );
  }
  if (options.vfs && sandbox.vfsProvider) throw new Error("VM cannot specify both vfs and sandbox.vfsProvider");
  const memory = sandbox.memory ?? options.memory;
  if (memory !== undefined && (typeof memory !== "string" || !/^\d+[MGTmgt]?$/.test(memory.trim()))) {
    throw new TypeError(`memory must be a size like "512M" or "2G" (got ${JSON.stringify(memory)})`);
  }
  const cpus = sandbox.cpus ?? options.cpus;
  if (cpus !== undefined && (!Number.isInteger(cpus) || cpus < 1 || cpus > 255)) {
    throw new TypeError(`cpus must be an integer between 1 and 255 (got ${cpus})`);
  }
  const mode = options.rootfs && options.rootfs.mode;
  if (mode !== undefined && !ROOTFS_MODES.includes(mode)) throw new TypeError(`unsupported rootfs mode: ${mode}`);
  if (options.env !== undefined) envToEntries(options.env, "env");
  if (options.onEgress !== undefined && typeof options.onEgress !== "function") {
    throw new TypeError("onEgress must be a function");
  }
}

class VM {
  static async create(options = {}) {
    const vm = new VM(options);
    // Resolve (and on first use, build) the image now, as upstream resolves assets in create().
    vm._image = await ensureImage((options.sandbox || {}).imagePath);
    return vm;
  }

  constructor(options = {}) {
    validateOptions(options);
    this._options = options;
    this._net = netOptions(options);
    this.id = randomUUID();
    this._image = null;
    this._native = null;
    this._starting = null;
    this._closing = null;
    this._closed = false;
    // The provider stack exists before boot: vm.fs on VFS paths uses it
    // without booting the guest.
    this._vfs = buildVfs(options, this);
    this.fs = new VmFs(this);
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
  start() {
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
    const mode = (o.rootfs && o.rootfs.mode) || image.defaultRootfsMode || "cow";
    const debug = sandbox.debug ?? process.env.GONDOLIN_DEBUG;
    let n;
    try {
      n = await native.startVm({
        kernel: image.kernel,
        initrd: image.initrd,
        rootfs: image.rootfs,
        cmdline: sandbox.append ?? image.cmdline,
        rootfsMode: mode,
        memory: sandbox.memory ?? o.memory ?? "1G",
        cpus: sandbox.cpus ?? o.cpus ?? 2,
        accel: sandbox.accel,
        qemuPath: sandbox.qemuPath,
        machine: sandbox.machineType,
        cpu: sandbox.cpu ?? process.env.GONDOLIN_CPU,
        startTimeoutMs: startTimeout(o),
        debug: Boolean(debug) && debug !== "0" && debug !== "false",
        fuseMount: this._vfs ? this._vfs.fuseMount : undefined,
        binds: this._vfs ? this._vfs.binds : undefined,
        net: this._net.net || undefined,
      }, this._vfs ? this._vfs.root : null, this._net.secrets, this._net.dispatch, this._net.hookNames);
    } catch (err) {
      this._closed = true;
      throw fromNative(err);
    }
    if (this._closed) {
      // close() ran while we were booting: don't leak the VM.
      await n.close();
      throw withCode("VM is closed", "vm_closed");
    }
    this._native = n;
    if (typeof o.onEgress === "function") pumpEgress(n, o.onEgress).catch(() => {});
    try {
      this._session = await registerVmSession(this, o.sessionLabel); // sessions
    } catch (err) {
      // sessions: the VM works without its registry entry; warn once per process.
      if (!VM._sessionWarned) process.emitWarning(`gondolin: could not register the session: ${err.message}`);
      VM._sessionWarned = true;
    }
  }

  /** Run a command; returns a thenable ExecProcess at once. */
  exec(command, options = {}) {
    if (options === null || typeof options !== "object") throw new TypeError("exec options must be an object");
    const argv = normalizeCommand(command, options);
    const env = mergeEnv([this._options.env, "env"], [options.env, "exec options.env"]);
    if (options.cwd !== undefined && (typeof options.cwd !== "string" || !options.cwd.startsWith("/"))) {
      throw new TypeError(`exec options.cwd must be an absolute path (got ${JSON.stringify(options.cwd)})`);
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
      ? Promise.reject(withCode("VM is closed", "vm_closed"))
      : this.start().then(() => {
          if (this._closed) throw withCode("VM is closed", "vm_closed");
          try {
            return this._native.exec(req);
          } catch (err) {
            throw fromNative(err);
          }
        });
    return new ExecProcess(nativeExec, options);
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

  /** Stop the VM and remove its temp files. Idempotent; concurrent calls share one close. */
  close() {
    if (!this._closing) {
      this._closed = true;
      this._closing = (async () => {
        if (this._starting) await this._starting.catch(() => {});
        if (this._session) await this._session.close(); // sessions
        if (this._native) await this._native.close();
        if (this._vfs) this._vfs.detach();
      })();
    }
    return this._closing;
  }

  /** Diagnostics: accelerator, boot time, QEMU pid, temp dir. */
  get info() {
    return this._native ? this._native.info() : null;
  }
}

module.exports = { VM };
