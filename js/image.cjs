"use strict";
// Guest image resolution: an explicit image dir (option or GONDOLIN_GUEST_DIR),
// else the image for the current guest binaries from the local store, built
// on first use.

const path = require("node:path");
const fs = require("node:fs");
const { native, pkgRoot, guestBinDir } = require("./native.cjs");
const { withCode } = require("./errors.cjs");

const DEFAULT_DEFINITION = path.join(pkgRoot, "images", "debian-base.json");

function buildOptions(opts = {}) {
  return {
    definition: opts.definition || process.env.GONDOLIN_IMAGE_DEFINITION || DEFAULT_DEFINITION,
    guestBinDir: opts.guestBinDir || guestBinDir(),
    output: opts.output,
    verbose: Boolean(opts.verbose),
  };
}

function loadImageDir(dir, optionName) {
  const abs = path.resolve(dir);
  if (!fs.existsSync(abs)) {
    throw withCode(`${optionName} points at ${abs}, which does not exist`, "invalid_option");
  }
  return native.loadImage(abs);
}

/** Image for a VM, without building. Returns null if it must be built. */
function findImage(imagePath) {
  if (imagePath) return loadImageDir(imagePath, "sandbox.imagePath");
  if (process.env.GONDOLIN_GUEST_DIR) return loadImageDir(process.env.GONDOLIN_GUEST_DIR, "GONDOLIN_GUEST_DIR");
  return native.findImage(buildOptions()) || null;
}

let building = null;

/** Image for a VM; builds the default image on first use (progress on stderr). */
async function ensureImage(imagePath) {
  const found = findImage(imagePath);
  if (found) return found;
  if (!building) {
    process.stderr.write("gondolin: no guest image for this version yet; building one (a few minutes, once)\n");
    building = buildImage({}).finally(() => (building = null));
  }
  return building;
}

async function buildImage(opts) {
  return native.buildImage(buildOptions(opts), opts.quiet ? null : (line) => process.stderr.write(`${line}\n`));
}

// Upstream's guest-asset helpers (api.md "Guest assets"), over the same
// resolution as VMs use: GONDOLIN_GUEST_DIR, else the local image for the
// current guest binaries (built on first use by ensureGuestAssets).

/** { kernelPath, initrdPath, rootfsPath } of an image. */
function toAssets(image) {
  return { kernelPath: image.kernel, initrdPath: image.initrd, rootfsPath: image.rootfs };
}

async function ensureGuestAssets() {
  return toAssets(await ensureImage());
}

function hasGuestAssets() {
  try {
    return findImage() !== null;
  } catch {
    return false;
  }
}

/** `${XDG_CACHE_HOME:-~/.cache}/gondolin`: images, templates, checkpoints (as src/image/store.rs). */
function cacheRoot() {
  const cache = process.env.XDG_CACHE_HOME || path.join(require("node:os").homedir(), ".cache");
  return path.join(cache, "gondolin");
}

/** The image store: `$GONDOLIN_IMAGE_STORE`, else `<cache root>/images` (one `<buildId>/` per image). */
function imageStoreDir() {
  if (process.env.GONDOLIN_IMAGE_STORE) return path.resolve(process.env.GONDOLIN_IMAGE_STORE);
  return path.join(cacheRoot(), "images");
}

/** The image directory VMs would use, else the image store (where a build lands). */
function getAssetDirectory() {
  const found = hasGuestAssets() ? findImage() : null;
  if (found) return found.dir;
  return imageStoreDir();
}

// Build ids name a store directory: lowercase hex (ours) or a uuid
// (upstream's); anything else (uppercase, '/', '..') is refused before it
// reaches a path, as upstream's getImageObjectDirectory does.
const BUILD_ID = /^[0-9a-f][0-9a-f-]{7,63}$/;

/**
 * The image whose buildId is `buildId` (a checkpoint's guestAssetBuildId):
 * `imagePath` when given (it must match), else GONDOLIN_GUEST_DIR if it is
 * that build, else the image store's `<buildId>/`. Upstream's order and
 * messages (api.md §9), minus the dev checkout and the builtin registry,
 * which we do not have.
 */
function imageForBuildId(buildId, imagePath) {
  if (typeof buildId !== "string" || !BUILD_ID.test(buildId)) {
    throw withCode(`invalid image build id: ${buildId}`, "invalid_image");
  }
  if (imagePath) {
    const image = loadImageDir(imagePath, "sandbox.imagePath");
    if (image.buildId !== buildId) {
      throw withCode(
        `guest assets do not match checkpoint buildId\n  required: ${buildId}\n  provided: ${image.buildId} (${image.dir})`,
        "invalid_image",
      );
    }
    return image;
  }
  const candidates = [];
  if (process.env.GONDOLIN_GUEST_DIR) candidates.push(path.resolve(process.env.GONDOLIN_GUEST_DIR));
  candidates.push(path.join(imageStoreDir(), buildId));
  for (const dir of candidates) {
    if (!fs.existsSync(path.join(dir, "manifest.json"))) continue;
    let image;
    try {
      image = native.loadImage(dir);
    } catch {
      continue; // a broken directory is not this build
    }
    if (image.buildId === buildId) return image;
  }
  throw withCode(
    `Unable to locate guest assets for checkpoint buildId=${buildId}\n` +
      `  looked in: ${candidates.join(", ")}\n` +
      `  the image may have been removed from the store; check with: gondolin image inspect ${buildId}`,
    "missing_asset",
  );
}

/** The assets of an image directory; a clear error naming what is missing. */
function loadGuestAssets(assetDir) {
  return toAssets(loadImageDir(assetDir, "assetDir"));
}

module.exports = {
  ensureImage,
  findImage,
  buildImage,
  buildOptions,
  DEFAULT_DEFINITION,
  ensureGuestAssets,
  hasGuestAssets,
  getAssetDirectory,
  loadGuestAssets,
  cacheRoot,
  imageStoreDir,
  imageForBuildId,
};
