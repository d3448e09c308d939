"use strict";
// Ingress: vm.enableIngress() → IngressAccess, the routing table of
// /etc/gondolin/listeners, and upstream's exports around it. The gateway
// itself is native (src/ingress/gateway.rs, NativeIngress); JS hooks reach
// it through one dispatcher (makeDispatcher) that always resolves.

const { EventEmitter } = require("node:events");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const { optionError } = require("./options.cjs");

const MAX_LISTENERS_FILE_BYTES = 64 * 1024;
const NO_ETC_MOUNT =
  "ingress requires the /etc/gondolin mount. Ensure VFS is enabled and that /etc/gondolin is not overridden by a custom mount.";

/** Thrown by an ingress hook to answer with its own status and body (upstream API). */
class IngressRequestBlockedError extends Error {
  constructor(message = "request blocked", statusCode = 403, statusMessage = "Forbidden", body = "forbidden\n") {
    super(message);
    this.name = "IngressRequestBlockedError";
    this.statusCode = statusCode;
    this.statusMessage = statusMessage;
    this.body = body;
  }
}

/** Check and normalize routes with upstream's messages. */
function normalizeRoutes(routes) {
  if (!Array.isArray(routes)) throw withCode("ingress routes must be an array", "invalid_option", undefined, TypeError);
  return routes.map((r) => {
    if (r === null || typeof r !== "object") throw withCode("invalid ingress route prefix", "invalid_option");
    if (typeof r.prefix !== "string" || r.prefix.trim() === "" || /\s/.test(r.prefix)) {
      throw withCode("invalid ingress route prefix", "invalid_option");
    }
    if (!Number.isInteger(r.port) || r.port <= 0 || r.port > 65535) {
      throw withCode(`invalid ingress route port: ${r.port}`, "invalid_option");
    }
    const stripPrefix = r.stripPrefix ?? true;
    if (typeof stripPrefix !== "boolean") throw withCode("invalid ingress route stripPrefix", "invalid_option");
    return { prefix: r.prefix, port: r.port, stripPrefix };
  });
}

/** Parse a listeners file: `{ routes }`; errors name the line (upstream's messages). */
function parseListenersFile(text) {
  return { routes: native.parseListenersFile(String(text)) };
}

/** The canonical listeners file for `{ routes }` (tab-separated, trailing newline). */
function serializeListenersFile(data) {
  return native.serializeListenersFile(normalizeRoutes(data && data.routes));
}

function tooLarge() {
  const err = new Error("listeners file too large");
  err.code = "LISTENERS_FILE_TOO_LARGE";
  return err;
}

/**
 * Upstream's routing table over any provider rooted at /etc/gondolin (file
 * `/listeners`). A VM does not need it: its own table is native and
 * reloads on guest writes by itself (vm.getIngressRoutes()).
 */
class GondolinListeners extends EventEmitter {
  constructor(etcProvider) {
    super();
    this._etc = etcProvider;
    this._routes = [];
    this._timer = null;
    this._error = null;
  }
  getLastReloadError() {
    return this._error;
  }
  getRoutes() {
    return this._routes.map((r) => ({ ...r }));
  }
  /** Reload in 25 ms (coalesced); a bad file keeps the routes and emits "reloadError". */
  notifyDirty() {
    if (this._timer) return;
    this._timer = setTimeout(() => {
      this._timer = null;
      try {
        this.reloadNow();
      } catch (err) {
        this._error = err;
        this.emit("reloadError", err);
      }
    }, 25);
  }
  setRoutes(routes) {
    const text = serializeListenersFile({ routes });
    this._routes = parseListenersFile(text).routes;
    this._error = null;
    this._write(text);
    this.emit("changed", this.getRoutes());
  }
  reloadNow() {
    const text = this._read();
    this._routes = parseListenersFile(text).routes;
    this._error = null;
    const canonical = native.serializeListenersFile(this._routes);
    if (canonical !== text) this._write(canonical);
    this.emit("changed", this.getRoutes());
  }
  _read() {
    try {
      if (this._etc.statSync("/listeners").size > MAX_LISTENERS_FILE_BYTES) throw tooLarge();
      const out = this._etc.readFileSync("/listeners", "utf8");
      return typeof out === "string" ? out : out.toString("utf8");
    } catch (err) {
      if (err && (err.code === "ENOENT" || err.code === "ENOTDIR")) return "";
      throw err;
    }
  }
  _write(text) {
    if (Buffer.byteLength(text) > MAX_LISTENERS_FILE_BYTES) throw tooLarge();
    this._etc.writeFileSync("/listeners", text);
  }
}

