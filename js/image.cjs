"use strict";
// Guest image resolution for a VM, in order: `sandbox.imagePath` (any
// selector: a directory, a build id or a `name[:tag]` ref), else
// GONDOLIN_GUEST_DIR, else GONDOLIN_DEFAULT_IMAGE, else the built-in default
// `debian-base:latest`: the image for the current guest binaries from the
// local store, built on first use and (re)named `debian-base:latest`.

const path = require("node:path");
const fs = require("node:fs");
const { native, pkgRoot, guestBinDir } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const store = require("./image-store.cjs");

const DEFAULT_DEFINITION = path.join(pkgRoot, "images", "debian-base.json");
/** The built-in default image's name (upstream's GONDOLIN_DEFAULT_IMAGE default is alpine-base:latest). */
const DEFAULT_IMAGE_REF = "debian-base:latest";

function buildOptions(opts = {}) {
  return {
    definition: opts.definition || process.env.GONDOLIN_IMAGE_DEFINITION || DEFAULT_DEFINITION,
    guestBinDir: opts.guestBinDir || guestBinDir(),
    output: opts.output,
    verbose: Boolean(opts.verbose),
    // Our extension: the rootfs from an OCI image (layout dir or registry ref).
    fromOci: opts.fromOci || undefined,
    // Our extension: over the definition's oci.pullPolicy.
    ociPullPolicy: opts.ociPullPolicy || undefined,
  };
}

function loadImageDir(dir, optionName) {
  const abs = path.resolve(dir);
  if (!fs.existsSync(abs)) {
    throw withCode(`${optionName} points at ${abs}, which does not exist`, "invalid_option");
  }
  return native.loadImage(abs);
}

/** A selector written as a path (`/x`, `./x`, `../x`, `~/x`) is only ever a directory. */
function looksLikePath(s) {
  return path.isAbsolute(s) || /^(\.\.?|~)(\/|$)/.test(s);
}

/** The image a selector names (see image-store.cjs), for option `optionName`. */
function loadSelector(selector, optionName) {
  if (looksLikePath(selector)) return loadImageDir(selector, optionName);
  try {
    return native.loadImage(store.resolveImageSelector(selector).assetDir);
  } catch (err) {
    if (err && err.code === "missing_asset") {
      err.message = `${optionName}: ${err.message}`;
    }
    throw err;
  }
}

/** Image for a VM, without building. Returns null if it must be built. */
function findImage(imagePath) {
  if (imagePath) return loadSelector(imagePath, "sandbox.imagePath");
  if (process.env.GONDOLIN_GUEST_DIR) return loadImageDir(process.env.GONDOLIN_GUEST_DIR, "GONDOLIN_GUEST_DIR");
  const wanted = process.env.GONDOLIN_DEFAULT_IMAGE;
  if (wanted && wanted !== DEFAULT_IMAGE_REF) return loadSelector(wanted, "GONDOLIN_DEFAULT_IMAGE");
  const image = native.findImage(buildOptions()) || null;
  if (image) nameDefault(image);
  return image;
}

/**
 * Point `debian-base:latest` at the image for the current guest binaries
 * (a different version of this package names its own). Best effort: a
 * read-only store still boots.
 */
function nameDefault(image) {
  try {
    const dir = path.join(store.imageStoreDir(), "refs", "debian-base", "latest", image.arch);
    const current = fs.existsSync(dir) ? path.basename(fs.readlinkSync(dir)) : null;
    if (current !== image.buildId && path.dirname(image.dir) === store.imageStoreDir()) {
      store.setImageRef(DEFAULT_IMAGE_REF, image.buildId, image.arch);
    }
  } catch {
    // naming is a convenience; the image is usable without it
  }
}

let building = null;

/** Image for a VM; builds the default image on first use (progress on stderr). */
async function ensureImage(imagePath) {
  const found = findImage(imagePath);
  if (found) return found;
  if (!building) {
    building = (async () => {
      const pulled = await pullDefault();
      if (pulled) return pulled;
      process.stderr.write("gondolin: no guest image for this version yet; building one (a few minutes, once)\n");
      return buildImage({});
    })().finally(() => (building = null));
  }
  return building;
}

/**
 * With GONDOLIN_IMAGE_REGISTRY (`host[:port]/path`), pull
 * `<registry>/debian-base:<buildId>` for this package's guest binaries.
 * Null (after a line on stderr) when the registry cannot give it.
 */
async function pullDefault() {
  const registry = process.env.GONDOLIN_IMAGE_REGISTRY;
  if (!registry) return null;
  const oci = require("./image-oci.cjs");
  let ref;
  try {
    ref = oci.defaultImageReference(registry);
    process.stderr.write(`gondolin: pulling the guest image ${ref}\n`);
    const wanted = ref.slice(ref.lastIndexOf(":") + 1);
    const r = await oci.pullImage(ref, { tag: false }, oci.progressPrinter(process.stderr));
    if (r.buildId !== wanted) throw new Error(`the registry's image is build ${r.buildId}, not ${wanted}`);
    nameDefault(r.image);
    return r.image;
  } catch (err) {
    process.stderr.write(`gondolin: could not pull ${ref || "the guest image"} (${err.message}); building it instead\n`);
    return null;
  }
}

/**
 * Build an image into the store. `opts.tag` names it; a build of the
 * default definition is also named `debian-base:latest`.
 */
async function buildImage(opts) {
  const options = buildOptions(opts);
  if (opts.tag) store.parseRef(opts.tag); // a bad name fails before minutes of building
  const image = await native.buildImage(options, opts.quiet ? null : (line) => process.stderr.write(`${line}\n`));
  if (!options.fromOci && path.resolve(options.definition) === DEFAULT_DEFINITION) nameDefault(image);
  if (opts.tag) store.setImageRef(opts.tag, image.buildId, image.arch);
  return image;
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

/** The image directory VMs would use, else the image store (where a build lands). */
function getAssetDirectory() {
  const found = hasGuestAssets() ? findImage() : null;
  if (found) return found.dir;
  return store.imageStoreDir();
}

/**
 * The image whose buildId is `buildId` (a checkpoint's guestAssetBuildId):
 * `imagePath` when given (it must match), else GONDOLIN_GUEST_DIR if it is
 * that build, else the image store's `<buildId>/`. Upstream's order and
 * messages (api.md §9), minus the dev checkout and the builtin registry,
 * which we do not have.
 */
function imageForBuildId(buildId, imagePath) {
  const storeDir = store.getImageObjectDirectory(buildId); // refuses a malformed id
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
  candidates.push(storeDir);
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

/**
 * Upstream's verifyAssets: whether every asset of the image in `assetDir`
 * matches its manifest's sha256. Ours is async (the root filesystem is
 * about a gigabyte); with `{ details: true }` it resolves to the names of
 * the assets that differ instead.
 */
async function verifyAssets(assetDir, opts = {}) {
  const bad = await native.verifyImage(path.resolve(assetDir));
  return opts.details ? bad : bad.length === 0;
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
  verifyAssets,
  cacheRoot: store.cacheRoot,
  imageStoreDir: store.imageStoreDir,
  imageForBuildId,
};
