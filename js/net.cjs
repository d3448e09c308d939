"use strict";
// Egress policy in JS terms: createHttpHooks, HttpRequestBlockedError, and
// the translation of VM options into the native network config. The policy
// itself (host patterns, internal ranges, secrets) runs in Rust.

const { native } = require("./native.cjs");
const { checkKeys, optionError } = require("./options.cjs");
const { sshOptions } = require("./ssh.cjs"); // SSH egress

const kNative = Symbol.for("gondolin.httpHooks.native");

class HttpRequestBlockedError extends Error {
  constructor(message = "request blocked", status = 403, statusText = "Forbidden") {
    super(message);
    this.name = "HttpRequestBlockedError";
    this.status = status;
    this.statusText = statusText;
  }
}

function hostList(v, name) {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((h) => typeof h !== "string")) {
    throw optionError(`${name} must be an array of host patterns`);
  }
  const out = [];
  for (const h of v) {
    const n = h.trim().toLowerCase();
    if (n && !out.includes(n)) out.push(n);
  }
  return out;
}

// The httpHooks members: Rust's HttpHook list, less `fetch` (a VM option of its own).
const CALLBACKS = Object.values(native.HttpHook).filter((h) => h !== native.HttpHook.Fetch);

// Placeholder alphabets for makePlaceholderFunc (ours: upstream 0.13 has
// such constants, their exact names were not available).
const PLACEHOLDER_ALPHABET_HEX = "0123456789abcdef";
const PLACEHOLDER_ALPHABET_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const PLACEHOLDER_ALPHABET_BASE64URL = `${PLACEHOLDER_ALPHABET_ALPHANUMERIC}-_`;
/** A generated placeholder must not be guessable by the guest. */
const MIN_PLACEHOLDER_BITS = 128;

/**
 * A placeholder generator for `secrets.NAME.placeholder`: `prefix` plus
 * `length` characters drawn uniformly (crypto RNG) from `alphabet`, e.g.
 * so a placeholder has the shape a client library checks for. The random
 * part must carry at least 128 bits.
 */
function makePlaceholderFunc(options = {}) {
  if (options === null || typeof options !== "object") throw optionError("makePlaceholderFunc options must be an object");
  const { prefix = "", alphabet = PLACEHOLDER_ALPHABET_ALPHANUMERIC, length = 32 } = options;
  if (typeof prefix !== "string") throw optionError("makePlaceholderFunc: prefix must be a string");
  const chars = typeof alphabet === "string" ? [...new Set(alphabet)] : [];
  if (chars.length < 2 || chars.some((c) => !/^[\x21-\x7e]$/.test(c))) {
    throw optionError("makePlaceholderFunc: alphabet must hold at least 2 distinct visible ASCII characters");
  }
  const bits = Number.isInteger(length) && length > 0 ? length * Math.log2(chars.length) : 0;
  if (bits < MIN_PLACEHOLDER_BITS) {
    throw optionError(`makePlaceholderFunc: ${length} characters of a ${chars.length}-character alphabet carry ${Math.floor(bits)} bits; at least ${MIN_PLACEHOLDER_BITS} are needed`);
  }
  const { randomInt } = require("node:crypto");
  return () => {
    let out = prefix;
    for (let i = 0; i < length; i++) out += chars[randomInt(chars.length)];
    return out;
  };
}

function secretPlaceholder(name, def) {
  const p = def.placeholder;
  if (p === undefined) return undefined;
  const value = typeof p === "function" ? p(name) : p;
  if (typeof value !== "string") {
    throw optionError(`secrets.${name}.placeholder must be a string or a function returning one`);
  }
  return value;
}

/** A secret name given to the secret manager (napi's own refusal has no enum code). */
function secretName(name, where) {
  if (typeof name !== "string") throw optionError(`${where}: name must be a string`);
  return name;
}

/** Upstream's duck-typed check of what onRequest hands on. */
function assertRequest(value) {
  if (value === null || typeof value !== "object" || typeof value.url !== "string" ||
      typeof value.method !== "string" || !value.headers || typeof value.headers.forEach !== "function") {
    throw optionError("onRequest must return Request, Response, or undefined");
  }
}

