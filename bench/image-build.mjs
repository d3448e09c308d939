// Cold image builds: the default definition as root and as an unprivileged
// user (mmdebstrap unshare mode + fakeroot), each into an empty cache, and
// the image's size on disk. Prints JSON. Needs root (to create the build user)
// and the network to the Debian mirror; about 10 minutes on 2 cores.
//
//   rootBuildS / rootlessBuildS: wall time of `gondolin build --no-boot-snapshot`
//   ratio: rootless / root (target ≤ 1.5)
//   imageApparentMiB / imageOnDiskMiB: the image directory (rootfs is sparse)
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const cli = path.join(root, "js", "cli.cjs");
const USER = "gondolin-build";

if (process.getuid() !== 0) {
  console.error("bench/image-build.mjs needs root (it creates the unprivileged build user)");
  process.exit(2);
}
if (spawnSync("id", [USER]).status !== 0) spawnSync("useradd", ["--create-home", "--shell", "/bin/sh", USER]);

function build(asUser) {
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-bench-build-"));
  fs.chmodSync(cache, 0o755);
  if (asUser) spawnSync("chown", [USER, cache]);
  const env = { PATH: process.env.PATH, HOME: cache, XDG_CACHE_HOME: cache, LANG: "C.UTF-8" };
  const argv = [process.execPath, cli, "build", "--no-boot-snapshot", "-q"];
  const t0 = process.hrtime.bigint();
  const r = asUser
    ? spawnSync("runuser", ["-u", USER, "--", ...argv], { encoding: "utf8", env, cwd: cache })
    : spawnSync(argv[0], argv.slice(1), { encoding: "utf8", env });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`build ${asUser ? "rootless" : "root"} failed:\n${r.stderr}`);
  return { seconds, dir: r.stdout.trim(), cache };
}

function sizeMiB(dir) {
  let apparent = 0;
  let onDisk = 0;
  for (const f of fs.readdirSync(dir)) {
    const st = fs.statSync(path.join(dir, f));
    apparent += st.size;
    onDisk += st.blocks * 512;
  }
  return { apparent: apparent / 2 ** 20, onDisk: onDisk / 2 ** 20 };
}

const asRoot = build(false);
const rootless = build(true);
const size = sizeMiB(asRoot.dir);
for (const b of [asRoot, rootless]) fs.rmSync(b.cache, { recursive: true, force: true });
const round = (x) => Math.round(x * 10) / 10;
console.log(
  JSON.stringify(
    {
      rootBuildS: round(asRoot.seconds),
      rootlessBuildS: round(rootless.seconds),
      ratio: Math.round((rootless.seconds / asRoot.seconds) * 100) / 100,
      target: 1.5,
      imageApparentMiB: round(size.apparent),
      imageOnDiskMiB: round(size.onDisk),
    },
    null,
    2,
  ),
);
