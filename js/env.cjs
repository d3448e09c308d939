"use strict";
// EnvInput handling: string[] ("KEY=VALUE", bare "KEY" means KEY="") or a record.
// A malformed env is an option error (code "invalid_option").

const { optionError } = require("./options.cjs");

function envToEntries(env, optionName) {
  if (env == null) return [];
  if (Array.isArray(env)) {
    return env.map((e) => {
      if (typeof e !== "string") throw optionError(`${optionName} entries must be strings`);
      const i = e.indexOf("=");
      return i < 0 ? [e, ""] : [e.slice(0, i), e.slice(i + 1)];
    });
  }
  if (typeof env === "object") {
    return Object.entries(env).map(([k, v]) => {
      if (typeof v !== "string") throw optionError(`${optionName}.${k} must be a string`);
      return [k, v];
    });
  }
  throw optionError(`${optionName} must be an array of "KEY=VALUE" strings or an object`);
}

/** Merge env inputs left to right (later keys win) into "KEY=VALUE" strings. */
function mergeEnv(...inputs) {
  const merged = new Map();
  for (const [input, name] of inputs) {
    for (const [k, v] of envToEntries(input, name)) {
      if (k === "") throw optionError(`${name} has an entry with an empty name`);
      if (k.includes("\0") || v.includes("\0")) throw optionError(`${name}.${k} contains a NUL byte`);
      merged.set(k, v);
    }
  }
  return [...merged].map(([k, v]) => `${k}=${v}`);
}

module.exports = { envToEntries, mergeEnv };
