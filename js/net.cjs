"use strict";
// Egress policy in JS terms: createHttpHooks, HttpRequestBlockedError, and
// the translation of VM options into the native network config. The policy
// itself (host patterns, internal ranges, secrets) runs in Rust.

const { native } = require("./native.cjs");

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
    throw new TypeError(`${name} must be an array of host patterns`);
  }
  const out = [];
  for (const h of v) {
    const n = h.trim().toLowerCase();
    if (n && !out.includes(n)) out.push(n);
  }
  return out;
}

const CALLBACKS = ["isRequestAllowed", "isIpAllowed", "onRequest", "onResponse"];

function createHttpHooks(options = {}) {
  if (options === null || typeof options !== "object") throw new TypeError("createHttpHooks options must be an object");
  const allowedHosts = hostList(options.allowedHosts, "allowedHosts");
  const allowedInternalHosts = hostList(options.allowedInternalHosts, "allowedInternalHosts") || [];
  const callbacks = {};
  for (const cb of CALLBACKS) {
    if (options[cb] === undefined) continue;
    if (typeof options[cb] !== "function") throw new TypeError(`createHttpHooks: ${cb} must be a function`);
    callbacks[cb] = options[cb];
  }
  const defs = [];
  for (const [name, def] of Object.entries(options.secrets || {})) {
    if (!def || typeof def !== "object" || typeof def.value !== "string" || !Array.isArray(def.hosts)) {
      throw new TypeError(`secrets.${name} must be { hosts: string[], value: string }`);
    }
    defs.push({ name, value: def.value, hosts: hostList(def.hosts, `secrets.${name}.hosts`) });
  }
  let secrets;
  try {
    secrets = new native.NativeSecrets(defs, Boolean(options.replaceSecretsInQuery));
  } catch (err) {
    throw require("./errors.cjs").fromNative(err);
  }
  const env = {};
  for (const s of secrets.list()) env[s.name] = s.placeholder;
  const httpHooks = {};
  Object.defineProperty(httpHooks, kNative, {
    value: {
      allowedHosts,
      allowedInternalHosts,
      blockInternalRanges: options.blockInternalRanges !== false,
      secrets,
      callbacks,
    },
  });
  // The user's callbacks stay reachable as ordinary HttpHooks members.
  Object.assign(httpHooks, callbacks);
  const wrap = (f) => (...a) => {
    try {
      return f(...a);
    } catch (err) {
      throw require("./errors.cjs").fromNative(err);
    }
  };
  const secretManager = {
    listSecrets: () => secrets.list().map((s) => ({ name: s.name, placeholder: s.placeholder, hosts: s.hosts, deleted: s.deleted })),
    updateSecret: wrap((name, opts = {}) => {
      if (opts.value !== undefined && typeof opts.value !== "string") throw new TypeError("updateSecret: value must be a string");
      secrets.update(name, opts.value, hostList(opts.hosts, "updateSecret: hosts"));
    }),
    deleteSecret: wrap((name) => secrets.delete(name)),
  };
  return {
    httpHooks,
    env,
    allowedHosts: allowedHosts === undefined ? ["*"] : [...allowedHosts, ...allowedInternalHosts.filter((h) => !allowedHosts.includes(h))],
    secretManager,
  };
}

const DNS_MODES = ["synthetic", "trusted", "open"];

/**
 * Native network options (or null: no NIC) and the secrets handle for a
 * VM's options.
 */
function netOptions(options) {
  const sandbox = options.sandbox || {};
  if (sandbox.netEnabled === false) return { net: null, secrets: null };
  const hooks = sandbox.httpHooks ?? options.httpHooks;
  const dns = sandbox.dns ?? options.dns ?? {};
  if (dns === null || typeof dns !== "object") throw new TypeError("dns must be an object");
  if (dns.mode !== undefined && !DNS_MODES.includes(dns.mode)) {
    throw new TypeError(`dns.mode must be "synthetic", "trusted" or "open" (got ${JSON.stringify(dns.mode)})`);
  }
  if (dns.syntheticHostMapping !== undefined && !["single", "per-host"].includes(dns.syntheticHostMapping)) {
    throw new TypeError(`dns.syntheticHostMapping must be "single" or "per-host" (got ${JSON.stringify(dns.syntheticHostMapping)})`);
  }
  if (dns.syntheticTtlSeconds !== undefined && (!Number.isInteger(dns.syntheticTtlSeconds) || dns.syntheticTtlSeconds < 0)) {
    throw new TypeError("dns.syntheticTtlSeconds must be a non-negative integer");
  }
  let policy = { blockInternalRanges: true };
  let secrets = null;
  let callbacks = {};
  if (hooks !== undefined && hooks !== null) {
    if (typeof hooks !== "object") throw new TypeError("httpHooks must be an object");
    const n = hooks[kNative];
    if (n) {
      policy = n;
      secrets = n.secrets;
      callbacks = n.callbacks;
    } else {
      for (const cb of CALLBACKS) {
        if (hooks[cb] === undefined) continue;
        if (typeof hooks[cb] !== "function") throw new TypeError(`httpHooks.${cb} must be a function`);
        callbacks[cb] = hooks[cb].bind(hooks);
      }
    }
  }
  const fetchFn = sandbox.fetch ?? options.fetch;
  if (fetchFn !== undefined) {
    if (typeof fetchFn !== "function") throw new TypeError("fetch must be a function");
    callbacks = { ...callbacks, fetch: fetchFn };
  }
  const allowWebSockets = sandbox.allowWebSockets ?? options.allowWebSockets;
  const maxBody = sandbox.maxHttpBodyBytes ?? options.maxHttpBodyBytes;
  const maxResponse = sandbox.maxHttpResponseBodyBytes ?? options.maxHttpResponseBodyBytes;
  if (maxResponse !== undefined && (typeof maxResponse !== "number" || !(maxResponse >= 0))) {
    throw new TypeError(`maxHttpResponseBodyBytes must be a non-negative number (got ${maxResponse})`);
  }
  if (maxBody !== undefined && (typeof maxBody !== "number" || !(maxBody >= 0))) {
    throw new TypeError(`maxHttpBodyBytes must be a non-negative number (got ${maxBody})`);
  }
  return {
    net: {
      dnsMode: dns.mode,
      trustedServers: dns.trustedServers,
      syntheticIpv4: dns.syntheticIPv4,
      syntheticIpv6: dns.syntheticIPv6,
      syntheticTtlSeconds: dns.syntheticTtlSeconds,
      perHostMapping: dns.syntheticHostMapping === "per-host",
      allowedHosts: policy.allowedHosts,
      allowedInternalHosts: policy.allowedInternalHosts,
      blockInternalRanges: policy.blockInternalRanges,
      allowWebSockets: allowWebSockets === undefined ? undefined : Boolean(allowWebSockets),
      maxHttpBodyBytes: maxBody,
      maxHttpResponseBodyBytes: maxResponse,
      events: typeof options.onEgress === "function",
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
          const r = await cb.onResponse(resp, toRequest(call, false));
          if (r === undefined || r === null) return { action: "keep" };
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
          return { action: "keep" };
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

module.exports = { createHttpHooks, HttpRequestBlockedError, netOptions, pumpEgress, mitmCaPem };
