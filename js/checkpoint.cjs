"use strict";
// VmCheckpoint (upstream api.md §9): one file holding a qcow2 overlay of the
// root disk (backed by the image's rootfs), for memory checkpoints also the
// VM's RAM and device state (our extension), and a JSON trailer
// (protocol.md §9). The file format is written and read in Rust
// (src/napi/checkpoint.rs); this class is the JS face: naming, option
// merging and finding the image a checkpoint needs.

const fs = require("node:fs");
const path = require("node:path");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const { cacheRoot, imageForBuildId } = require("./image.cjs");

/** The only backend this implementation has (upstream also has krun). */
const VMM = "qemu";
const KNOWN_VMMS = ["qemu", "krun"];

/** `$GONDOLIN_CHECKPOINT_DIR`, else `<cache root>/checkpoints` (CLI snapshots). */
function checkpointDir() {
  if (process.env.GONDOLIN_CHECKPOINT_DIR) return path.resolve(process.env.GONDOLIN_CHECKPOINT_DIR);
  return path.join(cacheRoot(), "checkpoints");
}

/**
 * Backends a checkpoint can resume on, as upstream reads its trailer:
 * `compatibleVmm` (unknown entries ignored), else `[createdWithVmm]`, else
 * qemu only (legacy trailers).
 */
function compatibleVmms(data) {
  if (Array.isArray(data.compatibleVmm)) return data.compatibleVmm.filter((v) => KNOWN_VMMS.includes(v));
  if (KNOWN_VMMS.includes(data.createdWithVmm)) return [data.createdWithVmm];
  return ["qemu"];
}

/** Upstream's resume merge: shallow, `sandbox` one level deep. */
function mergeOptions(base, options) {
  const b = base || {};
  const o = options || {};
  return { ...b, ...o, sandbox: { ...(b.sandbox || {}), ...(o.sandbox || {}) } };
}

class VmCheckpoint {
  /**
   * @param checkpointPath the checkpoint file
   * @param data its trailer (VmCheckpointData)
   * @param baseVmOptions the options of the VM it was taken from; resume()
   *   starts from them (null when loaded from disk)
   */
  constructor(checkpointPath, data, baseVmOptions = null) {
    if (typeof checkpointPath !== "string" || checkpointPath === "") {
      throw withCode("checkpointPath is required", "invalid_option", undefined, TypeError);
    }
    if (data === null || typeof data !== "object") {
      throw withCode("checkpoint data must be an object", "invalid_option", undefined, TypeError);
    }
    this._path = path.resolve(checkpointPath);
    this._data = data;
    this._base = baseVmOptions ?? null;
  }

  get name() {
    return this._data.name;
  }

  /** The checkpoint file, absolute. */
  get path() {
    return this._path;
  }

  get dir() {
    return path.dirname(this._path);
  }

  /** Same as `path` (upstream kept it from the directory format). */
  get diskPath() {
    return this._path;
  }

  get guestAssetBuildId() {
    return this._data.guestAssetBuildId;
  }

  toJSON() {
    return this._data;
  }

  /**
   * A new VM on its own overlay backed by this checkpoint (many may run at
   * once). Not started, like VM.create(): the first use boots it, and a
   * memory checkpoint continues where it was instead of booting.
   */
  async resume(options = {}) {
    const merged = mergeOptions(this._base, options);
    const vmms = compatibleVmms(this._data);
    if (!vmms.includes(VMM)) {
      throw withCode(
        `checkpoint is not compatible with vmm=${VMM} (compatible backends: ${vmms.join(", ") || "none"})`,
        "invalid_checkpoint",
      );
    }
    if (!fs.existsSync(this._path)) {
      throw withCode(`checkpoint disk not found: ${this._path}`, "invalid_checkpoint");
    }
    const image = imageForBuildId(this._data.guestAssetBuildId, merged.sandbox.imagePath);
    // Required here: vm.cjs requires this file.
    const { VM, kResume } = require("./vm.cjs");
    const vm = new VM(merged);
    vm[kResume]({ checkpoint: this._path, image, memory: this._data.snapshotKind === "memory" });
    return vm;
  }

  /** @deprecated upstream's old name for resume(). */
  clone(options = {}) {
    return this.resume(options);
  }

  /** Read a checkpoint file's trailer (upstream's load errors, code invalid_checkpoint). */
  static load(checkpointPath) {
    if (typeof checkpointPath !== "string" || checkpointPath === "") {
      throw withCode("checkpointPath is required", "invalid_option", undefined, TypeError);
    }
    const abs = path.resolve(checkpointPath);
    return new VmCheckpoint(abs, JSON.parse(native.readCheckpoint(abs)), null);
  }

  /** Remove the checkpoint file (no error when it is already gone). */
  delete() {
    fs.rmSync(this._path, { force: true });
  }

  /** Append (or replace) the trailer of a checkpoint file. */
  static writeTrailer(diskPath, data) {
    native.writeCheckpointTrailer(path.resolve(diskPath), `${JSON.stringify(data, null, 2)}\n`);
  }
}

module.exports = { VmCheckpoint, checkpointDir, compatibleVmms, mergeOptions };
