"use strict";
// The local image store's names (upstream api.md §10 "Local image store").
//
// Layout under the store (`$GONDOLIN_IMAGE_STORE`, else
// `${XDG_CACHE_HOME:-~/.cache}/gondolin/images`):
//   <buildId>/                       one image: manifest.json + its assets
//   refs/<name>/<tag>/<arch>         a symlink to ../…/<buildId>
// Upstream keeps images under `objects/<buildId>`; ours sit directly in the
// store, where every earlier version of this package put them, so existing
// caches keep working. Our build ids are 32 lowercase hex digits (a content
// hash of the build's inputs); upstream's uuids are accepted too.

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");

/** `${XDG_CACHE_HOME:-~/.cache}/gondolin`: images, templates, checkpoints (as src/image/store.rs). */
function cacheRoot() {
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "gondolin");
}

/** The image store: `$GONDOLIN_IMAGE_STORE`, else `<cache root>/images` (as src/image/store.rs). */
function imageStoreDir() {
  if (process.env.GONDOLIN_IMAGE_STORE) return path.resolve(process.env.GONDOLIN_IMAGE_STORE);
  return path.join(cacheRoot(), "images");
}

const BUILD_ID = /^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})$/;
const REF_NAME = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;
const REF_TAG = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const ARCHES = ["aarch64", "x86_64"];

/** The host's architecture in image terms (upstream's getDefaultArch). */
function hostArch() {
  return process.arch === "arm64" ? "aarch64" : "x86_64";
}

function checkArch(arch) {
  if (arch === undefined) return hostArch();
  if (!ARCHES.includes(arch)) {
    throw withCode(`invalid image arch: ${arch} (expected aarch64 or x86_64)`, "invalid_option");
  }
  return arch;
}

function isBuildId(s) {
  return typeof s === "string" && BUILD_ID.test(s);
}

/** `<store>/<buildId>`; a malformed id is refused before it reaches a path. */
function getImageObjectDirectory(buildId) {
  if (!isBuildId(buildId)) throw withCode(`invalid image build id: ${buildId}`, "invalid_image");
  return path.join(imageStoreDir(), buildId);
}

/**
 * `name[:tag]` → { name, tag }; tag defaults to `latest`. The name may have
 * `/`-separated segments, none empty, `.` or `..`.
 */
function parseRef(reference) {
  if (typeof reference !== "string" || reference === "") {
    throw withCode(`invalid image reference: ${reference}`, "invalid_option");
  }
  const colon = reference.lastIndexOf(":");
  const slash = reference.lastIndexOf("/");
  const [name, tag] = colon > slash ? [reference.slice(0, colon), reference.slice(colon + 1)] : [reference, "latest"];
  const segmentsOk = name.split("/").every((s) => s !== "" && s !== "." && s !== "..");
  if (!REF_NAME.test(name) || !segmentsOk || !REF_TAG.test(tag)) {
    throw withCode(
      `invalid image reference: ${reference} (expected NAME[:TAG], NAME from [A-Za-z0-9._/-], TAG from [A-Za-z0-9._-])`,
      "invalid_option",
    );
  }
  return { name, tag, reference: `${name}:${tag}` };
}

function refDir(ref) {
  return path.join(imageStoreDir(), "refs", ...ref.name.split("/"), ref.tag);
}

/** Build id a ref symlink points at, or null if it is dangling or not ours. */
function readRefTarget(link) {
  let target;
  try {
    target = fs.readlinkSync(link);
  } catch {
    return null;
  }
  const id = path.basename(target);
  if (!isBuildId(id)) return null;
  return fs.existsSync(path.join(getImageObjectDirectory(id), "manifest.json")) ? id : null;
}

function loadObject(buildId) {
  const dir = getImageObjectDirectory(buildId);
  if (!fs.existsSync(path.join(dir, "manifest.json"))) return null;
  return native.loadImage(dir);
}

/**
 * A selector → the image it names, locally: an existing directory, else a
 * build id in the store, else a ref (`name[:tag]`). Upstream's order and
 * messages; `arch` defaults to the host's.
 */
