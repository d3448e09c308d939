"use strict";
// The remote protocol's wire format (docs/remote-protocol.md, v1), apart
// from any state: the binary data-frame header, JSON values carrying bytes,
// and the per-type checks every received message goes through. Pure
// functions over strings and bytes; everything fails closed with a
// WireError naming what was wrong.

const PROTOCOL_VERSION = 1;

/** Largest message (text or binary) either side sends or accepts. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/**
 * Largest text frame (a JSON control message) a peer accepts unless it is
 * the reply to one of its own pending requests (a hook's answer may carry
 * more); bytes travel in binary frames.
 */
const MAX_TEXT_BYTES = 1024 * 1024;
/** Largest payload of one binary data frame. */
const MAX_DATA_BYTES = 1024 * 1024;
/** Stdin credit the server grants each exec at its start. */
const STDIN_WINDOW_BYTES = 4 * 1024 * 1024;
/** Most credit a receiver may have outstanding on one stream. */
const MAX_WINDOW_BYTES = 16 * 1024 * 1024;
/** Requests one peer may have unanswered at the other. */
const MAX_INFLIGHT = 256;
/** Nesting depth of a JSON value. */
const MAX_DEPTH = 32;

/** Binary frame: u32 stream id (big endian), u8 kind, u8 flags (0), u16 reserved (0). */
const HEADER_BYTES = 8;
const KIND = Object.freeze({ stdout: 1, stderr: 2, stdin: 3 });
const KIND_NAME = Object.freeze({ 1: "stdout", 2: "stderr", 3: "stdin" });

class WireError extends Error {
  constructor(message) {
    super(message);
    this.name = "WireError";
  }
}

function encodeData(sid, kind, payload) {
  const buf = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  buf.writeUInt32BE(sid, 0);
  buf.writeUInt8(KIND[kind], 4);
  buf.writeUInt8(0, 5);
  buf.writeUInt16BE(0, 6);
  payload.copy ? payload.copy(buf, HEADER_BYTES) : buf.set(payload, HEADER_BYTES);
  return buf;
}

/** `{ sid, kind, data }` of a binary frame; throws WireError on a bad header or size. */
function decodeData(buf) {
  if (!Buffer.isBuffer(buf) || buf.length < HEADER_BYTES) throw new WireError("binary frame shorter than its 8-byte header");
  const kind = KIND_NAME[buf.readUInt8(4)];
  if (!kind) throw new WireError(`binary frame has unknown kind ${buf.readUInt8(4)}`);
  if (buf.readUInt8(5) !== 0 || buf.readUInt16BE(6) !== 0) throw new WireError("binary frame has nonzero reserved header bytes");
  if (buf.length - HEADER_BYTES > MAX_DATA_BYTES) {
    throw new WireError(`binary frame carries ${buf.length - HEADER_BYTES} bytes, more than ${MAX_DATA_BYTES}`);
  }
  return { sid: buf.readUInt32BE(0), kind, data: buf.subarray(HEADER_BYTES) };
}

