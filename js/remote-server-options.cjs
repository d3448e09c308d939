"use strict";
// What a remote client may ask of `gondolin ws-server` (docs/remote-protocol.md,
// "What a client may set"): the server's VM options are rebuilt from an
// explicit allowlist, never copied. Anything else is refused with a message
// naming the option and why (it names a file on the server, passes raw
// arguments to QEMU, reaches the server's own network, or runs code).
// Numeric limits are clamped to the server's.

const os = require("node:os");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const store = require("./image-store.cjs");

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Server-side limits (bytes / ms / counts); `cfg` may override each. */
const LIMITS = Object.freeze({
  /** A boot takes at most this long (0 / absent / larger asks are clamped to it). */
  startTimeoutMs: 300000,
  /** Largest root disk a client may ask for (rootfs.size). */
  rootfsSizeBytes: 16 * GiB,
  /** Largest HTTP request / response body the server buffers per request. */
  httpBodyBytes: 64 * MiB,
  /** Most bytes of one vm.create `options` (JSON). */
  optionsBytes: 256 * 1024,
  /** Longest host pattern / DNS / option string. */
  stringBytes: 4096,
  /** Most allowedHosts / tcp.hosts entries. */
  listEntries: 1024,
});

/** Why each option a remote client may NOT set is refused. */
const REFUSED = {
  remote: "remote is the client's choice, not an option of the server's VM",
  httpHooks: "send hooks as protocol hook names (the client library does)",
  fetch: "fetch runs in the client (send it as the 'fetch' hook)",
  debugLog: "debugLog is a client-side function",
  onEgress: "onEgress runs in the client (send egress: true)",
  ssh: "SSH egress is not available on a remote VM (v1): its credentials would live on the server",
  qemuPath: "it names a file on the server; the server chooses its QEMU",
  accel: "it is passed to QEMU as is; the server chooses the accelerator",
  machineType: "it is passed to QEMU's -machine as is (it could name the server's files); the server chooses the machine",
  cpu: "it is passed to QEMU's -cpu as is; the server chooses the CPU model",
  append: "it replaces the guest kernel's whole command line (init, timeouts); the server's image decides it",
  vfsProvider: "providers come as protocol mounts (the client library sends them)",
  rootOverlay: "not available on a remote VM (v1)",
};

const TOP = new Set([
  "sandbox", "rootfs", "autoStart", "dns", "maxHttpBodyBytes", "maxHttpResponseBodyBytes", "allowWebSockets",
  "vfs", "env", "memory", "cpus", "startTimeoutMs", "sessionLabel", "tmpfs", "tcp",
]);
const SANDBOX = new Set([
  "imagePath", "memory", "cpus", "debug", "netEnabled", "dns", "allowWebSockets", "maxHttpBodyBytes",
  "maxHttpResponseBodyBytes", "tmpfs", "rootDiskSnapshot", "bootSnapshot", "tcp",
]);

/** A coded error for the client (js/errors.cjs), `invalid_option` unless said. */
const refuse = (message, code = "invalid_option") => withCode(message, code);

const INTERNAL = "would reach the server's own network from a remote VM; this server refuses that (its operator can allow it with --allow-internal-egress)";

/** `"512M"`, `"1G"`, `"2048"` (MiB, QEMU's default unit) → bytes; NaN if
 * unreadable. The server's accounting and clamps only: the VM checks the
 * value itself with its own rule (Rust `vm::parse_memory_mib`). */
function sizeBytes(v) {
  if (typeof v === "number") return v * MiB;
  if (typeof v !== "string") return NaN;
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?$/i.exec(v.trim());
  if (!m) return NaN;
  const unit = { "": MiB, K: 1024, M: MiB, G: GiB, T: 1024 * GiB }[m[2].toUpperCase()];
  return Math.round(Number(m[1]) * unit);
}

class RemoteOptions {
  /** @param cfg the server's { allowInternalEgress?, maxCpus?, limits? } */
  constructor(cfg = {}) {
    this.cfg = cfg;
    this.limits = { ...LIMITS, ...(cfg.limits || {}) };
    this.maxCpus = cfg.maxCpus ?? Math.max(1, os.cpus().length);
  }