function resolveImageSelector(selector, arch, { storeOnly = false } = {}) {
  if (typeof selector !== "string" || selector === "") {
    throw withCode(`invalid image selector: ${selector}`, "invalid_option");
  }
  const wanted = checkArch(arch);
  const asPath = path.resolve(selector);
  // storeOnly (ws-server, for remote clients): a ref or build id, never a directory.
  if (!storeOnly && fs.existsSync(asPath) && fs.statSync(asPath).isDirectory()) {
    const image = native.loadImage(asPath);
    return { source: "path", selector, assetDir: image.dir, buildId: image.buildId, arch: image.arch };
  }
  if (isBuildId(selector)) {
    const image = loadObject(selector);
    if (!image) {
      throw withCode(`image build not found: ${selector} (see: gondolin image ls)`, "missing_asset");
    }
    return { source: "build-id", selector, assetDir: image.dir, buildId: image.buildId, arch: image.arch };
  }
  const ref = parseRef(selector);
  const targets = refTargets(ref);
  const available = Object.keys(targets);
  if (available.length === 0) {
    throw withCode(`image ref not found: ${ref.reference} (see: gondolin image ls)`, "missing_asset");
  }
  let chosen = targets[wanted] ? wanted : available.length === 1 && arch === undefined ? available[0] : null;
  if (!chosen) {
    throw withCode(
      `image ref '${ref.reference}' has no target for ${wanted} (available: ${available.join(", ")})`,
      "missing_asset",
    );
  }
  const buildId = targets[chosen];
  return { source: "ref", selector, assetDir: getImageObjectDirectory(buildId), buildId, arch: chosen };
}

/** { arch: buildId } of a ref's live targets. */
function refTargets(ref) {
  const targets = {};
  for (const a of ARCHES) {
    const id = readRefTarget(path.join(refDir(ref), a));
    if (id) targets[a] = id;
  }
  return targets;
}

/** Every ref with at least one live target, sorted by reference. */
function listImageRefs() {
  const root = path.join(imageStoreDir(), "refs");
  const out = [];
  const walk = (dir, segments) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const sub = path.join(dir, e.name);
      // A tag directory holds arch symlinks; a name segment holds directories.
      const links = ARCHES.map((a) => path.join(sub, a)).filter((l) => isSymlink(l));
      if (links.length > 0 && segments.length > 0) {
        const ref = { name: segments.join("/"), tag: e.name, reference: `${segments.join("/")}:${e.name}` };
        const targets = refTargets(ref);
        if (Object.keys(targets).length > 0) {
          const updated = Math.max(...links.map((l) => fs.lstatSync(l).mtimeMs));
          out.push({ reference: ref.reference, targets, updatedAt: new Date(updated).toISOString() });
        }
      }
      walk(sub, [...segments, e.name]);
    }
  };
  walk(root, []);
  return out.sort((a, b) => (a.reference < b.reference ? -1 : a.reference > b.reference ? 1 : 0));
}

