"use strict";
// Images over OCI registries (our extension; issue 17 item 2). The Rust core
// (src/image/oci.rs) moves and verifies the bytes; this file resolves
// selectors, names what was pulled, and formats progress for the CLI.
//
// An image in a registry is an OCI artifact: config = the image's
// manifest.json, one zstd layer per asset, annotations with the build id
// and arch. Auth comes from the docker config file; loopback registries
// (127.0.0.1, localhost, ::1) are spoken to over plain HTTP.

const { native } = require("./native.cjs");
const store = require("./image-store.cjs");
const { withCode } = require("./errors.cjs");

function nativeOptions(options, arch) {
  const o = options || {};
  return {
    insecure: o.insecure === undefined ? undefined : Boolean(o.insecure),
    dockerConfig: o.dockerConfig,
    arch,
  };
}

function checkProgress(onProgress) {
  if (onProgress !== undefined && onProgress !== null && typeof onProgress !== "function") {
    throw withCode("onProgress must be a function", "invalid_option");
  }
  return onProgress || null;
}

/**
 * The local `name:tag` a pulled OCI reference gets by default: the last
 * segment of its repository and its tag (`127.0.0.1:5000/gondolin/debian-base:v1`
 * → `debian-base:v1`); null for a reference by digest only.
 */
function localRefFor(reference) {
  const noDigest = reference.split("@")[0];
  if (noDigest !== reference && !/:[^/]*$/.test(noDigest)) return null;
  const slash = noDigest.lastIndexOf("/");
  const last = noDigest.slice(slash + 1);
  const colon = last.lastIndexOf(":");
  const [name, tag] = colon >= 0 ? [last.slice(0, colon), last.slice(colon + 1)] : [last, "latest"];
  try {
    return store.parseRef(`${name}:${tag}`).reference;
  } catch {
    return null;
  }
}

/**
 * Pull `reference` (`host[:port]/repo[:tag|@sha256:…]`) into the local
 * store and name it (`options.tag`, default: see localRefFor; `false`
 * names nothing).
 */
async function pullImage(reference, options, onProgress) {
  if (typeof reference !== "string" || reference === "") {
    throw withCode(`invalid OCI reference: ${reference}`, "invalid_option");
  }
  const o = options || {};
  const arch = o.arch === undefined ? store.hostArch() : o.arch;
  if (arch !== "aarch64" && arch !== "x86_64") {
    throw withCode(`invalid image arch: ${arch} (expected aarch64 or x86_64)`, "invalid_option");
  }
  const tag = o.tag === false ? null : o.tag === undefined ? localRefFor(reference) : store.parseRef(o.tag).reference;
  const r = await native.pullImage(reference, nativeOptions(o, arch), checkProgress(onProgress));
  if (tag) store.setImageRef(tag, r.image.buildId, r.image.arch);
  return {
    reference,
    digest: r.digest,
    buildId: r.image.buildId,
    arch: r.image.arch,
    assetDir: r.image.dir,
    created: !r.existed,
    tag,
    image: r.image,
  };
}

/** Push the image `selector` names (directory, build id or ref) to `reference`. */
async function pushImage(selector, reference, options, onProgress) {
  if (typeof reference !== "string" || reference === "") {
    throw withCode(`invalid OCI reference: ${reference}`, "invalid_option");
  }
  const o = options || {};
  const resolved = store.resolveImageSelector(selector, o.arch);
  const r = await native.pushImage(resolved.assetDir, reference, nativeOptions(o), checkProgress(onProgress));
  return {
    reference: r.reference,
    digest: r.digest,
    buildId: resolved.buildId,
    arch: resolved.arch,
    uploadedBytes: r.uploaded,
  };
}

/**
 * `<registry>/debian-base:<buildId>`: where the default image for this
 * package's guest binaries lives in `registry` (GONDOLIN_IMAGE_REGISTRY).
 */
function defaultImageReference(registry) {
  const { buildOptions } = require("./image.cjs");
  const id = native.expectedBuildId(buildOptions());
  return `${String(registry).replace(/\/+$/, "")}/debian-base:${id}`;
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function fmtEta(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "--:--";
  const t = Math.round(s);
  return `${String(Math.floor(t / 60)).padStart(2, "0")}:${String(t % 60).padStart(2, "0")}`;
}

/**
 * A progress callback that writes to `stream`: a redrawn bar on a TTY,
 * else one line per phase start, every 5 s, and phase end.
 */
function progressPrinter(stream = process.stderr, label = "") {
  const tty = Boolean(stream.isTTY);
  let phase = null; // the phase on screen
  let finished = null; // the last phase printed as done
  let lastLine = 0;
  return (p) => {
    const done = p.total > 0 && p.done >= p.total;
    if (done && finished === p.phase) return;
    const pct = p.total > 0 ? Math.min(100, (p.done / p.total) * 100) : 100;
    const text = `${label}${p.phase} ${fmtBytes(p.done)}/${fmtBytes(p.total)} ${pct.toFixed(0)}% ${fmtBytes(p.rate)}/s ETA ${fmtEta(p.eta)}`;
    if (tty) {
      const width = 24;
      const filled = Math.round((pct / 100) * width);
      if (phase !== null && phase !== p.phase) stream.write("\n");
      stream.write(`\r[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${text}\x1b[K${done ? "\n" : ""}`);
      phase = done ? null : p.phase;
    } else {
      const now = Date.now();
      if (phase === p.phase && !done && now - lastLine < 5000) return;
      stream.write(`${text}\n`);
      lastLine = now;
      phase = p.phase;
    }
    if (done) finished = p.phase;
  };
}

module.exports = { pullImage, pushImage, defaultImageReference, localRefFor, progressPrinter };
