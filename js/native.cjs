"use strict";
// Loads the compiled addon the napi-rs way: from the platform package
// (@gondolin/native-<triple>, an optionalDependency npm installs only on the
// matching os/cpu). In a checkout, `make build` puts the addon in
// npm/<triple>/ and that build wins: it is the one matching this JS, and a
// checkout's `npm install` must never swap in a registry copy. The published
// main package has no npm/ directory. The guest binaries sit beside the addon.

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
const platformPackage = `@gondolin/native-${triple}`;
const pkgRoot = path.resolve(__dirname, "..");
const checkoutDir = path.join(pkgRoot, "npm", triple);

/** Directory of the installed platform package, or null when it isn't installed. */
function installedPlatformDir() {
  try {
    return path.dirname(require.resolve(`${platformPackage}/package.json`));
  } catch {
    return null;
  }
}

function loadNative() {
  const candidates = [process.env.GONDOLIN_NATIVE_PATH, path.join(checkoutDir, `gondolin.${triple}.node`)];
  const installed = installedPlatformDir();
  if (installed) candidates.push(path.join(installed, `gondolin.${triple}.node`));
  let lastError;
  for (const file of candidates.filter(Boolean)) {
    if (!fs.existsSync(file)) continue;
    try {
      return require(file);
    } catch (err) {
      lastError = err;
    }
  }
  const hint = lastError
    ? `@gondolin/native could not load its addon for ${triple}`
    : `@gondolin/native has no binary for ${triple}: the platform package ${platformPackage} is not installed ` +
      `(npm skips it on another os/cpu, or with --omit=optional). Reinstall @gondolin/native on this machine, ` +
      `or build it from a checkout with 'make build'.`;
  const err = new Error(lastError ? `${hint}\n(cause: ${lastError.message})` : hint);
  err.code = "native_missing";
  throw err;
}

const native = loadNative();

/** Where the guest binaries (init, sandboxd, sandboxfs) for image builds live. */
function guestBinDir() {
  if (process.env.GONDOLIN_GUEST_BIN_DIR) return process.env.GONDOLIN_GUEST_BIN_DIR;
  const local = path.join(checkoutDir, "guest");
  if (fs.existsSync(local)) return local;
  const installed = installedPlatformDir();
  return installed ? path.join(installed, "guest") : local;
}

module.exports = { native, triple, pkgRoot, guestBinDir };