/** A Response handed back by a hook, re-wrapped (Set-Cookie kept apart). */
function normalizeResponse(r) {
  const headers = new Headers(r.headers);
  if (typeof r.headers.getSetCookie === "function") {
    headers.delete("set-cookie");
    for (const c of r.headers.getSetCookie()) headers.append("set-cookie", c);
  }
  return new Response(r.body, { status: r.status, statusText: r.statusText, headers });
}

function createHttpHooks(options = {}) {
  if (options === null || typeof options !== "object") throw optionError("createHttpHooks options must be an object");
  checkKeys(options, "createHttpHooks");
  const allowedHosts = hostList(options.allowedHosts, "allowedHosts");
  const allowedInternalHosts = hostList(options.allowedInternalHosts, "allowedInternalHosts") || [];
  const callbacks = {};
  for (const cb of CALLBACKS) {
    if (options[cb] === undefined) continue;
    if (typeof options[cb] !== "function") throw optionError(`createHttpHooks: ${cb} must be a function`);
    callbacks[cb] = options[cb];
  }
  const mode = options.secretPlaceholderMode;
  if (mode !== undefined && mode !== "shared" && mode !== "unique") {
    throw optionError(`secretPlaceholderMode must be "shared" or "unique" (got ${JSON.stringify(mode)})`);
  }
  const defs = [];
  for (const [name, def] of Object.entries(options.secrets || {})) {
    if (def && typeof def === "object" && def.value === undefined) {
      // The usual cause: `value: process.env.NAME` with NAME unset.
      throw optionError(`secrets.${name}.value is undefined (an unset environment variable?); give the real value as a string`);
    }
    if (!def || typeof def !== "object" || typeof def.value !== "string" || !Array.isArray(def.hosts)) {
      throw optionError(`secrets.${name} must be { hosts: string[], value: string }`);
    }
    checkKeys(def, "secret", `secrets.${name}`);
    defs.push({ name, value: def.value, hosts: hostList(def.hosts, `secrets.${name}.hosts`), placeholder: secretPlaceholder(name, def) });
  }
  const blockInternalRanges = options.blockInternalRanges !== false;
  const secrets = new native.NativeSecrets(defs, Boolean(options.replaceSecretsInQuery), mode);
  const policy = new native.NativeHttpPolicy(allowedHosts, allowedInternalHosts, blockInternalRanges, secrets);
  const env = {};
  for (const s of secrets.list()) env[s.name] = s.placeholder;
  const httpHooks = {
    isRequestAllowed: async (request) => (callbacks.isRequestAllowed ? callbacks.isRequestAllowed(request) : true),
    isIpAllowed: async (info) => {
      if (info === null || typeof info !== "object") throw optionError("isIpAllowed expects { hostname, ip, family, port, protocol }");
      if (!policy.ipAllowed(String(info.hostname ?? ""), String(info.ip ?? ""))) return false;
      return callbacks.isIpAllowed ? callbacks.isIpAllowed(info) : true;
    },
    onRequest: async (request) => {
      let next = request;
      if (callbacks.onRequest) {
        const r = await callbacks.onRequest(request);
        if (r !== undefined && r !== null) {
          if (r instanceof Response || (typeof r === "object" && "status" in r)) return normalizeResponse(r);
          next = r;
        }
      }
      assertRequest(next);
      return fillSecrets(policy, next);
    },
  };
  if (callbacks.onRequestHead) httpHooks.onRequestHead = callbacks.onRequestHead;
  if (callbacks.onResponse) httpHooks.onResponse = callbacks.onResponse;
  // Enumerable on purpose: `{ ...httpHooks, onResponse }` keeps it, so the
  // VM still runs this policy natively (see netOptions).
  httpHooks[kNative] = {
    allowedHosts,
    allowedInternalHosts,
    blockInternalRanges,
    secrets,
    callbacks,
    own: { ...httpHooks },
  };
  const secretManager = {
    listSecrets: () => secrets.list().map((s) => ({ name: s.name, placeholder: s.placeholder, hosts: s.hosts, deleted: s.deleted })),
    updateSecret: (name, opts = {}) => {
      secretName(name, "updateSecret");
      if (opts === null || typeof opts !== "object") throw optionError("updateSecret: options must be an object");
      if (opts.value !== undefined && typeof opts.value !== "string") throw optionError("updateSecret: value must be a string");
      secrets.update(name, opts.value, hostList(opts.hosts, "updateSecret: hosts"));
    },
    deleteSecret: (name) => secrets.delete(secretName(name, "deleteSecret")),
  };
  return {
    httpHooks,
    env,
    allowedHosts: allowedHosts === undefined ? ["*"] : [...allowedHosts, ...allowedInternalHosts.filter((h) => !allowedHosts.includes(h))],
    secretManager,
  };
}

