"use strict";
// VMOptions checks done once, when the VM is constructed: unknown keys (with
// the nearest valid one), value errors, and the upstream 0.13 options that
// are pure option handling (tmpfs, debug flags). Every error here carries
// code "invalid_option", so a bad option fails VM.create, never the boot.

const path = require("node:path");

/** Keys each options object accepts. Add a key here when you add an option. */
const KNOWN = {
  VMOptions: [
    "sandbox", "rootfs", "autoStart", "fetch", "httpHooks", "dns", "maxHttpBodyBytes",
    "maxHttpResponseBodyBytes", "allowWebSockets", "vfs", "env", "memory", "cpus", "startTimeoutMs",
    "sessionLabel", "debugLog", "onEgress", "tmpfs",
  ],
  sandbox: [
    "imagePath", "memory", "cpus", "qemuPath", "accel", "machineType", "cpu", "append", "debug", "debugLog",
    "vfsProvider", "netEnabled", "httpHooks", "dns", "fetch", "allowWebSockets", "maxHttpBodyBytes",
    "maxHttpResponseBodyBytes", "rootOverlay", "tmpfs", "rootDiskSnapshot",
  ],
  vfs: ["mounts", "hooks", "fuseMount"],
  rootfs: ["mode"],
  createHttpHooks: [
    "allowedHosts", "allowedInternalHosts", "secrets", "replaceSecretsInQuery", "blockInternalRanges",
    "secretPlaceholderMode", "isRequestAllowed", "isIpAllowed", "onRequestHead", "onRequest", "onResponse",
  ],
  secret: ["hosts", "value", "placeholder"],
  httpHooks: ["isRequestAllowed", "isIpAllowed", "onRequestHead", "onRequest", "onResponse"],
};

/** Upstream options this implementation does not have: say so instead of "unknown". */
const UNSUPPORTED = {
  VMOptions: {
    ssh: "SSH egress is not supported",
    tcp: "host-mapped TCP egress is not supported",
  },
  sandbox: {
    vmm: "only the QEMU backend exists",
    krunRunnerPath: "only the QEMU backend exists",
    rootDiskPath: "use rootfs.mode",
    rootDiskFormat: "use rootfs.mode",
    rootDiskReadOnly: "use rootfs.mode: \"readonly\"",
    rootDiskDeleteOnClose: "use rootfs.mode",
    console: "the guest console is kept in a bounded tail (printed with sandbox.debug)",
    autoRestart: "a VM whose QEMU exits stays closed",
    qemuIdlePauseMs: "idle pausing is not implemented",
    mitmCertDir: "the MITM CA is generated per process",
    netMac: "the guest MAC is fixed",
  },
};

const MIN_MEMORY_MIB = 128;
const DEBUG_FLAGS = ["net", "exec", "vfs", "protocol", "vm"];
// Spellings found in copied examples, mapped to our components.
const DEBUG_ALIASES = { fs: "vfs", network: "net", sandbox: "vm" };

function optionError(message) {
  const err = new TypeError(message);
  err.code = "invalid_option";
  return err;
}

