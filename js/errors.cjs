"use strict";
// Errors from the addon are JS Errors built in Rust (src/napi/error.rs) with
// a real `code` property and, where there is one, a `cause`: nothing here
// parses a message. `ErrorCodes` is the one list, from the core's enum;
// index.d.ts mirrors it as `GondolinErrorCode`.

const { native } = require("./native.cjs");

/** Every error code the API uses (`GondolinErrorCode`), from the core enum. */
const ErrorCodes = Object.freeze(native.errorCodes());
const CODES = new Set(ErrorCodes);

/** An Error raised by the JS facade itself, with one of the `ErrorCodes`. */
function withCode(message, code, options, Class = Error) {
  if (!CODES.has(code)) throw new Error(`internal: ${code} is not a GondolinErrorCode`);
  const err = new Class(message, options);
  err.code = code;
  return err;
}

module.exports = { ErrorCodes, withCode };