/** A JSON-able copy of `v`: Buffers and Uint8Arrays become `{ "$b": base64 }`. */
function toWire(v, depth = 0) {
  if (depth > MAX_DEPTH) throw new WireError(`value nested deeper than ${MAX_DEPTH}`);
  if (v === null || typeof v !== "object") return v;
  if (ArrayBuffer.isView(v)) return { $b: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (Array.isArray(v)) return v.map((x) => toWire(x, depth + 1));
  const out = {};
  for (const [k, x] of Object.entries(v)) if (x !== undefined) setOwn(out, k, toWire(x, depth + 1));
  return out;
}

/** The inverse of toWire. */
function fromWire(v, depth = 0) {
  if (depth > MAX_DEPTH) throw new WireError(`value nested deeper than ${MAX_DEPTH}`);
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map((x) => fromWire(x, depth + 1));
  const keys = Object.keys(v);
  if (keys.length === 1 && keys[0] === "$b") {
    if (typeof v.$b !== "string") throw new WireError('"$b" must hold a base64 string');
    return Buffer.from(v.$b, "base64");
  }
  const out = {};
  for (const k of keys) setOwn(out, k, fromWire(v[k], depth + 1));
  return out;
}

/** `o[k] = x` as an own data property: a `"__proto__"` key stays a key, never sets the prototype. */
function setOwn(o, k, x) {
  if (k === "__proto__") Object.defineProperty(o, k, { value: x, writable: true, enumerable: true, configurable: true });
  else o[k] = x;
}

function encodeMessage(msg) {
  const text = JSON.stringify(toWire(msg));
  if (Buffer.byteLength(text) > MAX_MESSAGE_BYTES) throw new WireError(`message ${msg.t} exceeds ${MAX_MESSAGE_BYTES} bytes`);
  return text;
}

// ---- message checks ----

const isU32 = (v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const CHECKS = {
  id: (v) => Number.isInteger(v) && v > 0 && v <= Number.MAX_SAFE_INTEGER,
  u32: isU32,
  int: (v) => Number.isInteger(v),
  str: (v) => typeof v === "string" && v.length <= 64 * 1024,
  bool: (v) => typeof v === "boolean",
  strs: (v) => Array.isArray(v) && v.length <= 65536 && v.every((s) => typeof s === "string"),
  obj: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  arr: (v) => Array.isArray(v),
  any: () => true,
  window: (v) => Number.isInteger(v) && v > 0 && v <= MAX_WINDOW_BYTES,
};

/**
 * Fields per message type: `name: "check"` (required) or `name: "check?"`.
 * `id` marks a request (it gets an ok/err reply carrying `re`).
 */
const MESSAGES = table({
  // replies (both directions)
  ok: { re: "id" },
  err: { re: "id", code: "str", message: "str" },
  // client → server requests
  hello: { id: "id", v: "int", client: "str?" },
  "vm.create": { id: "id", options: "obj", net: "obj?", hooks: "strs?", mounts: "arr?", vfsHooks: "strs?", egress: "bool?" },
  "vm.attach": { id: "id", token: "str", hooks: "strs?", mounts: "arr?", vfsHooks: "strs?", egress: "bool?" },
  "vm.start": { id: "id", vm: "str" },
  "vm.close": { id: "id", vm: "str" },
  "vm.detach": { id: "id", vm: "str" },
  "exec.start": {
    id: "id",
    vm: "str",
    sid: "u32",
    argv: "strs",
    env: "strs",
    cwd: "str?",
    stdin: "bool",
    pty: "obj?",
    window: "window",
    stdinToFile: "str?",
    stdoutFromFile: "str?",
  },
  fs: { id: "id", vm: "str", op: "str", args: "arr" },
  sessions: { id: "id" },
  // client → server, no reply
  "exec.credit": { sid: "u32", bytes: "window" },
  "exec.end": { sid: "u32" },
  "exec.kill": { sid: "u32", signal: "int" },
  "exec.resize": { sid: "u32", rows: "u32", cols: "u32" },
  "vfs.invalidate": { vm: "str", path: "str" },
  // server → client requests (answered by the client)
  call: { id: "id", vm: "str", kind: "str", mid: "u32?", call: "any" },
  // server → client, no reply
  "exec.exit": { sid: "u32", exitCode: "int", signal: "int?" },
  "exec.error": { sid: "u32", code: "str", message: "str" },
  "stdin.credit": { sid: "u32", bytes: "window" },
  egress: { vm: "str", event: "obj" },
  "vm.gone": { vm: "str", reason: "str" },
});

/** A frozen lookup table without a prototype: "constructor", "toString" and the like are not in it. */
function table(entries) {
  const t = Object.create(null);
  for (const [k, v] of Object.entries(entries)) t[k] = Object.freeze(Object.assign(Object.create(null), v));
  return Object.freeze(t);
}

/**
 * Parse and check one text frame. Returns the message (bytes restored);
 * throws WireError when it is not JSON, has an unknown type, or a field is
 * missing or of the wrong type. `err.re` is set when the message was a
 * request whose id could be read (so the caller can answer instead of closing).
 */
function decodeMessage(text) {
  if (typeof text !== "string") throw new WireError("text frame expected");
  if (text.length > MAX_MESSAGE_BYTES) throw new WireError(`message exceeds ${MAX_MESSAGE_BYTES} bytes`);
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new WireError(`message is not JSON: ${e.message}`);
  }
  if (!CHECKS.obj(raw) || typeof raw.t !== "string") throw new WireError('message must be an object with a string "t"');
  const fail = (why) => {
    const e = new WireError(why);
    if (CHECKS.id(raw.id)) e.re = raw.id;
    return e;
  };
  const spec = Object.hasOwn(MESSAGES, raw.t) ? MESSAGES[raw.t] : undefined;
  if (!spec) throw fail(`unknown message type ${JSON.stringify(raw.t.slice(0, 64))}`);
  for (const [name, rule] of Object.entries(spec)) {
    const optional = rule.endsWith("?");
    const check = CHECKS[optional ? rule.slice(0, -1) : rule];
    const v = raw[name];
    if (v === undefined || v === null) {
      if (!optional) throw fail(`${raw.t}: missing field ${name}`);
      continue;
    }
    if (!check(v)) throw fail(`${raw.t}: field ${name} is not a valid ${rule.replace("?", "")}`);
  }
  for (const k of Object.keys(raw)) {
    if (k !== "t" && !Object.hasOwn(spec, k) && !(raw.t === "ok" || raw.t === "err")) throw fail(`${raw.t}: unknown field ${k}`);
  }
  return fromWire(raw);
}

/** Is this message type a request (carries `id`, answered by ok/err)? */
function isRequest(t) {
  return typeof t === "string" && Object.hasOwn(MESSAGES, t) && Object.hasOwn(MESSAGES[t], "id");
}

module.exports = {
  PROTOCOL_VERSION,
  MAX_MESSAGE_BYTES,
  MAX_TEXT_BYTES,
  MAX_DATA_BYTES,
  MAX_WINDOW_BYTES,
  STDIN_WINDOW_BYTES,
  MAX_INFLIGHT,
  HEADER_BYTES,
  KIND,
  MESSAGES,
  WireError,
  encodeData,
  decodeData,
  encodeMessage,
  decodeMessage,
  isRequest,
  toWire,
  fromWire,
};