/**
 * Secret substitution for a request held in JS, by the native code the VM
 * uses: the same request back (headers edited in place) or, when the query
 * changed, a new one; a secret headed elsewhere throws
 * HttpRequestBlockedError.
 */
function fillSecrets(policy, request) {
  let parts;
  try {
    parts = policy.applySecrets(request.url, pairs(request.headers));
  } catch (err) {
    if (err.code === "secret_refused") throw Object.assign(new HttpRequestBlockedError(err.message), { code: err.code });
    throw err;
  }
  if (!parts) return request;
  const headers = new Headers();
  for (const [k, v] of parts.headers) headers.append(k, v);
  if (parts.url === request.url) {
    for (const k of [...request.headers.keys()]) request.headers.delete(k);
    headers.forEach((v, k) => request.headers.append(k, v));
    return request;
  }
  const method = request.method.toUpperCase();
  const body = method !== "GET" && method !== "HEAD" ? request.body : null;
  return new Request(parts.url, { method: request.method, headers, body, ...(body ? { duplex: "half" } : {}) });
}

const DNS_MODES = ["synthetic", "trusted", "open"];

/** `tcp.hosts` as [key, value] pairs for the addon (its shape and rules were checked in Rust at construction). */
function tcpHosts(tcp) {
  if (tcp === undefined || tcp === null) return undefined;
  return Object.entries(tcp.hosts).map(([k, v]) => [k, v]);
}

/**
 * Native network options (or null: no NIC) and the secrets handle for a
 * VM's options.
 */