const OPTION_KEYS = [
  "listenHost",
  "listenPort",
  "allowWebSockets",
  "hooks",
  "bufferResponseBody",
  "maxBufferedResponseBodyBytes",
  "upstreamHeaderTimeoutMs",
  "upstreamResponseTimeoutMs",
];
const HOOK_KEYS = ["isAllowed", "onRequest", "onResponse"];

function checkOptions(options) {
  if (options === null || typeof options !== "object") throw optionError("enableIngress options must be an object");
  for (const k of Object.keys(options)) {
    if (!OPTION_KEYS.includes(k)) throw optionError(`unknown enableIngress option ${JSON.stringify(k)} (expected ${OPTION_KEYS.join(", ")})`);
  }
  let listenHost = options.listenHost ?? "127.0.0.1";
  if (typeof listenHost !== "string" || !listenHost) throw optionError("enableIngress listenHost must be an IP address string");
  if (listenHost === "localhost") listenHost = "127.0.0.1";
  if (listenHost.startsWith("[") && listenHost.endsWith("]")) listenHost = listenHost.slice(1, -1);
  const listenPort = options.listenPort ?? 0;
  if (!Number.isInteger(listenPort) || listenPort < 0 || listenPort > 65535) {
    throw optionError(`enableIngress listenPort must be an integer between 0 and 65535 (got ${listenPort})`);
  }
  const bool = (k, d) => {
    const v = options[k] ?? d;
    if (typeof v !== "boolean") throw optionError(`enableIngress ${k} must be a boolean`);
    return v;
  };
  const num = (k, d) => {
    const v = options[k] ?? d;
    if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v)) throw optionError(`enableIngress ${k} must be a non-negative number`);
    return v;
  };
  const hooks = options.hooks ?? {};
  if (hooks === null || typeof hooks !== "object") throw optionError("enableIngress hooks must be an object");
  for (const [k, fn] of Object.entries(hooks)) {
    if (!HOOK_KEYS.includes(k)) throw optionError(`unknown ingress hook ${JSON.stringify(k)} (expected ${HOOK_KEYS.join(", ")})`);
    if (fn !== undefined && typeof fn !== "function") throw optionError(`enableIngress hooks.${k} must be a function`);
  }
  return {
    listenHost,
    listenPort,
    hooks,
    native: {
      allowWebSockets: bool("allowWebSockets", true),
      bufferResponseBody: bool("bufferResponseBody", false),
      maxBufferedResponseBodyBytes: num("maxBufferedResponseBodyBytes", 2 * 1024 * 1024),
      upstreamHeaderTimeoutMs: num("upstreamHeaderTimeoutMs", 2000),
      upstreamResponseTimeoutMs: num("upstreamResponseTimeoutMs", 15000),
    },
  };
}

/** `[name, value]` pairs → `{ name: value | value[] }`. */
function toRecord(pairs) {
  const out = {};
  for (const [k, v] of pairs || []) {
    const prev = out[k];
    if (prev === undefined) out[k] = v;
    else if (Array.isArray(prev)) prev.push(v);
    else out[k] = [prev, v];
  }
  return out;
}

/** A header patch → `[{ name, values? }]` (no values: delete). */
function headerEdits(patch, hook) {
  if (patch === undefined || patch === null) return undefined;
  if (typeof patch !== "object") throw new TypeError(`${hook} returned headers that are not an object`);
  return Object.entries(patch).map(([name, v]) => ({
    name: name.toLowerCase(),
    // (undefined, not null: napi reads an absent field as None.)
    values: v === null || v === undefined ? undefined : (Array.isArray(v) ? v : [v]).map(String),
  }));
}