function isSymlink(p) {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Point `reference` (for `arch`) at the stored image `buildId`; atomic. */
function setImageRef(reference, buildId, arch) {
  const ref = parseRef(reference);
  const a = checkArch(arch);
  const image = loadObject(buildId);
  if (!image) throw withCode(`image build not found: ${buildId} (see: gondolin image ls)`, "missing_asset");
  if (image.arch !== a) {
    throw withCode(`image ${buildId} is ${image.arch}, not ${a}`, "invalid_image");
  }
  const dir = refDir(ref);
  fs.mkdirSync(dir, { recursive: true });
  const link = path.join(dir, a);
  const tmp = `${link}.tmp-${process.pid}-${Date.now()}`;
  fs.symlinkSync(path.relative(dir, getImageObjectDirectory(buildId)), tmp);
  fs.renameSync(tmp, link);
  return { reference: ref.reference, targets: refTargets(ref), updatedAt: fs.lstatSync(link).mtime.toISOString() };
}

/**
 * Copy an image directory into the store under its build id (atomically:
 * a temp directory renamed into place). Files on the store's filesystem are
 * hard-linked, as the builder does: images are never written in place.
 * `created` is false when the store had it already.
 */
function importImageFromDirectory(assetDir) {
  const image = native.loadImage(path.resolve(assetDir));
  const dest = getImageObjectDirectory(image.buildId);
  if (fs.existsSync(path.join(dest, "manifest.json"))) {
    return { buildId: image.buildId, arch: image.arch, assetDir: dest, created: false };
  }
  const store = imageStoreDir();
  fs.mkdirSync(store, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(store, `.import-${image.buildId}-`));
  try {
    for (const file of [image.kernel, image.initrd, image.rootfs, path.join(image.dir, "manifest.json")]) {
      const rel = path.relative(image.dir, file);
      fs.mkdirSync(path.dirname(path.join(tmp, rel)), { recursive: true });
      linkOrCopy(file, path.join(tmp, rel));
    }
    native.loadImage(tmp); // the copy is complete and consistent
    fs.renameSync(tmp, dest);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (fs.existsSync(path.join(dest, "manifest.json"))) {
      return { buildId: image.buildId, arch: image.arch, assetDir: dest, created: false }; // a racing import won
    }
    throw err;
  }
  return { buildId: image.buildId, arch: image.arch, assetDir: dest, created: true };
}

function linkOrCopy(src, dst) {
  try {
    fs.linkSync(src, dst);
  } catch {
    fs.copyFileSync(src, dst, fs.constants.COPYFILE_FICLONE);
  }
}

/**
 * `source` (any selector; a directory outside the store is imported first)
 * gets the name `targetReference`.
 */
function tagImage(source, targetReference, arch) {
  parseRef(targetReference);
  let resolved = resolveImageSelector(source, arch);
  if (resolved.source === "path" && path.resolve(resolved.assetDir) !== getImageObjectDirectory(resolved.buildId)) {
    importImageFromDirectory(resolved.assetDir);
  }
  return setImageRef(targetReference, resolved.buildId, resolved.arch);
}

/**
 * Our extension (upstream has no API for it; CLI `gondolin image rm`): a
 * ref selector removes that ref (every arch unless `arch` is given); a build
 * id removes the image and every ref pointing at it. Returns what went.
 */
function removeImage(selector, arch) {
  if (isBuildId(selector)) {
    const dir = getImageObjectDirectory(selector);
    if (!fs.existsSync(dir)) throw withCode(`image build not found: ${selector} (see: gondolin image ls)`, "missing_asset");
    const removedRefs = [];
    for (const r of listImageRefs()) {
      for (const [a, id] of Object.entries(r.targets)) {
        if (id === selector) {
          const dir = refDir(parseRef(r.reference));
          fs.rmSync(path.join(dir, a), { force: true });
          pruneEmpty(dir);
          removedRefs.push(`${r.reference} (${a})`);
        }
      }
    }
    // Rename first so a concurrent reader never sees half a directory.
    const trash = fs.mkdtempSync(path.join(imageStoreDir(), ".remove-"));
    fs.renameSync(dir, path.join(trash, selector));
    fs.rmSync(trash, { recursive: true, force: true });
    return { removedRefs, removedBuildId: selector };
  }
  const ref = parseRef(selector);
  const arches = arch === undefined ? ARCHES : [checkArch(arch)];
  const removedRefs = [];
  for (const a of arches) {
    const link = path.join(refDir(ref), a);
    if (isSymlink(link)) {
      fs.rmSync(link, { force: true });
      removedRefs.push(`${ref.reference} (${a})`);
    }
  }
  if (removedRefs.length === 0) {
    throw withCode(`image ref not found: ${ref.reference} (see: gondolin image ls)`, "missing_asset");
  }
  pruneEmpty(refDir(ref));
  return { removedRefs, removedBuildId: null };
}

/** Remove `dir` and its parents up to `refs/` while they are empty. */
function pruneEmpty(dir) {
  const root = path.join(imageStoreDir(), "refs");
  for (let d = dir; d.startsWith(root + path.sep); d = path.dirname(d)) {
    try {
      fs.rmdirSync(d);
    } catch {
      return; // not empty (or gone): stop
    }
  }
}

module.exports = {
  cacheRoot,
  imageStoreDir,
  getImageStoreDirectory: imageStoreDir,
  getImageObjectDirectory,
  importImageFromDirectory,
  resolveImageSelector,
  listImageRefs,
  setImageRef,
  tagImage,
  removeImage,
  parseRef,
  isBuildId,
  hostArch,
};