function editDistance(a, b) {
  a = a.toLowerCase();
  b = b.toLowerCase();
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** The valid name closest to `name`, or null when none is plausibly meant. */
function nearest(name, valid) {
  let best = null;
  let bestD = Infinity;
  for (const v of valid) {
    const d = editDistance(name, v);
    if (d < bestD) [best, bestD] = [v, d];
  }
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : null;
}

/** Refuse keys of `obj` that `where` does not accept. */
function checkKeys(obj, where, label = where) {
  for (const key of Object.keys(obj)) {
    if (KNOWN[where].includes(key)) continue;
    const prefix = label === "VMOptions" ? "" : `${label}.`;
    const why = UNSUPPORTED[where] && UNSUPPORTED[where][key];
    if (why) throw optionError(`${prefix}${key} is not supported by @gondolin/native: ${why}`);
    const near = nearest(key, KNOWN[where].filter((k) => k !== "rootDiskSnapshot"));
    const hint = near ? `did you mean ${prefix}${near}?` : `valid keys: ${KNOWN[where].join(", ")}`;
    throw optionError(`unknown option ${prefix}${key}; ${hint}`);
  }
}

/** Mebibytes in a QEMU size ("512M", "2G", bare number = MiB). */
function memoryMiB(text) {
  const m = /^(\d+)([MGTmgt]?)$/.exec(text.trim());
  if (!m) return null;
  const scale = { "": 1, m: 1, g: 1024, t: 1024 * 1024 }[m[2].toLowerCase()];
  return Number(m[1]) * scale;
}

function checkMemory(memory) {
  if (memory === undefined) return;
  const mib = typeof memory === "string" ? memoryMiB(memory) : null;
  if (mib === null) throw optionError(`memory must be a size like "512M" or "2G" (got ${JSON.stringify(memory)})`);
  if (mib < MIN_MEMORY_MIB) {
    throw optionError(`memory must be at least ${MIN_MEMORY_MIB}M: the guest kernel and init do not boot in less (got ${JSON.stringify(memory)})`);
  }
}

// --- tmpfs ------------------------------------------------------------------

/** The scratch tmpfs mounts the guest gets when no `tmpfs` option is given (as upstream). */
const DEFAULT_GUEST_TMPFS = Object.freeze({
  "/tmp": Object.freeze({}),
  "/root": Object.freeze({ mode: "0700" }),
  "/var/tmp": Object.freeze({}),
  "/var/cache": Object.freeze({}),
  "/var/log": Object.freeze({}),
});
const TMPFS_RESERVED = ["/proc", "/sys", "/dev", "/run"];

function tmpfsPath(raw) {
  if (typeof raw !== "string" || !raw.startsWith("/")) throw optionError(`tmpfs path must be absolute: ${String(raw)}`);
  let p = path.posix.normalize(raw);
  if (p.length > 1 && p.endsWith("/")) p = p.slice(0, -1);
  if (p === "/") throw optionError("tmpfs cannot be mounted over /");
  // The list travels on the kernel command line as "path:opt=v,path...".
  if (/[\s,:"'\\*?[\]\0%]/.test(p)) {
    throw optionError(`tmpfs path contains unsupported characters (whitespace, ',', ':', '%', quotes, globs or '\\'): ${p}`);
  }
  if (TMPFS_RESERVED.some((r) => p === r || p.startsWith(r + "/"))) {
    throw optionError(`tmpfs cannot be mounted at reserved path: ${p}`);
  }
  return p;
}

function tmpfsSize(v, p) {
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v <= 0) throw optionError(`tmpfs size for ${p} must be a positive integer number of bytes`);
    return String(v);
  }
  if (typeof v !== "string" || !/^[0-9]+[kKmMgG%]?$/.test(v) || /^0+\D?$/.test(v)) {
    throw optionError(`tmpfs size for ${p} must be bytes, a k/m/g suffixed size or a percentage (e.g. "512m", "25%")`);
  }
  return v;
}

/** Validated `{ path: { size?, mode? } }`, normalized paths. */
function normalizeTmpfs(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw optionError("tmpfs must be an object mapping guest paths to { size?, mode? }");
  }
  const out = {};
  for (const [raw, opts] of Object.entries(value)) {
    const p = tmpfsPath(raw);
    if (Object.hasOwn(out, p)) throw optionError(`tmpfs path specified more than once: ${p}`);
    const o = opts ?? {};
    if (typeof o !== "object" || Array.isArray(o)) throw optionError(`tmpfs options for ${p} must be an object`);
    for (const k of Object.keys(o)) {
      if (k !== "size" && k !== "mode") throw optionError(`unknown option tmpfs["${p}"].${k}; valid keys: size, mode`);
    }
    const n = {};
    if (o.size !== undefined) n.size = tmpfsSize(o.size, p);
    if (o.mode !== undefined) {
      if (typeof o.mode !== "string" || !/^[0-7]{3,4}$/.test(o.mode)) {
        throw optionError(`tmpfs mode for ${p} must be an octal string (e.g. "1777")`);
      }
      n.mode = o.mode;
    }
    out[p] = n;
  }
  return out;
}

/** The kernel command-line word guest init reads (`gondolin.tmpfs=none` for `{}`). */
function tmpfsCmdline(tmpfs) {
  const items = Object.keys(tmpfs)
    .sort() // parents before children
    .map((p) => [p, tmpfs[p].size && `size=${tmpfs[p].size}`, tmpfs[p].mode && `mode=${tmpfs[p].mode}`].filter(Boolean).join(":"));
  return `gondolin.tmpfs=${items.length ? items.join(",") : "none"}`;
}

// --- debug ------------------------------------------------------------------

