// Shared test helpers. VM tests run only where a VM can boot; `vmSkip()`
// says why they skip, and GONDOLIN_TEST_VM=1 turns a skip into a failure
// (CI sets it through `make test`).
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const cli = path.join(root, "js", "cli.cjs");

function has(cmd) {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

let cached;
/** A reason to skip VM tests, or false when they can run. */
export function vmSkip() {
  if (cached !== undefined) return cached;
  let reason = false;
  if (!has(`qemu-system-${process.arch === "x64" ? "x86_64" : "aarch64"}`)) reason = "QEMU is not installed";
  else if (!fs.existsSync(path.join(root, "npm", "linux-x64-gnu", "gondolin.linux-x64-gnu.node")))
    reason = "the addon is not built (make build)";
  if (reason && process.env.GONDOLIN_TEST_VM === "1") {
    throw new Error(`GONDOLIN_TEST_VM=1 but VM tests cannot run: ${reason}`);
  }
  cached = reason;
  return reason;
}

/** Resident set size of a pid in bytes (Linux). */
export function rssOf(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
