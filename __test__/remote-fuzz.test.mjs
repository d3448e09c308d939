// Property-based fuzzing (fast-check) of what a hostile remote peer can send
// (docs/remote-protocol.md): the text and binary frame decoders, the
// allowlist that rebuilds VM options from a client's input, and the server's
// whole dispatch over an in-process pair (__test__/remote-pair.cjs). No VM
// ever boots.
//
// Runs: a fixed seed by default (fast-check prints seed and path on a
// failure); REMOTE_FUZZ_SEED=<n> picks another. REMOTE_FUZZ_RUNS=<n> sets the
// run count of the cheap decoder properties (default 1000); the costlier
// properties scale in proportion (`make fuzz` runs it large).
import test from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import fc from "fast-check";

const require = createRequire(import.meta.url);
const wire = require("../js/remote-wire.cjs");
const { pair } = require("./remote-pair.cjs");

// ---- run configuration ----

const SEED = process.env.REMOTE_FUZZ_SEED ? Number(process.env.REMOTE_FUZZ_SEED) : 20240611;
const RUNS = process.env.REMOTE_FUZZ_RUNS ? Number(process.env.REMOTE_FUZZ_RUNS) : 1000;
assert.ok(Number.isInteger(SEED), "REMOTE_FUZZ_SEED must be an integer");
assert.ok(Number.isInteger(RUNS) && RUNS > 0, "REMOTE_FUZZ_RUNS must be a positive integer");

/** fast-check parameters: `base` runs at the default scale (RUNS = 1000). */
const params = (base) => ({ seed: SEED, numRuns: Math.max(1, Math.ceil((base * RUNS) / 1000)), includeErrorInReport: true });

// ---- what the wire table says (js/remote-wire.cjs MESSAGES) ----

const SPECS = wire.MESSAGES;
const TYPES = Object.keys(SPECS);

