"use strict";
// Native errors arrive as "[code] message"; give them a `code` property.

function fromNative(err) {
  if (!(err instanceof Error)) return err;
  const m = /^\[([a-z_]+)\] ([\s\S]*)$/.exec(err.message);
  if (m) {
    err.message = m[2];
    err.code = m[1];
  }
  return err;
}

function withCode(message, code) {
  const err = new Error(message);
  err.code = code;
  return err;
}

module.exports = { fromNative, withCode };
