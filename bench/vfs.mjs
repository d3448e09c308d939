#!/usr/bin/env node
// VFS benchmark: the same guest workloads on each provider kind and on the
// guest's own tmpfs (the limit), in one VM, in one run. Prints JSON.
//   seqWriteMiBps / seqReadMiBps: dd bs=1M of 200 MiB, rate as dd reports it
//                                 (caches dropped before the read)
//   createMs / statMs / unlinkMs: per file, 5,000 files of 1 KiB, timed in
//                                 one guest process (bench/smallfiles.c)
//   tarMs: `tar x` of the same 5,000-file tree
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { VM, MemoryProvider, RealFSProvider } from "@gondolin/native";

const here = path.dirname(fileURLToPath(import.meta.url));
const UPSTREAM = {
  memory: { seqWriteMiBps: 1.6, seqReadMiBps: 8, createMs: 15, statMs: 3.8, unlinkMs: 8.4 },
  realfs: { seqWriteMiBps: 9, seqReadMiBps: 9, createMs: 12, statMs: 2.1, unlinkMs: 7.0 },
};
const FILES = 5000;
const MIB = 200;
const round = (x, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

function ddRate(stderr) {
  const m = /(\d+) bytes .* copied, ([\d.]+) s/.exec(stderr);
  if (!m) throw new Error(`unexpected dd output: ${stderr}`);
  return Number(m[1]) / 1048576 / Number(m[2]);
}

/** A plain JS provider: files in a Map, buffers grown by doubling. */
function jsProvider() {
  const files = new Map();
  const dirs = new Set(["/"]);
  const stat = (kind, size) => {
    const st = Object.create(fs.Stats.prototype);
    const now = Date.now();
    Object.assign(st, { mode: kind === "dir" ? 0o040755 : 0o100644, nlink: 1, uid: 0, gid: 0, size, ino: 0, atimeMs: now, mtimeMs: now, ctimeMs: now });
    return st;
  };
  const enoent = (p) => Object.assign(new Error(`ENOENT: ${p}`), { code: "ENOENT" });
  const dirOf = (p) => path.posix.dirname(p);
  return {
    readonly: false,
    supportsSymlinks: false,
    async stat(p) {
      if (dirs.has(p)) return stat("dir", 4096);
      const f = files.get(p);
      if (!f) throw enoent(p);
      return stat("file", f.len);
    },
    async readdir(p) {
      if (!dirs.has(p)) throw enoent(p);
      const out = [];
      for (const k of files.keys()) if (dirOf(k) === p) out.push(path.posix.basename(k));
      for (const d of dirs) if (d !== "/" && dirOf(d) === p) out.push(path.posix.basename(d));
      return out;
    },
    async mkdir(p) {
      if (dirs.has(p) || files.has(p)) throw Object.assign(new Error("EEXIST"), { code: "EEXIST" });
      dirs.add(p);
    },
    async rmdir(p) { dirs.delete(p); },
    async unlink(p) { if (!files.delete(p)) throw enoent(p); },
    async rename(a, b) { files.set(b, files.get(a)); files.delete(a); },
    async open(p, flags) {
      let f = files.get(p);
      if (!f) {
        if (!/[wa]/.test(flags)) throw enoent(p);
        if (!dirs.has(dirOf(p))) throw enoent(dirOf(p));
        f = { buf: Buffer.alloc(0), len: 0 };
        files.set(p, f);
      }
      if (flags.startsWith("w")) f.len = 0;
      return {
        async read(buf, off, len, pos) {
          const n = Math.max(0, Math.min(len, f.len - pos));
          f.buf.copy(buf, off, pos, pos + n);
          return { bytesRead: n, buffer: buf };
        },
        async write(buf, off, len, pos) {
          const at = pos === null ? f.len : pos;
          if (at + len > f.buf.length) {
            const grown = Buffer.alloc(Math.max(at + len, f.buf.length * 2));
            f.buf.copy(grown, 0, 0, f.len);
            f.buf = grown;
          }
          buf.copy(f.buf, at, off, off + len);
          f.len = Math.max(f.len, at + len);
          return { bytesWritten: len, buffer: buf };
        },
        async stat() { return stat("file", f.len); },
        async truncate(len = 0) { f.len = Math.min(f.len, len); },
        async close() {},
      };
    },
  };
}

async function sh(vm, script) {
  const r = await vm.exec(["/bin/sh", "-c", script]);
  if (r.exitCode !== 0) throw new Error(`${script}: ${r.stderr}`);
  return r;
}

async function measure(vm, dir) {
  const out = {};
  await sh(vm, `mkdir -p ${dir}/seq ${dir}/small ${dir}/tar`);
  const w = await sh(vm, `dd if=/dev/zero of=${dir}/seq/big bs=1M count=${MIB} conv=fsync 2>&1 >/dev/null`);
  out.seqWriteMiBps = round(ddRate(w.stdout), 1);
  const r = await sh(vm, `sync; echo 3 > /proc/sys/vm/drop_caches; dd if=${dir}/seq/big of=/dev/null bs=1M 2>&1`);
  out.seqReadMiBps = round(ddRate(r.stdout), 1);
  await sh(vm, `rm -f ${dir}/seq/big`);
  Object.assign(out, JSON.parse((await sh(vm, `/tmp/smallfiles ${dir}/small ${FILES}`)).stdout));
  for (const k of ["createMs", "statMs", "unlinkMs"]) out[k] = round(out[k], 3);
  const t0 = performance.now();
  await sh(vm, `tar xf /tmp/tree.tar -C ${dir}/tar`);
  out.tarMs = Math.round(performance.now() - t0);
  return out;
}

async function main() {
  const bin = path.join(os.tmpdir(), `gondolin-smallfiles-${process.pid}`);
  execFileSync("gcc", ["-O2", "-static", "-o", bin, path.join(here, "smallfiles.c")]);
  const realDir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-bench-realfs-"));
  const vm = await VM.create({
    memory: "2G",
    vfs: { mounts: { "/mem": new MemoryProvider(), "/real": new RealFSProvider(realDir), "/js": jsProvider() } },
  });
  try {
    await vm.start();
    await vm.fs.writeFile("/tmp/smallfiles", fs.readFileSync(bin));
    await sh(vm, "chmod +x /tmp/smallfiles");
    await sh(
      vm,
      `mkdir -p /tmp/tree && cd /tmp/tree && python3 -c "import os\nfor i in range(50):\n os.makedirs('d%02d' % i, exist_ok=True)\n for j in range(100): open('d%02d/f%03d' % (i, j), 'w').write('x' * 1024)" && tar cf /tmp/tree.tar -C /tmp tree && rm -rf /tmp/tree`,
    );
    const results = {
      tmpfs: await measure(vm, "/tmp/bench"),
      memory: await measure(vm, "/mem"),
      realfs: await measure(vm, "/real"),
      js: await measure(vm, "/js"),
    };
    const ratios = {};
    for (const k of ["memory", "realfs", "js"]) {
      const r = results[k];
      ratios[k] = {
        seqWriteVsTmpfs: round(r.seqWriteMiBps / results.tmpfs.seqWriteMiBps, 3),
        seqReadVsTmpfs: round(r.seqReadMiBps / results.tmpfs.seqReadMiBps, 3),
      };
      const up = UPSTREAM[k];
      if (up) {
        Object.assign(ratios[k], {
          seqWriteVsUpstream: round(r.seqWriteMiBps / up.seqWriteMiBps, 1),
          seqReadVsUpstream: round(r.seqReadMiBps / up.seqReadMiBps, 1),
          createVsUpstream: round(up.createMs / r.createMs, 1),
          statVsUpstream: round(up.statMs / r.statMs, 1),
          unlinkVsUpstream: round(up.unlinkMs / r.unlinkMs, 1),
        });
      }
    }
    console.log(JSON.stringify({ accel: vm.info.accel, files: FILES, seqMiB: MIB, results, ratios, upstream: UPSTREAM }, null, 2));
  } finally {
    await vm.close();
    fs.rmSync(bin, { force: true });
    fs.rmSync(realDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