/** Scalar checks a decoded message must still satisfy (obj/arr/any fields may hold restored bytes). */
const SCALAR = {
  id: (v) => Number.isInteger(v) && v > 0 && v <= Number.MAX_SAFE_INTEGER,
  u32: (v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff,
  int: (v) => Number.isInteger(v),
  str: (v) => typeof v === "string",
  bool: (v) => typeof v === "boolean",
  strs: (v) => Array.isArray(v) && v.every((s) => typeof s === "string"),
  window: (v) => Number.isInteger(v) && v > 0 && v <= wire.MAX_WINDOW_BYTES,
};

// ---- generators ----

/** A JSON value as text (so duplicate keys, "__proto__" keys and odd number literals can be written). */
const jsonText = (v) => JSON.stringify(v) ?? "null";
/** An object's JSON text from [key, valueText] entries, in order (duplicates kept). */
const objText = (entries) => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`;

/** A valid value for each field check, as JSON text. */
const FIELD = {
  id: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  u32: fc.integer({ min: 0, max: 0xffffffff }),
  int: fc.oneof(fc.integer(), fc.maxSafeInteger()),
  str: fc.string(),
  bool: fc.boolean(),
  strs: fc.array(fc.string(), { maxLength: 5 }),
  obj: fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 }),
  arr: fc.array(fc.jsonValue({ maxDepth: 3 }), { maxLength: 5 }),
  any: fc.jsonValue({ maxDepth: 3 }),
  window: fc.integer({ min: 1, max: wire.MAX_WINDOW_BYTES }),
};

/** A valid message of type `t` as [key, valueText] entries (optional fields sometimes left out). */
function validEntries(t) {
  const fields = Object.entries(SPECS[t]).map(([name, rule]) => {
    const optional = rule.endsWith("?");
    // (null counts as missing: a required field never gets it.)
    const value = FIELD[rule.replace("?", "")].filter((v) => optional || v !== null).map((v) => [[name, jsonText(v)]]);
    return optional ? fc.oneof(fc.constant([]), value) : value;
  });
  return fc.tuple(...fields).map((fs) => [["t", jsonText(t)], ...fs.flat()]);
}
const validMessage = (types = TYPES) => fc.constantFrom(...types).chain(validEntries);

/** Deeply nested arrays / objects / "$b" wrappers around a leaf, as text. */
const deepText = fc
  .tuple(fc.integer({ min: 1, max: 200 }), fc.constantFrom("[", '{"a":', '{"$b":'), fc.constantFrom("1", '"x"', "null", "{}", "[]"))
  .map(([d, open, leaf]) => open.repeat(d) + leaf + (open === "[" ? "]" : "}").repeat(d));

/** Values meant to break a check: edge numbers, wrong types, "$b" objects, prototype bait. */
const hostileText = fc.oneof(
  fc.constantFrom(
    "1e400", "-1e400", "-0", "0.5", "-1", "1e21", "4294967295", "4294967296", "9007199254740991", "9007199254740993",
    "16777216", "16777217", "1.0", "1E2", "null", "true", '""', "[]", "{}",
    '{"$b":"aGVsbG8="}', '{"$b":""}', '{"$b":1}', '{"$b":null}', '{"$b":"AA==","x":1}', '{"$b":"!!not base64!!"}',
    '{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}', '{"toString":1,"valueOf":1}',
    '["a",1]', `"${"x".repeat(64 * 1024 + 1)}"`,
  ),
  fc.jsonValue({ maxDepth: 4 }).map(jsonText),
  deepText,
);

/** Keys a hostile peer adds: prototype bait, "$b", other types' fields, anything. */
const hostileKey = fc.oneof(
  fc.constantFrom("__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "$b", "t", "id", "re", "sid", "vm", "polluted"),
  fc.string({ maxLength: 8 }),
);

/** One mutation of a message's entries. */
const mutation = fc.oneof(
  fc.record({ op: fc.constant("remove"), at: fc.nat() }),
  fc.record({ op: fc.constant("retype"), at: fc.nat(), value: hostileText }),
  fc.record({ op: fc.constant("add"), key: hostileKey, value: hostileText }),
  fc.record({
    op: fc.constant("type"),
    value: fc.oneof(fc.constantFrom(...TYPES, "__proto__", "constructor", "toString", "hasOwnProperty", "").map(jsonText), hostileText),
  }),
  fc.record({ op: fc.constant("duplicate"), at: fc.nat(), value: hostileText }),
);

function mutate(entries, m) {
  const out = entries.slice();
  // remove / retype / duplicate hit a field after "t" when there is one ("type" is for "t").
  const i = out.length > 1 ? 1 + (m.at % (out.length - 1)) : 0;
  switch (m.op) {
    case "remove":
      out.splice(i, 1);
      break;
    case "retype":
      if (out.length) out[i] = [out[i][0], m.value];
      break;
    case "add":
      out.push([m.key, m.value]);
      break;
    case "type":
      out[0] = ["t", m.value]; // entries[0] is always "t"
      break;
    case "duplicate":
      if (out.length) out.push([out[i][0], m.value]);
      break;
  }
  return out;
}

/** A message (of one of `types`) with 0–4 mutations, as the text frame a peer sends. */
const mutatedMessage = (types = TYPES) =>
  fc.tuple(validMessage(types), fc.array(mutation, { maxLength: 4 })).map(([entries, ms]) => objText(ms.reduce(mutate, entries)));

/** Any text frame: garbage, JSON that is no message, or a (mutated) message. */
const anyText = fc.oneof(
  { weight: 1, arbitrary: fc.string({ unit: "binary" }) },
  { weight: 1, arbitrary: fc.json({ maxDepth: 3 }) },
  { weight: 1, arbitrary: hostileText },
  { weight: 6, arbitrary: mutatedMessage() },
);

/** A binary frame: random bytes, or a header (kind and reserved bytes often valid) and a payload. */
const binaryFrame = fc.oneof(
  fc.uint8Array({ maxLength: 24 }).map((a) => Buffer.from(a)),
  fc
    .record({
      sid: fc.oneof(fc.constantFrom(0, 1, 2, 0xffffffff), fc.integer({ min: 0, max: 0xffffffff })),
      kind: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(1, 2, 3) }, fc.integer({ min: 0, max: 255 })),
      flags: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, fc.integer({ min: 0, max: 255 })),
      reserved: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, fc.integer({ min: 0, max: 0xffff })),
      payload: fc.uint8Array({ maxLength: 32 }),
      cut: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, fc.integer({ min: 0, max: 9 })),
    })
    .map(({ sid, kind, flags, reserved, payload, cut }) => {
      const b = Buffer.alloc(wire.HEADER_BYTES + payload.length);
      b.writeUInt32BE(sid, 0);
      b.writeUInt8(kind, 4);
      b.writeUInt8(flags, 5);
      b.writeUInt16BE(reserved, 6);
      b.set(payload, wire.HEADER_BYTES);
      return cut === undefined ? b : b.subarray(0, cut); // lengths around the header
    }),
);

// ---- invariants ----

const protoSnapshot = () =>
  [Object.prototype, Array.prototype, Function.prototype, Buffer.prototype].map((p) => Object.getOwnPropertyNames(p).join(","));
const PROTOS_BEFORE = protoSnapshot();

/** No decoder wrote to a shared prototype ("__proto__" / "constructor.prototype" keys stay keys). */
function assertNoPollution() {
  assert.equal({}.polluted, undefined, "Object.prototype polluted");
  assert.equal([].polluted, undefined, "Array.prototype polluted");
  assert.deepEqual(protoSnapshot(), PROTOS_BEFORE, "a built-in prototype gained or lost a property");
}

/** Every object in a decoded value is a plain object, an array or a Buffer (no prototype set from input). */
function assertPlain(v, depth = 0) {
  if (v === null || typeof v !== "object") return;
  assert.ok(depth <= 64, "decoded value nested deeper than the wire allows");
  if (Buffer.isBuffer(v)) return;
  const proto = Object.getPrototypeOf(v);
  assert.ok(proto === Object.prototype || proto === Array.prototype, "decoded object has a foreign prototype");
  for (const k of Object.keys(v)) assertPlain(v[k], depth + 1);
}

/** Result of `f()`: the value, or the exception (never both). */
function outcome(f) {
  try {
    return { value: f() };
  } catch (error) {
    return { error };
  }
}

const isWireError = (e) => e instanceof wire.WireError && e.name === "WireError";

/** decodeMessage's contract: a known, well-typed message, or a WireError. */
function checkDecodeMessage(text) {
  const r = outcome(() => wire.decodeMessage(text));
  assertNoPollution();
  if (r.error) {
    assert.ok(isWireError(r.error), `decodeMessage threw a non-WireError: ${r.error && r.error.stack}`);
    if (r.error.re !== undefined) assert.ok(SCALAR.id(r.error.re), "err.re is not a valid id");
    return null;
  }
  const msg = r.value;
  assert.ok(msg && typeof msg === "object" && !Array.isArray(msg), "decoded message is not an object");
  assert.ok(TYPES.includes(msg.t), `decoded message has unknown type ${msg.t}`);
  for (const [name, rule] of Object.entries(SPECS[msg.t])) {
    const base = rule.replace("?", "");
    if (!SCALAR[base]) continue;
    if (rule.endsWith("?") && msg[name] == null) continue;
    assert.ok(SCALAR[base](msg[name]), `${msg.t}.${name} decoded as an invalid ${base}: ${String(msg[name]).slice(0, 40)}`);
  }
  assertPlain(msg);
  return msg;
}

// ---- 1. text frames ----

// Defends against: a crash (TypeError, stack overflow) or prototype pollution
// in the JSON checks on any text a peer sends; a message accepted with an
// unknown type or an ill-typed field.
test("fuzz decodeMessage: any text frame is a well-typed message or a WireError", () => {
  // Sanity: the generators make what the table accepts (every valid message decodes).
  fc.assert(
    fc.property(validMessage(), (entries) => {
      const msg = checkDecodeMessage(objText(entries));
      assert.ok(msg, `valid message refused: ${objText(entries).slice(0, 200)}`);
    }),
    params(300),
  );
  fc.assert(fc.property(fc.string({ unit: "binary" }), (s) => void checkDecodeMessage(s)), params(1000));
  fc.assert(fc.property(anyText, (s) => void checkDecodeMessage(s)), params(3000));
  // Non-strings (a transport bug) are refused too.
  fc.assert(fc.property(fc.anything(), (v) => fc.pre(typeof v !== "string") || void checkDecodeMessage(v)), params(200));
  // Nesting far past MAX_DEPTH inside a field that accepts any value.
  for (const d of [31, 32, 33, 1000, 100_000]) {
    checkDecodeMessage(`{"t":"call","id":1,"vm":"v","kind":"x","call":${"[".repeat(d)}${"]".repeat(d)}}`);
    checkDecodeMessage(`{"t":"ok","re":1,"x":${'{"$b":'.repeat(d)}"AA=="${"}".repeat(d)}}`);
  }
});

// ---- 2. binary frames ----

// Defends against: an out-of-range read or a misparsed header on a short,
// oversized or malformed data frame.
test("fuzz decodeData: any binary frame is { sid, kind, data } or a WireError", () => {
  const check = (buf) => {
    const r = outcome(() => wire.decodeData(buf));
    if (r.error) {
      assert.ok(isWireError(r.error), `decodeData threw a non-WireError: ${r.error && r.error.stack}`);
      return;
    }
    const d = r.value;
    assert.ok(Buffer.isBuffer(buf) && buf.length >= wire.HEADER_BYTES, "decoded a frame shorter than its header");
    assert.equal(d.sid, buf.readUInt32BE(0));
    assert.ok(["stdout", "stderr", "stdin"].includes(d.kind));
    assert.equal(d.kind, ["stdout", "stderr", "stdin"][buf[4] - 1]);
    assert.equal(buf[5], 0);
    assert.equal(buf.readUInt16BE(6), 0);
    assert.ok(Buffer.isBuffer(d.data));
    assert.equal(d.data.length, buf.length - wire.HEADER_BYTES);
    assert.ok(d.data.length <= wire.MAX_DATA_BYTES);
  };
  fc.assert(fc.property(binaryFrame, check), params(3000));
  // Not a Buffer at all (a transport bug).
  fc.assert(fc.property(fc.oneof(fc.anything(), fc.uint8Array()), check), params(200));
  // Payload sizes around the limit.
  fc.assert(
    fc.property(fc.integer({ min: -2, max: 2 }), fc.constantFrom(1, 2, 3), (delta, kind) => {
      const buf = Buffer.alloc(wire.HEADER_BYTES + wire.MAX_DATA_BYTES + delta);
      buf[4] = kind;
      check(buf);
    }),
    { seed: SEED, numRuns: 10 },
  );
});

// ---- 3. the options allowlist ----
// Needs the addon (js/remote-server-options.cjs loads js/native.cjs): loaded
// on first use, so properties 1 and 2 run without it.

const once = (f) => {
  let v;
  return () => (v ??= f());
};
const optionsModule = once(() => require("../js/remote-server-options.cjs"));

/** What vmOptions may return: TOP/SANDBOX of js/remote-server-options.cjs, pinned here on purpose (widening what a remote client may set must change this test too). */
const ALLOWED_TOP = new Set([
  "sandbox", "rootfs", "autoStart", "dns", "maxHttpBodyBytes", "maxHttpResponseBodyBytes", "allowWebSockets",
  "vfs", "env", "memory", "cpus", "startTimeoutMs", "sessionLabel", "tmpfs", "tcp",
]);
const ALLOWED_SANDBOX = new Set([
  "imagePath", "memory", "cpus", "debug", "netEnabled", "dns", "allowWebSockets", "maxHttpBodyBytes",
  "maxHttpResponseBodyBytes", "tmpfs", "rootDiskSnapshot", "bootSnapshot", "tcp",
]);

/** An object from [key, value] pairs as the wire decoder builds it ("__proto__" an own key). */
const entriesObject = (entries) => {
  const o = {};
  for (const [k, v] of entries) Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
  return o;
};

/** Values a client could send for an option: plausible ones, wrong types, and traps for String()/Number(). */
const optionLeaf = fc.oneof(
  fc.constantFrom(
    "512M", "1G", "2048", "16G", "17G", "1T", "0", "-1M", "1.5G", "abc", "", " 1G ", 0, -1, 1, 2, 3.5, 1e308, -0, NaN, Infinity,
    true, false, null, undefined, [], {}, "synthetic", "open", "trusted", "/etc/passwd", "../x", "debian:latest",
    { toString: 1 }, { toString: 1, valueOf: 1 }, { valueOf: 1 }, Buffer.from("1G"), Buffer.alloc(0), ["1G"],
    { mode: "synthetic" }, { mode: "open" }, { trustedServers: ["10.0.0.2"] }, { hosts: { "db:1": "127.0.0.1:1" } },
    { fuseMount: "/data" }, { mounts: {} }, { hooks: {} }, { size: "100G" }, { size: { toString: 1 } },
  ),
  fc.jsonValue({ maxDepth: 2 }),
  fc.integer(),
  fc.double(),
);
/** Sub-keys the checks read inside rootfs / dns / tcp / vfs, and conversion traps. */
const SUBKEYS = ["size", "mode", "trustedServers", "hosts", "fuseMount", "mounts", "hooks", "toString", "valueOf", "__proto__", "x"];
const optionValue = fc.oneof(
  { weight: 3, arbitrary: optionLeaf },
  { weight: 2, arbitrary: fc.array(fc.tuple(fc.constantFrom(...SUBKEYS), optionLeaf), { maxLength: 3 }).map(entriesObject) },
);

/** Wrong-typed values that trip conversions (String(), Number(), spread) in a check. */
const trap = fc.constantFrom(
  { toString: 1 }, { toString: 1, valueOf: 1 }, { valueOf: 1 }, Buffer.from("1G"), [], {}, null, NaN, -1, 1e308, "abc", "-5G", ["1G"],
);
/** A valid value, one time in four a trap or any option value instead. */
const maybe = (arb) => fc.oneof({ weight: 3, arbitrary: arb }, trap, optionLeaf);

/** Valid values of each allowed option (fc.record fields), their leaves sometimes hostile. */
const VALID_TOP = {
  memory: maybe(fc.constantFrom("512M", "1G", 256, "20G")),
  cpus: maybe(fc.integer({ min: 1, max: 64 })),
  rootfs: fc.record({ size: maybe(fc.constantFrom("2G", "100G", 4096, "1T")) }, { requiredKeys: [] }),
  dns: fc.record({ mode: maybe(fc.constant("synthetic")) }, { requiredKeys: [] }),
  env: fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), { maxKeys: 2 }),
  vfs: fc.oneof(fc.constant(null), fc.constant({ fuseMount: "/data" })),
  startTimeoutMs: maybe(fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 1e9 }))),
  autoStart: fc.boolean(),
  allowWebSockets: fc.boolean(),
  maxHttpBodyBytes: maybe(fc.integer({ min: 0, max: 2 ** 40 })),
  maxHttpResponseBodyBytes: maybe(fc.integer({ min: 0, max: 2 ** 40 })),
  sessionLabel: fc.string({ maxLength: 8 }),
  tmpfs: fc.constant({ "/tmp": "64M" }),
};
const VALID_SANDBOX = {
  imagePath: maybe(fc.constantFrom("debian", "debian:latest", "org/img:v1.2", "0123456789abcdef0123456789abcdef", "a/./b", "C:\\x")),
  memory: VALID_TOP.memory,
  cpus: VALID_TOP.cpus,
  debug: fc.constant(["net"]),
  netEnabled: fc.boolean(),
  dns: VALID_TOP.dns,
  maxHttpBodyBytes: VALID_TOP.maxHttpBodyBytes,
};
const VALID_NET = {
  dnsMode: maybe(fc.constant("synthetic")),
  syntheticIpv4: maybe(fc.constant("198.19.0.1")),
  syntheticTtlSeconds: maybe(fc.integer({ min: 0, max: 86400 })),
  perHostMapping: fc.boolean(),
  allowedHosts: maybe(fc.array(maybe(fc.constantFrom("example.com", "*.x.org")), { maxLength: 2 })),
  blockInternalRanges: maybe(fc.constant(true)),
  maxHttpBodyBytes: VALID_TOP.maxHttpBodyBytes,
  tcpHosts: maybe(fc.array(maybe(fc.tuple(fc.string(), fc.string())), { maxLength: 2 })),
};

const NET_KEYS = [
  "dnsMode", "trustedServers", "syntheticIpv4", "syntheticIpv6", "syntheticTtlSeconds", "perHostMapping", "allowedHosts",
  "allowedInternalHosts", "blockInternalRanges", "allowWebSockets", "maxHttpBodyBytes", "maxHttpResponseBodyBytes", "tcpHosts",
];
const netValue = fc.oneof(
  optionValue,
  fc.array(fc.oneof(fc.string(), optionValue), { maxLength: 4 }),
  fc.array(fc.tuple(fc.string(), fc.string()), { maxLength: 3 }),
  fc.integer({ min: -1, max: 90000 }),
);

/**
 * Realistic-then-mutated vm.create options and `net` objects: mostly keys
 * the server allows, often refused ones (REFUSED, from the module), some
 * prototype bait and noise; plus fc.object() / fc.anything().
 */
const optionArbs = once(() => {
  const key = (allowed) =>
    fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...allowed) },
      { weight: 2, arbitrary: fc.constantFrom(...Object.keys(optionsModule().REFUSED)) },
      { weight: 1, arbitrary: fc.constantFrom("__proto__", "constructor", "toString", "hasOwnProperty", "vfsProvider") },
      { weight: 1, arbitrary: fc.string({ maxLength: 8 }) },
    );
  const fields = (allowed, value, n) => fc.array(fc.tuple(key(allowed), value), { maxLength: n });
  // A valid object (each key optional) with 0–2 fields overridden or added:
  // most runs get past the early refusals to the later checks and clamps.
  const based = (valid, allowed, value) =>
    fc
      .tuple(fc.record(valid, { requiredKeys: [] }), fields(allowed, value, 2))
      .map(([base, over]) => entriesObject([...Object.entries(base), ...over]));
  const sandbox = based(VALID_SANDBOX, [...ALLOWED_SANDBOX], optionValue);
  const realistic = based({ ...VALID_TOP, sandbox }, [...ALLOWED_TOP], fc.oneof(optionValue, sandbox));
  const anyObject = [
    { weight: 1, arbitrary: fc.object() },
    { weight: 1, arbitrary: fc.anything() },
  ];
  return {
    optionsArb: fc.oneof({ weight: 6, arbitrary: realistic }, ...anyObject),
    netArb: fc.oneof({ weight: 6, arbitrary: based(VALID_NET, NET_KEYS, netValue) }, ...anyObject),
  };
});

/** A refusal is an Error carrying a string code (an invalid_option reply), never a bare TypeError/RangeError. */
function assertCodedRefusal(e, what) {
  assert.ok(e instanceof Error, `${what} threw a non-Error: ${String(e)}`);
  assert.ok(typeof e.code === "string" && e.code !== "", `${what} threw without a code: ${e.stack}`);
  assert.ok(e.name !== "TypeError" && e.name !== "RangeError", `${what} threw a ${e.name}: ${e.stack}`);
}

function checkVmOptions(ro, o) {
  const r = outcome(() => ro.vmOptions(o));
  assertNoPollution();
  if (r.error) return assertCodedRefusal(r.error, "vmOptions");
  const out = r.value;
  assert.ok(out && typeof out === "object");
  const { REFUSED } = optionsModule();
  for (const where of [out, out.sandbox && typeof out.sandbox === "object" ? out.sandbox : {}]) {
    for (const k of Object.keys(where)) assert.ok(!Object.hasOwn(REFUSED, k), `vmOptions kept refused option ${k}`);
  }
  for (const k of Object.keys(out)) assert.ok(ALLOWED_TOP.has(k), `vmOptions kept option ${k}`);
  if (out.sandbox) for (const k of Object.keys(out.sandbox)) assert.ok(ALLOWED_SANDBOX.has(k), `vmOptions kept sandbox.${k}`);
  // The clamps: every boot bounded, CPUs within the server's, bodies within the limit.
  const max = ro.limits.startTimeoutMs;
  assert.ok(out.startTimeoutMs > 0 && out.startTimeoutMs <= max, `startTimeoutMs ${out.startTimeoutMs} not clamped`);
  for (const obj of [out, out.sandbox || {}]) {
    if (obj.cpus !== undefined) assert.ok(Number.isInteger(obj.cpus) && obj.cpus >= 1 && obj.cpus <= ro.maxCpus, `cpus ${obj.cpus}`);
    for (const k of ["maxHttpBodyBytes", "maxHttpResponseBodyBytes"]) {
      if (typeof obj[k] === "number") assert.ok(!(obj[k] > ro.limits.httpBodyBytes), `${k} ${obj[k]} not clamped`);
    }
    if (!ro.cfg.allowInternalEgress) {
      assert.ok(obj.tcp == null, "mapped TCP passed without --allow-internal-egress");
      if (obj.dns != null) assert.ok(obj.dns.mode === undefined || obj.dns.mode === "synthetic", "dns.mode passed");
    }
  }
}

function checkNet(ro, n, events) {
  const r = outcome(() => ro.net(n, events));
  assertNoPollution();
  if (r.error) return assertCodedRefusal(r.error, "net");
  const net = r.value;
  const L = ro.limits;
  for (const k of ["maxHttpBodyBytes", "maxHttpResponseBodyBytes"]) {
    assert.ok(typeof net[k] === "number" && net[k] >= 0 && net[k] <= L.httpBodyBytes, `net.${k} ${net[k]}`);
  }
  const ttl = net.syntheticTtlSeconds;
  assert.ok(ttl === undefined || (Number.isInteger(ttl) && ttl >= 0 && ttl <= 86400), `syntheticTtlSeconds ${ttl}`);
  for (const k of ["allowedHosts", "trustedServers", "allowedInternalHosts"]) {
    if (net[k] !== undefined) assert.ok(Array.isArray(net[k]) && net[k].every((s) => typeof s === "string"), `net.${k}`);
  }
  assert.equal(net.events, events);
  assert.equal(net.sshId, undefined);
  if (!ro.cfg.allowInternalEgress) {
    assert.ok(net.dnsMode === undefined || net.dnsMode === "synthetic", `dnsMode ${net.dnsMode} passed`);
    assert.equal(net.trustedServers, undefined);
    assert.deepEqual(net.allowedInternalHosts, []);
    assert.equal(net.blockInternalRanges, true);
    assert.ok(net.tcpHosts === undefined || net.tcpHosts.length === 0, "tcpHosts passed");
  }
}

// Defends against: an option that names a server file, passes raw QEMU
// arguments or reaches the server's network slipping through the allowlist;
// a clamp that can be dodged; a crash (uncoded TypeError) on odd input.
test("fuzz RemoteOptions: vmOptions and net return checked, clamped options or a coded refusal", () => {
  const { RemoteOptions, LIMITS } = optionsModule();
  const { optionsArb, netArb } = optionArbs();
  const strict = new RemoteOptions({ maxCpus: 4 });
  const open = new RemoteOptions({ allowInternalEgress: true, maxCpus: 2, limits: { ...LIMITS, startTimeoutMs: 1000 } });
  fc.assert(fc.property(optionsArb, (o) => (checkVmOptions(strict, o), checkVmOptions(open, o))), params(2000));
  fc.assert(fc.property(netArb, fc.boolean(), (n, ev) => (checkNet(strict, n, ev), checkNet(open, n, ev))), params(2000));
  // The same through the wire: options a client's vm.create really delivers (bytes restored by fromWire).
  fc.assert(
    fc.property(mutatedMessage(["vm.create"]), (text) => {
      let msg;
      try {
        msg = wire.decodeMessage(text);
      } catch {
        return;
      }
      checkVmOptions(strict, msg.options);
      if (msg.net != null) checkNet(strict, msg.net, Boolean(msg.egress));
    }),
    params(1000),
  );
});

// ---- 4. the whole server dispatch, end to end ----


/**
 * A server core that never makes a VM: vm.create runs the option checks for
 * real, then refuses. (vm.attach stays the real one: no VM was ever
 * detached, so every token is refused.) Everything else dispatches as is,
 * on a connection that owns no VMs. A create whose checks failed without a
 * code is recorded in `uncoded`.
 */
function fuzzCore() {
  const { RemoteServerCore } = require("../js/remote-server.cjs");
  const { refuse } = optionsModule();
  const core = new RemoteServerCore({ memory: "256M", maxVms: 4 });
  core.uncoded = [];
  core.create = async (peer, state, msg) => {
    try {
      core.remoteOptions.vmOptions(msg.options);
      if (msg.net != null) core.remoteOptions.net(msg.net, Boolean(msg.egress));
    } catch (e) {
      if (!(e instanceof Error) || typeof e.code !== "string") core.uncoded.push({ msg, error: e });
      throw e;
    }
    throw refuse("fuzz: this server makes no VMs", "invalid_state");
  };
  return core;
}

const CLIENT_REQUESTS = TYPES.filter((t) => wire.isRequest(t) && t !== "call");

/** A vm.create carrying realistic-then-mutated options and net, encoded as the client library would. */
const createFrame = () =>
  fc
    .tuple(FIELD.id, optionArbs().optionsArb, fc.option(optionArbs().netArb, { nil: undefined }), fc.option(fc.boolean(), { nil: undefined }))
    .map(([id, options, net, egress]) => {
      try {
        return wire.encodeMessage({ t: "vm.create", id, options, net, egress });
      } catch {
        return JSON.stringify({ t: "vm.create", id, options: {} }); // nested past the wire's depth
      }
    });

/** One frame a hostile client sends (built on first use: it needs the options module). */
// Weighted so that most frames reach the dispatch: garbage, a bad binary
// frame or a missing id closes the connection and ends the conversation.
const clientFrame = once(() => fc.oneof(
  { weight: 30, arbitrary: createFrame() },
  { weight: 40, arbitrary: mutatedMessage(CLIENT_REQUESTS) },
  { weight: 15, arbitrary: validMessage(CLIENT_REQUESTS).map(objText) },
  { weight: 8, arbitrary: anyText },
  { weight: 8, arbitrary: binaryFrame },
  // Over the 1 MiB text limit (closes the connection): rare, it costs a MiB.
  { weight: 1, arbitrary: fc.constantFrom(`{"t":"sessions","id":7,"pad":"${"x".repeat(wire.MAX_TEXT_BYTES)}"}`, "x".repeat(wire.MAX_TEXT_BYTES + 1)) },
));

/** The id the server must answer for this frame, if any (what the peer can read of it). */
function answerableId(frame) {
  if (typeof frame !== "string") return undefined;
  try {
    const msg = wire.decodeMessage(frame);
    return wire.isRequest(msg.t) ? msg.id : undefined;
  } catch (e) {
    return e.re;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Send `frames` from a raw client end and collect the server's replies until
 * every answerable request has its ok/err or the connection closed (2 s at most).
 */
async function converse(core, frames) {
  const [c, s] = pair();
  const serverPeer = core.accept(s);
  const owed = new Map(); // id → replies still owed
  const strays = [];
  let closed = false;
  const reader = (async () => {
    for (;;) {
      const batch = await c.recv();
      if (batch.length === 0) break;
      for (const m of batch) {
        const reply = typeof m === "string" ? outcome(() => wire.decodeMessage(m)).value : undefined;
        if (!reply || (reply.t !== "ok" && reply.t !== "err") || !owed.get(reply.re)) {
          strays.push(typeof m === "string" ? m.slice(0, 200) : `<${m.length} binary bytes>`);
          continue;
        }
        owed.set(reply.re, owed.get(reply.re) - 1);
      }
    }
    closed = true;
  })();
  for (const f of frames) {
    const id = answerableId(f);
    if (id !== undefined) owed.set(id, (owed.get(id) || 0) + 1);
    try {
      await c.send(f);
    } catch {
      break; // the server closed the connection
    }
  }
  const settled = () => closed || [...owed.values()].every((n) => n === 0);
  const deadline = Date.now() + 2000;
  while (!settled() && Date.now() < deadline) await sleep(1);
  const result = { closed, owed: [...owed].filter(([, n]) => n > 0), strays, reason: serverPeer.closeReason };
  c.close();
  await reader;
  await serverPeer.done;
  return result;
}

/** The core still serves: a fresh connection's hello gets its ok. */
async function assertServes(core) {
  const r = await converse(core, [JSON.stringify({ t: "hello", id: 1, v: wire.PROTOCOL_VERSION })]);
  assert.deepEqual(r.owed, [], "hello on a fresh connection was not answered");
  assert.deepEqual(r.strays, []);
}

// Defends against: a request left unanswered (a client hangs), an
// unhandled rejection or uncaught exception (kills the server process), a
// reply to a request never made, and state one bad connection leaves behind
// that breaks the next.
test("fuzz server dispatch: every request is answered or the connection closes; the server lives on", async () => {
  const failures = [];
  const onRejection = (reason) => failures.push(["unhandledRejection", reason]);
  const onException = (error) => failures.push(["uncaughtException", error]);
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onException);
  const core = fuzzCore();
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(clientFrame(), { minLength: 1, maxLength: 24 }), async (frames) => {
        core.uncoded = []; // per run, so a shrunk counterexample is this run's own
        const r = await converse(core, frames);
        assert.ok(r.closed || r.owed.length === 0, `requests ${JSON.stringify(r.owed)} unanswered after 2 s on an open connection`);
        assert.deepEqual(r.strays, [], "the server sent frames that are not replies to our requests");
        assert.deepEqual(core.uncoded.map((u) => `${u.error && u.error.stack}`), [], "vm.create's option checks threw without a code");
        assert.equal(core.entries.size, 0);
        await sleep(0);
        assert.deepEqual(failures, [], "unhandled rejection / uncaught exception");
        await assertServes(core);
      }),
      params(300),
    );
    await sleep(20); // late rejections surface
    assert.deepEqual(failures, [], "unhandled rejection / uncaught exception");
  } finally {
    process.off("unhandledRejection", onRejection);
    process.off("uncaughtException", onException);
  }
});
