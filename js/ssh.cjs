"use strict";
// SSH egress (`ssh` VM option): shape checks, the JS callbacks
// (hostVerifier, execPolicy) behind one dispatcher, and
// getInfoFromSshExecRequest. The proxy itself runs in Rust (src/ssh/).

const { native } = require("./native.cjs");
const { checkKeys, optionError } = require("./options.cjs");

function isBytes(v) {
  return typeof v === "string" || Buffer.isBuffer(v) || v instanceof Uint8Array;
}
const text = (v) => (typeof v === "string" ? v : Buffer.from(v).toString("utf8"));

function intOption(ssh, name, min) {
  const v = ssh[name];
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < min || v > 0xffffffff) {
    throw optionError(`ssh.${name} must be an integer ${min === 0 ? ">= 0" : "> 0"}`);
  }
  return v;
}

/** The dispatcher Rust calls for hostVerifier / execPolicy; always resolves. */
function makeSshDispatch(hostVerifier, execPolicy) {
  return async (call) => {
    try {
      if (call.hook === "hostVerifier") {
        return { allow: Boolean(await hostVerifier(call.hostname, call.key, call.port)) };
      }
      const req = {
        hostname: call.hostname,
        port: call.port,
        guestUsername: call.guestUsername ?? "",
        command: call.command ?? "",
        src: { ip: call.srcIp ?? "", port: call.srcPort ?? 0 },
      };
      const d = await execPolicy(req);
      if (d === null || typeof d !== "object" || typeof d.allow !== "boolean") {
        return { allow: false, error: "execPolicy must return { allow: boolean, exitCode?, message? }" };
      }
      if (d.allow) return { allow: true };
      const exitCode = d.exitCode === undefined ? 1 : d.exitCode;
      if (!Number.isInteger(exitCode) || exitCode < 0 || exitCode > 0xffffffff) {
        return { allow: false, error: `execPolicy exitCode must be a non-negative integer (got ${exitCode})` };
      }
      return { allow: false, exitCode, message: d.message === undefined || d.message === null ? undefined : String(d.message) };
    } catch (err) {
      return { allow: false, error: err && err.message ? err.message : String(err) };
    }
  };
}

/**
 * The checked native SSH config for a VM's `ssh` option (null when
 * unset or no host is allowed), given the VM's `dns` option.
 */
function sshOptions(ssh, dns) {
  if (ssh === undefined || ssh === null) return null;
  if (typeof ssh !== "object") throw optionError("ssh must be an object like { allowedHosts: [\"github.com\"], agent: process.env.SSH_AUTH_SOCK }");
  checkKeys(ssh, "ssh");
  const allowedHosts = ssh.allowedHosts ?? [];
  if (!Array.isArray(allowedHosts) || allowedHosts.some((h) => typeof h !== "string")) {
    throw optionError("ssh.allowedHosts must be an array of host patterns");
  }
  const credentials = [];
  if (ssh.credentials !== undefined) {
    if (ssh.credentials === null || typeof ssh.credentials !== "object") throw optionError("ssh.credentials must be an object mapping host patterns to { privateKey, username?, passphrase? }");
    for (const [target, c] of Object.entries(ssh.credentials)) {
      if (c === null || typeof c !== "object" || !isBytes(c.privateKey)) {
        throw optionError(`ssh.credentials[${JSON.stringify(target)}] must be { privateKey: string | Buffer, username?, passphrase? }`);
      }
      if (c.username !== undefined && typeof c.username !== "string") throw optionError(`ssh.credentials[${JSON.stringify(target)}].username must be a string`);
      if (c.passphrase !== undefined && !isBytes(c.passphrase)) throw optionError(`ssh.credentials[${JSON.stringify(target)}].passphrase must be a string or Buffer`);
      credentials.push({
        target,
        username: c.username,
        privateKey: text(c.privateKey),
        passphrase: c.passphrase === undefined ? undefined : text(c.passphrase),
      });
    }
  }
  if (ssh.agent !== undefined && ssh.agent !== null && typeof ssh.agent !== "string") throw optionError("ssh.agent must be a socket path");
  let knownHostsFiles;
  if (ssh.knownHostsFile !== undefined) {
    const k = ssh.knownHostsFile;
    if (typeof k === "string") knownHostsFiles = [k];
    else if (Array.isArray(k) && k.every((f) => typeof f === "string")) knownHostsFiles = k;
    else throw optionError("ssh.knownHostsFile must be a path or an array of paths");
  }
  for (const fn of ["execPolicy", "hostVerifier"]) {
    if (ssh[fn] !== undefined && ssh[fn] !== null && typeof ssh[fn] !== "function") throw optionError(`ssh.${fn} must be a function`);
  }
  if (ssh.hostKey !== undefined && !isBytes(ssh.hostKey)) throw optionError("ssh.hostKey must be a PEM string or Buffer");
  let upstreams;
  if (ssh.upstreams !== undefined) {
    if (ssh.upstreams === null || typeof ssh.upstreams !== "object") throw optionError("ssh.upstreams must be an object mapping GUEST_HOST[:PORT] to UPSTREAM_HOST:PORT");
    upstreams = Object.entries(ssh.upstreams).map(([k, v]) => {
      if (typeof v !== "string") throw optionError(`ssh.upstreams[${JSON.stringify(k)}] must be a string "UPSTREAM_HOST:PORT"`);
      return [k, v];
    });
  }
  const hostVerifier = typeof ssh.hostVerifier === "function" ? ssh.hostVerifier : null;
  const execPolicy = typeof ssh.execPolicy === "function" ? ssh.execPolicy : null;
  const n = new native.NativeSsh(
    {
      allowedHosts,
      credentials,
      agent: ssh.agent || undefined,
      knownHostsFiles,
      hostVerifier: Boolean(hostVerifier),
      execPolicy: Boolean(execPolicy),
      maxUpstreamConnectionsPerTcpSession: intOption(ssh, "maxUpstreamConnectionsPerTcpSession", 1),
      maxUpstreamConnectionsTotal: intOption(ssh, "maxUpstreamConnectionsTotal", 1),
      upstreamReadyTimeoutMs: intOption(ssh, "upstreamReadyTimeoutMs", 1),
      upstreamKeepaliveIntervalMs: intOption(ssh, "upstreamKeepaliveIntervalMs", 0),
      upstreamKeepaliveCountMax: intOption(ssh, "upstreamKeepaliveCountMax", 0),
      hostKey: ssh.hostKey === undefined ? undefined : text(ssh.hostKey),
      upstreams,
      dnsMode: dns.mode,
      perHostMapping: dns.syntheticHostMapping === undefined ? undefined : dns.syntheticHostMapping === "per-host",
    },
    hostVerifier || execPolicy ? makeSshDispatch(hostVerifier, execPolicy) : undefined,
  );
  return n.enabled ? n : null;
}

/**
 * Upstream's getInfoFromSshExecRequest: `{ service, repo }` for a
 * canonical git-over-SSH command (`git-upload-pack 'org/repo.git'`),
 * else null.
 */
function getInfoFromSshExecRequest(req) {
  if (req === null || typeof req !== "object" || typeof req.command !== "string") return null;
  return native.gitExecInfo(req.command) ?? null;
}

module.exports = { sshOptions, getInfoFromSshExecRequest };
