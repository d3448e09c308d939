"use strict";
// VMOptions are checked once, in Rust, when the VM is constructed
// (src/options/: unknown keys with the nearest valid one, types, ranges,
// tmpfs, sandbox.debug); a bad option fails VM.create / new VM, never the
// boot. This file is the JS face of that check, plus what only JS has: the
// default debug sink. Every refusal carries code "invalid_option".

const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");

/** Keys each options object accepts, by table (VMOptions, sandbox, vfs, rootfs, createHttpHooks, secret, httpHooks). */
const KNOWN = Object.freeze(
  Object.fromEntries(Object.entries(native.optionTables()).map(([t, keys]) => [t, Object.freeze(keys)])),
);

/** The scratch tmpfs mounts the guest gets when no `tmpfs` option is given (as upstream). */
const DEFAULT_GUEST_TMPFS = Object.freeze({
  "/tmp": Object.freeze({}),
  "/root": Object.freeze({ mode: "0700" }),
  "/var/tmp": Object.freeze({}),
  "/var/cache": Object.freeze({}),
  "/var/log": Object.freeze({}),
});

/** An option error raised by JS-only checks (values that cannot cross to Rust). */
function optionError(message) {
  return withCode(message, "invalid_option", undefined, TypeError);
}

/** The valid name closest to `name`, or null when none is plausibly meant. */
function nearest(name, valid) {
  return native.nearestName(String(name), [...valid]);
}

/** Refuse keys of `obj` that the options object `where` does not accept. */
function checkKeys(obj, where, label = where) {
  native.checkOptionKeys(Object.keys(obj), where, label);
}

/**
 * Check every option and return what the VM needs from them:
 * `{ rootfsMode, tmpfs, tmpfsCmdline, debug: Set, memory, cpus, fuseMount }`.
 */
function resolveOptions(options) {
  const r = native.resolveVmOptions(options, process.env.GONDOLIN_DEBUG);
  const tmpfs = r.tmpfs ? Object.fromEntries(r.tmpfs.map((m) => [m.path, mountOptions(m)])) : null;
  return { ...r, rootfsMode: r.rootfsMode ?? undefined, tmpfs, debug: new Set(r.debug) };
}

function mountOptions(m) {
  const o = {};
  if (m.size != null) o.size = m.size;
  if (m.mode != null) o.mode = m.mode;
  return o;
}

function defaultDebugLog(component, message) {
  console.log(`[${component}] ${String(message).replace(/\r?\n$/, "")}`);
}

module.exports = {
  KNOWN,
  DEFAULT_GUEST_TMPFS,
  resolveOptions,
  optionError,
  defaultDebugLog,
  nearest,
  checkKeys,
};