function bodyBuffer(body, hook) {
  if (body === undefined || body === null) return undefined;
  if (typeof body === "string") return Buffer.from(body);
  if (ArrayBuffer.isView(body)) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  throw new TypeError(`${hook} returned a body that is not a Buffer or string`);
}

function hookRequest(call) {
  return {
    clientIp: call.clientIp,
    method: call.method,
    path: call.path,
    route: { ...call.route },
    backendHost: call.backendHost,
    backendPort: call.backendPort,
    backendTarget: call.backendTarget,
    headers: toRecord(call.headers),
  };
}

/** The dispatcher the gateway calls: always resolves to an outcome. */
function makeDispatcher(hooks) {
  return async (call) => {
    try {
      switch (call.hook) {
        case "isAllowed": {
          const ok = await hooks.isAllowed({
            clientIp: call.clientIp,
            method: call.method,
            path: call.path,
            headers: toRecord(call.headers),
            route: { ...call.route },
          });
          return { action: ok ? "allow" : "deny" };
        }
        case "onRequest": {
          const p = await hooks.onRequest(hookRequest(call));
          if (p === undefined || p === null) return { action: "keep" };
          if (typeof p !== "object") throw new TypeError(`onRequest returned a ${typeof p}, expected a patch object or undefined`);
          return {
            action: "patch",
            method: p.method,
            backendHost: p.backendHost,
            backendPort: p.backendPort,
            backendTarget: p.backendTarget,
            headers: headerEdits(p.headers, "onRequest"),
            bufferResponseBody: p.bufferResponseBody,
            maxBufferedResponseBodyBytes: p.maxBufferedResponseBodyBytes,
          };
        }
        case "onResponse": {
          const response = {
            statusCode: call.status,
            statusMessage: call.statusMessage,
            headers: toRecord(call.responseHeaders),
          };
          if (call.responseBody) response.body = call.responseBody;
          const p = await hooks.onResponse(response, hookRequest(call));
          if (p === undefined || p === null) return { action: "keep" };
          if (typeof p !== "object") throw new TypeError(`onResponse returned a ${typeof p}, expected a patch object or undefined`);
          return {
            action: "patch",
            status: p.statusCode,
            statusMessage: p.statusMessage,
            headers: headerEdits(p.headers, "onResponse"),
            body: bodyBuffer(p.body, "onResponse"),
          };
        }
        default:
          return { action: "error", message: `unknown ingress hook ${call.hook}` };
      }
    } catch (err) {
      if (err instanceof IngressRequestBlockedError) {
        return {
          action: "blocked",
          status: Number.isInteger(err.statusCode) ? err.statusCode : 403,
          statusMessage: String(err.statusMessage ?? "Forbidden"),
          body: Buffer.from(String(err.body ?? "forbidden\n")),
        };
      }
      return { action: "error", message: String((err && err.message) || err) };
    }
  };
}

/** vm.enableIngress(options) → IngressAccess. */
async function enableIngress(vm, options = {}) {
  const o = checkOptions(options);
  const listeners = vm._vfs && vm._vfs.listeners;
  if (!listeners) throw withCode(NO_ETC_MOUNT, "invalid_state");
  if ((vm._options.sandbox || {}).netEnabled === false) {
    throw withCode("ingress needs the VM's network (sandbox.netEnabled is false)", "invalid_state");
  }
  await vm._implicitStart();
  if (!vm._native) throw vm._closedError();
  const names = HOOK_KEYS.filter((k) => typeof o.hooks[k] === "function");
  const gateway = await native.startIngress(
    vm._native,
    listeners,
    o.listenHost,
    o.listenPort,
    o.native,
    names.length ? makeDispatcher(o.hooks) : undefined,
    names,
  );
  const host = gateway.host();
  const port = gateway.port();
  let closed;
  return {
    host,
    port,
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    close() {
      if (!closed) closed = gateway.close();
      return closed;
    },
  };
}

module.exports = {
  IngressRequestBlockedError,
  GondolinListeners,
  parseListenersFile,
  serializeListenersFile,
  normalizeRoutes,
  enableIngress,
  NO_ETC_MOUNT,
};