  /** The server's VM options for a client's `options` (plain JSON). */
  vmOptions(o) {
    if (o === null || typeof o !== "object" || Array.isArray(o)) throw refuse("options must be an object");
    if (JSON.stringify(o).length > this.limits.optionsBytes) {
      throw refuse(`options are larger than ${this.limits.optionsBytes} bytes of JSON`);
    }
    const out = {};
    for (const [k, v] of Object.entries(o)) {
      if (v === undefined) continue;
      if (Object.hasOwn(REFUSED, k)) throw refuse(`option ${k} cannot be sent to a remote server: ${REFUSED[k]}`);
      if (!TOP.has(k)) throw refuse(`option ${k} cannot be sent to a remote server (not one a remote client may set)`);
      out[k] = v;
    }
    if (o.sandbox !== undefined && o.sandbox !== null) {
      if (typeof o.sandbox !== "object") throw refuse("sandbox must be an object");
      const sb = {};
      for (const [k, v] of Object.entries(o.sandbox)) {
        if (v === undefined) continue;
        if (Object.hasOwn(REFUSED, k)) throw refuse(`option sandbox.${k} cannot be sent to a remote server: ${REFUSED[k]}`);
        if (!SANDBOX.has(k)) throw refuse(`option sandbox.${k} cannot be sent to a remote server (not one a remote client may set)`);
        sb[k] = v;
      }
      out.sandbox = sb;
    }
    const sb = out.sandbox || {};
    if (sb.imagePath !== undefined) this.imageName(sb.imagePath);
    for (const where of [[out, ""], [sb, "sandbox."]]) {
      const [obj, p] = where;
      if (obj.tcp !== undefined && obj.tcp !== null && !this.cfg.allowInternalEgress) throw refuse(`option ${p}tcp (mapped TCP) ${INTERNAL}`);
      if (obj.dns !== undefined && obj.dns !== null) this.checkDns(obj.dns, `${p}dns`);
      if (obj.cpus !== undefined) obj.cpus = this.clampCpus(obj.cpus, `${p}cpus`);
      for (const k of ["maxHttpBodyBytes", "maxHttpResponseBodyBytes"]) {
        if (typeof obj[k] === "number") obj[k] = Math.min(obj[k], this.limits.httpBodyBytes);
      }
    }
    if (out.vfs !== undefined && out.vfs !== null) {
      if (typeof out.vfs !== "object") throw refuse("vfs must be an object or null");
      for (const k of Object.keys(out.vfs)) {
        if (k === "mounts" || k === "hooks") throw refuse(`vfs.${k} must come as protocol ${k === "mounts" ? "mounts" : "vfsHooks"} (the client library sends them)`);
        if (k !== "fuseMount") throw refuse(`option vfs.${k} cannot be sent to a remote server`);
      }
    }
    if (out.rootfs !== undefined && out.rootfs !== null) {
      if (typeof out.rootfs !== "object") throw refuse("rootfs must be an object");
      out.rootfs = { ...out.rootfs };
      if (out.rootfs.size !== undefined) {
        const size = out.rootfs.size;
        if (typeof size !== "string" && typeof size !== "number") throw refuse(`rootfs.size must be a size such as "4G" or a number of MiB (got ${typeof size})`);
        const b = sizeBytes(size);
        // (An unreadable size is left for the VM's own check to name.)
        if (b > this.limits.rootfsSizeBytes) out.rootfs.size = `${Math.floor(this.limits.rootfsSizeBytes / MiB)}M`;
      }
    }
    // The server bounds every boot: 0 (wait forever) or a larger ask gets its limit.
    const t = out.startTimeoutMs;
    const max = this.limits.startTimeoutMs;
    out.startTimeoutMs = typeof t === "number" && Number.isFinite(t) && t > 0 ? Math.min(t, max) : max;
    return out;
  }

  clampCpus(v, where) {
    if (!Number.isInteger(v) || v < 1) throw refuse(`${where} must be a positive integer (got ${JSON.stringify(v)})`);
    return Math.min(v, this.maxCpus);
  }

  checkDns(dns, where) {
    if (typeof dns !== "object") throw refuse(`${where} must be an object`);
    if (this.cfg.allowInternalEgress) return;
    if (dns.mode !== undefined && dns.mode !== "synthetic") {
      throw refuse(`${where}.mode ${JSON.stringify(dns.mode)} forwards the guest's DNS from the server (to its resolvers or any address) and ${INTERNAL}; use "synthetic"`);
    }
    if (dns.trustedServers !== undefined) throw refuse(`${where}.trustedServers ${INTERNAL}`);
  }

  /**
   * The image a client named: NAME[:TAG] or a build id in the server's
   * image store, never a path (nothing is resolved against the server's
   * disk or working directory). Returns the loaded image.
   */
  imageName(sel) {
    if (typeof sel !== "string" || sel === "" || sel.length > 256) throw refuse("sandbox.imagePath must be an image name (NAME[:TAG]) or a build id");
    if (sel.startsWith("/") || sel.startsWith("~") || sel.split("/").some((s) => s === "." || s === "..") || sel.includes("\\")) {
      throw refuse(`sandbox.imagePath ${JSON.stringify(sel)} is a path on the server's disk; name an image (NAME[:TAG] or a build id) instead`);
    }
    if (store.isBuildId(sel)) return sel;
    store.parseRef(sel); // refuses what is not NAME[:TAG]
    return sel;
  }