function netOptions(options) {
  const sandbox = options.sandbox || {};
  if (sandbox.netEnabled === false) return { net: null, secrets: null };
  const hooks = sandbox.httpHooks ?? options.httpHooks;
  const dns = sandbox.dns ?? options.dns ?? {};
  if (dns === null || typeof dns !== "object") throw optionError("dns must be an object");
  if (dns.mode !== undefined && !DNS_MODES.includes(dns.mode)) {
    throw optionError(`dns.mode must be "synthetic", "trusted" or "open" (got ${JSON.stringify(dns.mode)})`);
  }
  if (dns.syntheticHostMapping !== undefined && !["single", "per-host"].includes(dns.syntheticHostMapping)) {
    throw optionError(`dns.syntheticHostMapping must be "single" or "per-host" (got ${JSON.stringify(dns.syntheticHostMapping)})`);
  }
  if (dns.syntheticTtlSeconds !== undefined && (!Number.isInteger(dns.syntheticTtlSeconds) || dns.syntheticTtlSeconds < 0)) {
    throw optionError("dns.syntheticTtlSeconds must be a non-negative integer");
  }
  let policy = { blockInternalRanges: true };
  let secrets = null;
  let callbacks = {};
  if (hooks !== undefined && hooks !== null) {
    if (typeof hooks !== "object") throw optionError("httpHooks must be an object");
    if (hooks.httpHooks && hooks.httpHooks[kNative]) {
      // VM.create({ httpHooks: createHttpHooks(...) }) would otherwise run with no policy at all.
      throw optionError(
        "httpHooks got the whole createHttpHooks() result; pass its parts: " +
          "const { httpHooks, env } = createHttpHooks(...); VM.create({ httpHooks, env })",
      );
    }
    checkKeys(hooks, "httpHooks");
    const n = hooks[kNative];
    if (n) {
      // From createHttpHooks (maybe spread into a new object): its rules
      // run natively; JS is asked only for the user's own callbacks, and
      // for any member the caller replaced or added.
      policy = n;
      secrets = n.secrets;
    }
    for (const cb of CALLBACKS) {
      const f = hooks[cb];
      if (f === undefined || f === null) continue;
      if (typeof f !== "function") throw optionError(`httpHooks.${cb} must be a function`);
      if (n && f === n.own[cb]) {
        if (n.callbacks[cb]) callbacks[cb] = n.callbacks[cb];
      } else {
        callbacks[cb] = f.bind(hooks);
      }
    }
  }
  const fetchFn = sandbox.fetch ?? options.fetch;
  if (fetchFn !== undefined) {
    if (typeof fetchFn !== "function") throw optionError("fetch must be a function");
    callbacks = { ...callbacks, fetch: fetchFn };
  }
  const allowWebSockets = sandbox.allowWebSockets ?? options.allowWebSockets;
  const maxBody = sandbox.maxHttpBodyBytes ?? options.maxHttpBodyBytes;
  const maxResponse = sandbox.maxHttpResponseBodyBytes ?? options.maxHttpResponseBodyBytes;
  if (maxResponse !== undefined && (typeof maxResponse !== "number" || !(maxResponse >= 0))) {
    throw optionError(`maxHttpResponseBodyBytes must be a non-negative number (got ${maxResponse})`);
  }
  if (maxBody !== undefined && (typeof maxBody !== "number" || !(maxBody >= 0))) {
    throw optionError(`maxHttpBodyBytes must be a non-negative number (got ${maxBody})`);
  }
  const ssh = sshOptions(sandbox.ssh ?? options.ssh, dns); // SSH egress
  return {
    ssh,
    net: {
      dnsMode: dns.mode,
      trustedServers: dns.trustedServers,
      syntheticIpv4: dns.syntheticIPv4,
      syntheticIpv6: dns.syntheticIPv6,
      syntheticTtlSeconds: dns.syntheticTtlSeconds,
      // Unset stays unset: mapped TCP turns per-host on by default (Rust).
      perHostMapping: dns.syntheticHostMapping === undefined ? undefined : dns.syntheticHostMapping === "per-host",
      allowedHosts: policy.allowedHosts,
      allowedInternalHosts: policy.allowedInternalHosts,
      blockInternalRanges: policy.blockInternalRanges,
      allowWebSockets: allowWebSockets === undefined ? undefined : Boolean(allowWebSockets),
      maxHttpBodyBytes: maxBody,
      maxHttpResponseBodyBytes: maxResponse,
      events: typeof options.onEgress === "function",
      tcpHosts: tcpHosts(sandbox.tcp ?? options.tcp), // mapped TCP
      sshId: ssh ? ssh.id : undefined, // SSH egress
    },
    secrets,
    hookNames: Object.keys(callbacks),
    dispatch: Object.keys(callbacks).length ? makeHttpDispatcher(callbacks) : null,
  };
}

const NULL_BODY = new Set([101, 204, 205, 304]);
const pairs = (headers) => {
  const out = [];
  for (const [k, v] of headers) out.push([k, v]);
  return out;
};

/** A WHATWG Request for a native hook call (bodies only where allowed). */
function toRequest(call, withBody) {
  const method = call.method || "GET";
  const init = { method, headers: call.headers || [] };
  if (withBody && call.body && call.body.length && method !== "GET" && method !== "HEAD") init.body = call.body;
  return new Request(call.url, init);
}

async function requestOutcome(r) {
  let body;
  if (r.body !== null && r.method !== "GET" && r.method !== "HEAD") body = Buffer.from(await r.arrayBuffer());
  return { action: "request", method: r.method, url: r.url, headers: pairs(r.headers), body };
}

/** A head-only rewrite: the body (streaming on) stays the guest's. */
function headOutcome(r) {
  return { action: "request", method: r.method, url: r.url, headers: pairs(r.headers) };
}

async function responseOutcome(r) {
  const headers = pairs(r.headers).filter(([k]) => k !== "set-cookie");
  for (const c of r.headers.getSetCookie ? r.headers.getSetCookie() : []) headers.push(["set-cookie", c]);
  const body = r.body === null ? undefined : Buffer.from(await r.arrayBuffer());
  return { action: "response", status: r.status, statusText: r.statusText, headers, body };
}

