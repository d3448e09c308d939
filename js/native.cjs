"use strict";
// Loads the compiled addon: the per-platform npm package when installed from
// the registry, else the binary a local build put under npm/<platform>/.

const path = require("node:path");
const fs = require("node:fs");

function platformTriple() {
  const { platform, arch } = process;
  if (platform === "linux") {
    // musl builds are not published; glibc is what we ship.
    return `linux-${arch}-gnu`;
  }
  return `${platform}-${arch}`;
}

const triple = platformTriple();
const pkgRoot = path.resolve(__dirname, "..");
const candidates = [
  process.env.GONDOLIN_NATIVE_PATH,
  path.join(pkgRoot, "npm", triple, `gondolin.${triple}.node`),
].filter(Boolean);

let native;
let lastError;
for (const file of candidates) {
  if (!fs.existsSync(file)) continue;
  try {
    native = require(file);
    break;
  } catch (err) {
    lastError = err;
  }
}
if (!native) {
  try {
    native = require(`@gondolin/native-${triple}`);
  } catch (err) {
    lastError = lastError || err;
  }
}
if (!native) {
  const hint =
    `@gondolin/native has no binary for ${triple}. ` +
    `Build it from a checkout with 'make build', or install the platform package @gondolin/native-${triple}.`;
  const err = new Error(lastError ? `${hint}\n(cause: ${lastError.message})` : hint);
  err.code = "native_missing";
  throw err;
}

/** Where the guest binaries (init, sandboxd) for image builds live. */
function guestBinDir() {
  if (process.env.GONDOLIN_GUEST_BIN_DIR) return process.env.GONDOLIN_GUEST_BIN_DIR;
  const local = path.join(pkgRoot, "npm", triple, "guest");
  if (fs.existsSync(local)) return local;
  try {
    return path.join(path.dirname(require.resolve(`@gondolin/native-${triple}/package.json`)), "guest");
  } catch {
    return local;
  }
}

module.exports = { native, triple, pkgRoot, guestBinDir };
