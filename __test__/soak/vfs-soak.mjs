#!/usr/bin/env node
// VFS soak: races renames, writes through open fds, unlinks and host-side
// edits on each provider kind (MemoryProvider, RealFSProvider, a JS
// provider) and fails if any guest operation stops answering.
//
//   node __test__/soak/vfs-soak.mjs [seconds per provider, default 60]
//
// Exits 0 when every round finished, 1 on a hang (the guest workload or a
// later `ls` on the mount did not answer in time) or a wrong result.
// `__test__/vfs-faults.test.mjs` runs a short version on its shared VM.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * A JS provider passing through to a host directory with `fs.promises`:
 * handles are real `FileHandle`s, so an open file outlives its name (and
 * `chmod` works through the handle) as far as the provider API goes.
 */
export function passthroughProvider(root) {
  const at = (p) => path.join(root, p);
  return {
    readonly: false,
    supportsSymlinks: false,
    stat: (p) => fs.promises.stat(at(p)),
    lstat: (p) => fs.promises.lstat(at(p)),
    readdir: (p, opts) => fs.promises.readdir(at(p), opts),
    open: (p, flags, mode) => fs.promises.open(at(p), flags, mode),
    mkdir: (p, opts) => fs.promises.mkdir(at(p), opts),
    rmdir: (p) => fs.promises.rmdir(at(p)),
    unlink: (p) => fs.promises.unlink(at(p)),
    rename: (a, b) => fs.promises.rename(at(a), at(b)),
    chmod: (p, mode) => fs.promises.chmod(at(p), mode),
    truncate: (p, len) => fs.promises.truncate(at(p), len),
  };
}

// Three guest workers racing on one directory until $END:
//  1. the input of issue 12.1: write through an fd whose directory was
//     renamed twice; the file must hold both lines;
//  2. create, open, unlink, then write and read through the fd;
//  3. renames back and forth and listings.
const GUEST = String.raw`
set -u
cd "$1"; END=$((SECONDS + $2)); fail=0
w1() { local n=0
  while [ $SECONDS -lt $END ]; do
    n=$((n+1)); rm -rf a1 c1 e1
    mkdir -p a1/b && echo inner > a1/b/f && mv a1 c1 && echo new > c1/b/g && ls c1/b >/dev/null &&
    exec 3>>c1/b/f && mv c1 e1 && echo appended >&3 && exec 3>&- &&
    { [ "$(cat e1/b/f)" = "$(printf 'inner\nappended')" ] || { echo "w1: e1/b/f: $(cat e1/b/f)"; return 1; }; }
    exec 3>&- 2>/dev/null
  done; echo "w1 $n"; }
w2() { local n=0
  while [ $SECONDS -lt $END ]; do
    n=$((n+1)); echo hello > t2 && exec 4<>t2 && rm -f t2 && cat <&4 >/dev/null && echo world >&4; exec 4>&-
  done; echo "w2 $n"; }
w3() { local n=0
  while [ $SECONDS -lt $END ]; do
    n=$((n+1)); touch r3; mv r3 s3 2>/dev/null; mv s3 r3 2>/dev/null; ls >/dev/null 2>&1; mkdir -p h/x 2>/dev/null; ls h >/dev/null 2>&1
  done; echo "w3 $n"; }
w1 & p1=$!; w2 & p2=$!; w3 & p3=$!
wait $p1 || fail=1; wait $p2 || true; wait $p3 || true
exit $fail
`;

function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`HANG: ${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Host-side edits while the guest works: for RealFS and the JS provider,
 * delete and recreate directories under the host dir the guest is using;
 * for a MemoryProvider, write and remove files through its own API.
 */
function hostEditor({ hostDir, memory }) {
  let stop = false;
  const loop = (async () => {
    let i = 0;
    while (!stop) {
      i++;
      try {
        if (hostDir) {
          const h = path.join(hostDir, "h");
          fs.rmSync(h, { recursive: true, force: true });
          fs.mkdirSync(path.join(h, "x"), { recursive: true });
          fs.writeFileSync(path.join(h, "x", `f${i % 8}`), `host ${i}\n`);
          if (i % 5 === 0) fs.rmSync(path.join(hostDir, "c1"), { recursive: true, force: true });
        } else if (memory) {
          await memory.writeFile(`/soak/hostfile${i % 8}`, `host ${i}\n`);
          if (i % 3 === 0) await memory.unlink(`/soak/hostfile${(i + 4) % 8}`).catch(() => {});
        }
      } catch {
        // The guest races us on the same names; only hangs matter here.
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  return async () => {
    stop = true;
    await loop;
  };
}

/**
 * One soak round on a mounted provider. `mount` is the guest path,
 * `hostDir` the host directory behind it (RealFS, passthrough JS) or
 * `memory` the MemoryProvider. Throws on a hang or a wrong result.
 */
export async function soakMount(vm, { mount, hostDir, memory, seconds }) {
  const dir = `${mount}/soak`;
  await withDeadline(vm.exec(["/bin/sh", "-c", `mkdir -p ${dir}`]), 30_000, `mkdir ${dir}`);
  const stopHost = hostEditor({ hostDir: hostDir && path.join(hostDir, "soak"), memory });
  let r;
  try {
    r = await withDeadline(
      vm.exec(["/bin/bash", "-c", GUEST, "soak", dir, String(seconds)]),
      (seconds + 60) * 1000,
      `the soak workload on ${mount}`,
    );
  } finally {
    await stopHost();
  }
  // The mount must still answer after the race.
  const ls = await withDeadline(vm.exec(["/bin/sh", "-c", `ls ${dir} >/dev/null && echo ok`]), 30_000, `ls ${dir}`);
  if (ls.stdout.trim() !== "ok") throw new Error(`ls ${dir} after the soak: ${ls.stderr}`);
  if (r.exitCode !== 0) throw new Error(`soak on ${mount} failed (exit ${r.exitCode}): ${r.stdout}${r.stderr}`);
  return Object.fromEntries(
    r.stdout
      .trim()
      .split("\n")
      .map((l) => l.split(" "))
      .filter((p) => p.length === 2)
      .map(([k, v]) => [k, Number(v)]),
  );
}

async function main() {
  const seconds = Number(process.argv[2] ?? 60);
  const { VM, MemoryProvider, RealFSProvider } = await import("@gondolin/native");
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-soak-"));
  const realDir = path.join(base, "real");
  const jsDir = path.join(base, "js");
  fs.mkdirSync(realDir);
  fs.mkdirSync(jsDir);
  const memory = new MemoryProvider();
  const vm = await VM.create({
    vfs: {
      mounts: {
        "/real": new RealFSProvider(realDir),
        "/mem": memory,
        "/js": passthroughProvider(jsDir),
      },
    },
  });
  let failed = false;
  try {
    await vm.start();
    for (const round of [
      { mount: "/real", hostDir: realDir },
      { mount: "/mem", memory },
      { mount: "/js", hostDir: jsDir },
    ]) {
      const t0 = Date.now();
      try {
        const counts = await soakMount(vm, { ...round, seconds });
        console.log(JSON.stringify({ mount: round.mount, seconds: (Date.now() - t0) / 1000, iterations: counts }));
      } catch (e) {
        failed = true;
        console.error(`${round.mount}: ${e.message}`);
        if (e.message.startsWith("HANG")) break;
      }
    }
  } finally {
    // A wedged mount can make close slow; never let it keep us from exiting.
    await withDeadline(vm.close(), 30_000, "vm.close()").catch((e) => console.error(e.message));
    fs.rmSync(base, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