  /** Load the image a client named, from the store only. */
  loadImage(sel) {
    this.imageName(sel);
    const r = store.resolveImageSelector(sel, undefined, { storeOnly: true });
    return native.loadImage(r.assetDir);
  }

  /**
   * The network the server's VM runs with: rebuilt from the allowed fields
   * of `net` (the client's createHttpHooks rules and DNS / TCP options),
   * checked and clamped. `net` is the client's `msg.net`, or what the VM
   * made of its (checked) options when the client sent none.
   */
  net(net, events) {
    if (net === null || typeof net !== "object") throw refuse("net must be an object");
    const L = this.limits;
    const str = (v, where) => {
      if (typeof v !== "string" || v.length > L.stringBytes) throw refuse(`net.${where} must be a string of at most ${L.stringBytes} bytes`);
      return v;
    };
    const list = (v, where) => {
      if (v === undefined || v === null) return undefined;
      if (!Array.isArray(v) || v.length > L.listEntries) throw refuse(`net.${where} must be a list of at most ${L.listEntries} entries`);
      return v.map((x, i) => str(x, `${where}[${i}]`));
    };
    const bool = (v, where) => {
      if (v === undefined || v === null) return undefined;
      if (typeof v !== "boolean") throw refuse(`net.${where} must be a boolean`);
      return v;
    };
    const internal = [];
    const allowedInternalHosts = list(net.allowedInternalHosts, "allowedInternalHosts") || [];
    if (allowedInternalHosts.length) internal.push("allowedInternalHosts");
    if (net.blockInternalRanges === false) internal.push("blockInternalRanges: false");
    let tcpHosts;
    if (net.tcpHosts !== undefined && net.tcpHosts !== null) {
      if (!Array.isArray(net.tcpHosts) || net.tcpHosts.length > L.listEntries) throw refuse("net.tcpHosts must be a list of [from, to] pairs");
      tcpHosts = net.tcpHosts.map((p, i) => {
        if (!Array.isArray(p) || p.length !== 2) throw refuse(`net.tcpHosts[${i}] must be a [from, to] pair`);
        return [str(p[0], `tcpHosts[${i}]`), str(p[1], `tcpHosts[${i}]`)];
      });
      if (tcpHosts.length) internal.push("tcp.hosts (mapped TCP; net.tcpHosts on the wire)");
    }
    const dnsMode = net.dnsMode === undefined || net.dnsMode === null ? undefined : str(net.dnsMode, "dnsMode");
    if (dnsMode !== undefined && dnsMode !== "synthetic") internal.push(`dns.mode ${JSON.stringify(dnsMode)}`);
    const trustedServers = list(net.trustedServers, "trustedServers");
    if (trustedServers) internal.push("dns.trustedServers");
    if (internal.length && !this.cfg.allowInternalEgress) throw refuse(`${internal.join(", ")} ${INTERNAL}`);
    const bytes = (v, where) => {
      if (v === undefined || v === null) return L.httpBodyBytes;
      if (typeof v !== "number" || !(v >= 0)) throw refuse(`net.${where} must be a non-negative number`);
      return Math.min(v, L.httpBodyBytes);
    };
    const ttl = net.syntheticTtlSeconds;
    if (ttl !== undefined && ttl !== null && !(Number.isInteger(ttl) && ttl >= 0 && ttl <= 86400)) {
      throw refuse("net.syntheticTtlSeconds must be an integer from 0 to 86400");
    }
    return {
      dnsMode,
      trustedServers,
      syntheticIpv4: net.syntheticIpv4 == null ? undefined : str(net.syntheticIpv4, "syntheticIpv4"),
      syntheticIpv6: net.syntheticIpv6 == null ? undefined : str(net.syntheticIpv6, "syntheticIpv6"),
      syntheticTtlSeconds: ttl ?? undefined,
      perHostMapping: bool(net.perHostMapping, "perHostMapping"),
      allowedHosts: list(net.allowedHosts, "allowedHosts"),
      allowedInternalHosts,
      blockInternalRanges: net.blockInternalRanges !== false,
      allowWebSockets: bool(net.allowWebSockets, "allowWebSockets"),
      maxHttpBodyBytes: bytes(net.maxHttpBodyBytes, "maxHttpBodyBytes"),
      maxHttpResponseBodyBytes: bytes(net.maxHttpResponseBodyBytes, "maxHttpResponseBodyBytes"),
      events,
      tcpHosts,
      sshId: undefined,
    };
  }
}

/** Default --max-memory: three quarters of the host's RAM (bytes). */
function defaultMaxMemory() {
  return Math.floor((os.totalmem() * 0.75) / MiB) * MiB;
}

/** Default --max-vms: four per host CPU, at least 8. */
function defaultMaxVms() {
  return Math.max(8, 4 * os.cpus().length);
}

module.exports = { RemoteOptions, LIMITS, REFUSED, defaultMaxMemory, defaultMaxVms, sizeBytes, refuse };
