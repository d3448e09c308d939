// Helpers shared by the image tests: a registry on 127.0.0.1 (Debian's
// docker-registry), and the unprivileged build user with subordinate ids.
import { spawn, spawnSync } from "node:child_process";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { cli } from "./helpers.mjs";

export const REGISTRY_BIN = "/usr/bin/docker-registry";
export const BUILD_USER = "gondolin-build";

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Start docker-registry on 127.0.0.1 with its data and config in `dir`;
 * `auth: { user, password }` turns on htpasswd auth. Resolves to
 * `{ host, dataDir, proc }` once /v2/ answers; kill `proc` when done.
 */
export async function startRegistry(dir, { auth } = {}) {
  const dataDir = path.join(dir, "data");
  fs.mkdirSync(dataDir, { recursive: true });
  const port = await freePort();
  let config = `version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: ${dataDir}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
`;
  if (auth) {
    const htpasswd = spawnSync("sh", ["-c", "command -v htpasswd"], { encoding: "utf8" }).stdout.trim();
    const file = path.join(dir, "htpasswd");
    const r = spawnSync(htpasswd, ["-Bbn", auth.user, auth.password], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    fs.writeFileSync(file, r.stdout);
    config += `auth:\n  htpasswd:\n    realm: test\n    path: ${file}\n`;
  }
  fs.writeFileSync(path.join(dir, "config.yml"), config);
  const proc = spawn(REGISTRY_BIN, ["serve", path.join(dir, "config.yml")], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 20000;
  for (;;) {
    try {
      const res = await fetch(`http://${host}/v2/`);
      if (res.status === 200 || res.status === 401) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`registry did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { host, dataDir, proc };
}

/** Create BUILD_USER (as root) with subordinate ids, if it is not there yet. */
export function ensureBuildUser() {
  if (spawnSync("id", [BUILD_USER]).status !== 0) {
    const r = spawnSync("useradd", ["--create-home", "--shell", "/bin/sh", BUILD_USER], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
  }
  const listed = () => fs.existsSync("/etc/subuid") && new RegExp(`^${BUILD_USER}:`, "m").test(fs.readFileSync("/etc/subuid", "utf8"));
  if (!listed()) {
    // useradd gives subordinate ids only where /etc/subuid already exists.
    const r = spawnSync("usermod", ["--add-subuids", "200000-265535", "--add-subgids", "200000-265535", BUILD_USER], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
  }
  assert.ok(listed(), `${BUILD_USER} has subordinate ids in /etc/subuid`);
  return Number(spawnSync("id", ["-u", BUILD_USER], { encoding: "utf8" }).stdout);
}

/**
 * Run the CLI as BUILD_USER (runuser) with HOME = `work` and its cache in
 * `work/cache` (so the store is `work/cache/gondolin/images`).
 */
export function gondolinAsBuildUser(work, args) {
  const env = {
    PATH: process.env.PATH,
    HOME: work,
    XDG_CACHE_HOME: path.join(work, "cache"),
    LANG: "C.UTF-8",
  };
  return spawnSync("runuser", ["-u", BUILD_USER, "--", process.execPath, cli, ...args], {
    encoding: "utf8",
    env,
    cwd: work,
    maxBuffer: 64 << 20,
  });
}