/**
 * The one function native code calls for every hook: builds WHATWG objects,
 * runs the user's callback, and always resolves to an outcome.
 */
function makeHttpDispatcher(cb) {
  return async (call) => {
    try {
      switch (call.hook) {
        case "isRequestAllowed":
          return { action: (await cb.isRequestAllowed(toRequest(call, false))) ? "allow" : "deny" };
        case "isIpAllowed": {
          const info = { hostname: call.hostname, ip: call.ip, family: call.family, port: call.port, protocol: call.protocol };
          return { action: (await cb.isIpAllowed(info)) ? "allow" : "deny" };
        }
        case "onRequestHead": {
          const req = toRequest(call, false);
          const r = await cb.onRequestHead(req);
          if (r === undefined || r === null) return headOutcome(req); // keeps in-place header edits
          if (r instanceof Response) return await responseOutcome(r);
          if (r instanceof Request) return headOutcome(r);
          throw new TypeError("onRequestHead must return Request, Response, or undefined");
        }
        case "onRequest": {
          const req = toRequest(call, true);
          const r = await cb.onRequest(req);
          if (r === undefined || r === null) return await requestOutcome(req); // keeps in-place header edits
          if (r instanceof Response) return await responseOutcome(r);
          if (r instanceof Request) return await requestOutcome(r);
          throw new TypeError("onRequest must return Request, Response, or undefined");
        }
        case "onResponse": {
          const status = call.status || 200;
          const body = NULL_BODY.has(status) ? null : call.responseBody;
          const resp = new Response(body, { status, statusText: call.statusText || "", headers: call.responseHeaders || [] });
          const req = toRequest(call, false);
          const r = await cb.onResponse(resp, req);
          // `(req, res) => res` (the seeds' order) hands back the Request it
          // was given: nothing to change.
          if (r === undefined || r === null || r === req) return { action: "keep" };
          if (r instanceof Response) return await responseOutcome(r);
          throw new TypeError("onResponse must return Response or undefined");
        }
        case "fetch": {
          // Redirects stay manual: the host follows them and checks each hop.
          const method = call.method || "GET";
          const init = { method, headers: call.headers || [], redirect: "manual" };
          if (call.body && call.body.length && method !== "GET" && method !== "HEAD") init.body = call.body;
          const r = await cb.fetch(new Request(call.url, init));
          if (!(r instanceof Response)) throw new TypeError("fetch must resolve to a Response");
          const out = await responseOutcome(r);
          // fetch hands back decoded bodies: the encoding headers no longer apply.
          out.headers = out.headers.filter(([k]) => k !== "content-encoding" && k !== "content-length");
          return out;
        }
        default:
          // Rust sends only native.HttpHook names.
          throw new TypeError(`unknown HTTP hook ${JSON.stringify(call.hook)}`);
      }
    } catch (err) {
      if (err && err.name === "HttpRequestBlockedError") {
        return { action: "blocked", status: err.status, statusText: err.statusText, message: err.message };
      }
      return { action: "error", message: String((err && err.message) || err) };
    }
  };
}

/** Pull egress events into `onEgress` until the VM is gone. */
async function pumpEgress(nativeVm, onEgress) {
  for (;;) {
    const e = await nativeVm.nextEgress();
    if (e === null || e === undefined) return;
    const event = {
      protocol: e.protocol,
      host: e.host,
      method: e.method || undefined,
      url: e.url || undefined,
      decision: e.allowed ? "allow" : "deny",
      reason: e.reason ?? undefined,
      status: e.status ?? undefined,
      bytes: e.bytes,
    };
    try {
      onEgress(event);
    } catch (err) {
      process.emitWarning(`gondolin: onEgress threw: ${err && err.message}`);
    }
  }
}

function mitmCaPem() {
  return native.mitmCaPem();
}

module.exports = {
  createHttpHooks,
  HttpRequestBlockedError,
  makePlaceholderFunc,
  PLACEHOLDER_ALPHABET_HEX,
  PLACEHOLDER_ALPHABET_ALPHANUMERIC,
  PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC,
  PLACEHOLDER_ALPHABET_BASE64URL,
  netOptions,
  pumpEgress,
  mitmCaPem,
};