/** The enabled debug components from `sandbox.debug` (or $GONDOLIN_DEBUG when undefined). */
function debugFlags(config, env = process.env.GONDOLIN_DEBUG) {
  const flags = new Set();
  const add = (raw, strict) => {
    const t = String(raw).trim();
    if (!t) return;
    if (["*", "all", "1", "true"].includes(t)) return DEBUG_FLAGS.forEach((f) => flags.add(f));
    const f = DEBUG_ALIASES[t] ?? t;
    if (DEBUG_FLAGS.includes(f)) flags.add(f);
    else if (strict) {
      const near = nearest(t, [...DEBUG_FLAGS, ...Object.keys(DEBUG_ALIASES)]);
      throw optionError(`unknown sandbox.debug component ${JSON.stringify(t)}; ${near ? `did you mean "${near}"?` : `valid: ${DEBUG_FLAGS.join(", ")}, "*"`}`);
    }
  };
  if (config === undefined) {
    // Unknown tokens in the environment are ignored, as upstream.
    for (const t of (env || "").split(",")) {
      if (t.trim() === "0" || t.trim() === "false") continue;
      add(t, false);
    }
  } else if (config === true) DEBUG_FLAGS.forEach((f) => flags.add(f));
  else if (Array.isArray(config)) config.forEach((t) => add(t, true));
  else if (config !== false) throw optionError("sandbox.debug must be a boolean or an array of components");
  return flags;
}

function defaultDebugLog(component, message) {
  console.log(`[${component}] ${String(message).replace(/\r?\n$/, "")}`);
}

// --- the whole VMOptions ----------------------------------------------------

const ROOTFS_MODES = ["readonly", "memory", "cow"];

/**
 * Check every option and return what the VM needs from them (resolved
 * defaults that more than one place reads).
 */
function resolveOptions(options) {
  if (options === null || typeof options !== "object") throw optionError("VM options must be an object");
  checkKeys(options, "VMOptions");
  const sandbox = options.sandbox ?? {};
  if (typeof sandbox !== "object") throw optionError("sandbox must be an object");
  checkKeys(sandbox, "sandbox");
  if (options.vfs !== undefined && options.vfs !== null) {
    if (typeof options.vfs !== "object") throw optionError("vfs must be an object or null");
    checkKeys(options.vfs, "vfs");
  }
  if (options.rootfs !== undefined) {
    if (options.rootfs === null || typeof options.rootfs !== "object") throw optionError("rootfs must be an object");
    checkKeys(options.rootfs, "rootfs");
  }
  if (sandbox.rootDiskSnapshot !== undefined) {
    throw optionError("sandbox.rootDiskSnapshot has been removed; use VM rootfs.mode='memory' or rootfs.mode='cow'");
  }
  if (options.vfs && sandbox.vfsProvider) throw optionError("VM cannot specify both vfs and sandbox.vfsProvider");
  checkMemory(sandbox.memory ?? options.memory);
  const cpus = sandbox.cpus ?? options.cpus;
  if (cpus !== undefined && (!Number.isInteger(cpus) || cpus < 1 || cpus > 255)) {
    throw optionError(`cpus must be an integer between 1 and 255 (got ${cpus})`);
  }
  let mode = options.rootfs && options.rootfs.mode;
  if (mode !== undefined && !ROOTFS_MODES.includes(mode)) throw optionError(`unsupported rootfs mode: ${mode}`);
  if (sandbox.rootOverlay !== undefined) {
    // Older docs: rootOverlay true = a writable root whose changes are discarded.
    if (typeof sandbox.rootOverlay !== "boolean") throw optionError("sandbox.rootOverlay must be a boolean");
    const implied = sandbox.rootOverlay ? "cow" : "readonly";
    if (mode !== undefined && mode !== implied) {
      throw optionError(`sandbox.rootOverlay: ${sandbox.rootOverlay} contradicts rootfs.mode: "${mode}"; use rootfs.mode alone`);
    }
    mode = implied;
  }
  if (options.autoStart !== undefined && typeof options.autoStart !== "boolean") throw optionError("autoStart must be a boolean");
  for (const [k, v] of [["onEgress", options.onEgress], ["debugLog", options.debugLog ?? sandbox.debugLog]]) {
    if (v !== undefined && v !== null && typeof v !== "function") throw optionError(`${k} must be a function`);
  }
  if (options.startTimeoutMs !== undefined && typeof options.startTimeoutMs !== "number") {
    throw optionError("startTimeoutMs must be a number");
  }
  const tmpfsOpt = sandbox.tmpfs ?? options.tmpfs;
  const tmpfs = tmpfsOpt === undefined ? null : normalizeTmpfs(tmpfsOpt);
  const debug = debugFlags(sandbox.debug);
  return { rootfsMode: mode, tmpfs, debug };
}

module.exports = {
  KNOWN,
  DEFAULT_GUEST_TMPFS,
  resolveOptions,
  optionError,
  tmpfsCmdline,
  defaultDebugLog,
  nearest,
  checkKeys,
};
