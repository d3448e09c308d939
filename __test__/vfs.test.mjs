// The host-served filesystem against a real VM: every provider kind mounted
// at once in one shared VM, exercised from inside the guest.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  VM,
  MemoryProvider,
  RealFSProvider,
  ReadonlyProvider,
  ShadowProvider,
  createShadowPathPredicate,
} from "@gondolin/native";
import { vmSkip, sleep } from "./helpers.mjs";

const skip = vmSkip();
let vm;
let work; // host dir behind /workspace
let roDir;
let shadowDir;
const hookOps = [];
let mem; // MemoryProvider behind /mem

/** A provider written in JS: a Map of files, methods async, using fs.promises inside. */
function jsProvider(scratch) {
  const files = new Map([["/hello.txt", Buffer.from("hello from js\n")]]);
  const dirs = new Set(["/"]);
  const now = Date.now();
  const stat = (kind, size) => {
    const st = Object.create(fs.Stats.prototype);
    Object.assign(st, {
      mode: (kind === "dir" ? 0o040755 : 0o100644),
      nlink: 1, uid: 0, gid: 0, size, ino: 0,
      atimeMs: now, mtimeMs: now, ctimeMs: now,
    });
    return st;
  };
  const enoent = (p) => Object.assign(new Error(`ENOENT: no such file '${p}'`), { code: "ENOENT" });
  return {
    readonly: false,
    supportsSymlinks: false,
    async stat(p) {
      // Touch the real fs through the threadpool: must not deadlock.
      await fs.promises.stat(scratch);
      if (dirs.has(p)) return stat("dir", 4096);
      if (files.has(p)) return stat("file", files.get(p).length);
      throw enoent(p);
    },
    async readdir(p) {
      if (!dirs.has(p)) throw enoent(p);
      return [...files.keys()].filter((f) => path.posix.dirname(f) === p).map((f) => path.posix.basename(f));
    },
    async open(p, flags) {
      if (!files.has(p)) {
        if (!/[wa]/.test(flags)) throw enoent(p);
        files.set(p, Buffer.alloc(0));
      }
      if (flags.startsWith("w")) files.set(p, Buffer.alloc(0));
      return {
        async read(buf, off, len, pos) {
          const data = files.get(p);
          const n = Math.max(0, Math.min(len, data.length - pos));
          data.copy(buf, off, pos, pos + n);
          return { bytesRead: n, buffer: buf };
        },
        async write(buf, off, len, pos) {
          let data = files.get(p);
          const at = pos === null ? data.length : pos;
          if (at + len > data.length) data = Buffer.concat([data, Buffer.alloc(at + len - data.length)]);
          buf.copy(data, at, off, off + len);
          files.set(p, data);
          return { bytesWritten: len, buffer: buf };
        },
        async stat() { return stat("file", files.get(p).length); },
        async truncate(len = 0) { files.set(p, files.get(p).subarray(0, len)); },
        async close() {},
      };
    },
    async unlink(p) {
      if (!files.delete(p)) throw enoent(p);
    },
    async mkdir(p) { dirs.add(p); },
    async rmdir(p) { dirs.delete(p); },
    async rename(a, b) { files.set(b, files.get(a)); files.delete(a); },
  };
}

before(async () => {
  if (skip) return;
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-vfs-"));
  work = path.join(base, "work");
  roDir = path.join(base, "ro");
  shadowDir = path.join(base, "shadow");
  for (const d of [work, roDir, shadowDir]) fs.mkdirSync(d);
  fs.writeFileSync(path.join(work, "hello.txt"), "hello from the host\n");
  fs.writeFileSync(path.join(roDir, "fixed.txt"), "read only\n");
  fs.writeFileSync(path.join(shadowDir, ".env"), "SECRET=1\n");
  fs.writeFileSync(path.join(shadowDir, "ok.txt"), "visible\n");
  mem = new MemoryProvider();
  await mem.writeFile("/seeded.txt", "seeded\n");
  vm = await VM.create({
    vfs: {
      mounts: {
        "/workspace": new RealFSProvider(work),
        "/mem": mem,
        "/ro": new ReadonlyProvider(new RealFSProvider(roDir)),
        "/shadow": new ShadowProvider(new RealFSProvider(shadowDir), {
          shouldShadow: createShadowPathPredicate(["/.env"]),
        }),
        "/js": jsProvider(base),
      },
      hooks: {
        before(ctx) {
          hookOps.push(`${ctx.op} ${ctx.path ?? ctx.oldPath}`);
          if (ctx.path === "/mem/blocked.txt" && ctx.op === "open" && /[wa]/.test(ctx.flags)) {
            throw Object.assign(new Error("blocked by hook"), { code: "EACCES" });
          }
        },
      },
    },
  });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
});

async function sh(script) {
  const r = await vm.exec(["/bin/sh", "-c", script]);
  return r;
}

async function ok(script) {
  const r = await sh(script);
  assert.equal(r.exitCode, 0, `${script}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

test("every mount is visible at its path and under /data", { skip }, async () => {
  assert.equal(await ok("cat /workspace/hello.txt"), "hello from the host\n");
  assert.equal(await ok("cat /data/workspace/hello.txt"), "hello from the host\n");
  assert.equal(await ok("cat /mem/seeded.txt"), "seeded\n");
  assert.equal(await ok("cat /js/hello.txt"), "hello from js\n");
  const mounts = await ok("grep -c ' fuse.sandboxfs ' /proc/mounts");
  assert.ok(Number(mounts) >= 6, `expected /data and its binds in /proc/mounts, got ${mounts}`);
  assert.match(await ok("ls /data"), /workspace/);
  // df works (statfs).
  assert.match(await ok("df -P /data | tail -1"), /sandboxfs/);
});

test("guest writes reach the host and host edits reach the guest", { skip }, async () => {
  await ok("echo from-guest > /workspace/g.txt");
  assert.equal(fs.readFileSync(path.join(work, "g.txt"), "utf8"), "from-guest\n");
  fs.writeFileSync(path.join(work, "hello.txt"), "edited on the host\n");
  let seen = "";
  for (let i = 0; i < 40 && seen !== "edited on the host\n"; i++) {
    seen = (await sh("cat /workspace/hello.txt")).stdout;
    if (seen !== "edited on the host\n") await sleep(100);
  }
  assert.equal(seen, "edited on the host\n");
});

const POSIX = String.raw`
import errno, fcntl, mmap, os, stat, sys
root = sys.argv[1]
d = os.path.join(root, "posix")
os.makedirs(d, exist_ok=True)
p = os.path.join(d, "f")
with open(p, "wb") as f: f.write(b"0123456789")
with open(p, "r+b") as f:
    f.seek(2); f.write(b"AB")
assert open(p, "rb").read() == b"01AB456789"
os.truncate(p, 4); assert os.stat(p).st_size == 4
os.truncate(p, 8); assert open(p, "rb").read() == b"01AB\0\0\0\0"
fd = os.open(p, os.O_WRONLY | os.O_APPEND)
os.lseek(fd, 0, 0); os.write(fd, b"Z"); os.close(fd)
assert open(p, "rb").read().endswith(b"Z")
q = os.path.join(d, "g")
with open(q, "wb") as f: f.write(b"other")
os.rename(q, p)
assert open(p, "rb").read() == b"other" and not os.path.exists(q)
try:
    os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY); raise SystemExit("O_EXCL")
except FileExistsError: pass
os.chmod(p, 0o600); assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
names = set()
for i in range(300):
    n = "n%03d" % i; names.add(n)
    open(os.path.join(d, n), "w").close()
assert names <= set(os.listdir(d)), "readdir lost entries"
for n in names: os.unlink(os.path.join(d, n))
os.mkdir(os.path.join(d, "sub"))
open(os.path.join(d, "sub", "x"), "w").close()
try:
    os.rmdir(os.path.join(d, "sub")); raise SystemExit("rmdir non-empty")
except OSError as e: assert e.errno == errno.ENOTEMPTY, e
with open(p, "r+b") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); assert m[:5] == b"other"; m.close()
with open(p, "rb") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX); fcntl.flock(f, fcntl.LOCK_UN)
    except OSError as e: assert e.errno in (errno.ENOSYS, errno.EOPNOTSUPP), e
st = os.statvfs(root); assert st.f_bsize > 0
if sys.argv[2] == "links":
    os.link(p, os.path.join(d, "hard")); assert os.stat(p).st_nlink == 2
    os.symlink("f", os.path.join(d, "sym")); assert os.readlink(os.path.join(d, "sym")) == "f"
    assert open(os.path.join(d, "sym"), "rb").read() == b"other"
print("ok")
`;

for (const [where, links] of [["/workspace", "links"], ["/mem", "links"], ["/data/scratch", "links"]]) {
  test(`POSIX behaviour on ${where}`, { skip }, async () => {
    await vm.fs.writeFile("/tmp/posix.py", POSIX);
    await ok(`mkdir -p ${where}`);
    assert.equal(await ok(`python3 /tmp/posix.py ${where} ${links}`), "ok\n");
  });
}

test("git init, add and commit on a RealFS mount", { skip }, async () => {
  await ok(
    "cd /workspace && mkdir repo && cd repo && git init -q && echo hi > a && " +
      "git -c user.email=t@e -c user.name=t add a && git -c user.email=t@e -c user.name=t commit -qm one && git log --oneline | wc -l",
  );
  assert.ok(fs.existsSync(path.join(work, "repo", ".git", "HEAD")));
});

test("tar x of a 5,000-file tree", { skip }, async () => {
  await ok(
    "mkdir -p /tmp/tree && cd /tmp/tree && python3 -c \"import os\n" +
      "for i in range(50):\n os.makedirs('d%02d' % i, exist_ok=True)\n for j in range(100): open('d%02d/f%03d' % (i, j), 'w').write('x' * 1024)\" " +
      "&& tar cf /tmp/tree.tar -C /tmp tree",
  );
  assert.equal((await ok("mkdir -p /workspace/t && tar xf /tmp/tree.tar -C /workspace/t && find /workspace/t -type f | wc -l")).trim(), "5000");
  assert.equal(fs.readdirSync(path.join(work, "t", "tree")).length, 50);
});

test("npm install of a local package tree", { skip }, async () => {
  await ok(
    "mkdir -p /workspace/npm/lib /workspace/npm/app && cd /workspace/npm/lib && " +
      `printf '{"name":"lib","version":"1.0.0","main":"index.js"}' > package.json && echo 'module.exports = 42' > index.js && ` +
      "npm pack -q --silent >/dev/null && cd ../app && printf '{\"name\":\"app\",\"version\":\"1.0.0\"}' > package.json && " +
      "npm install --offline --no-audit --no-fund -q ../lib/lib-1.0.0.tgz >/dev/null 2>&1 && node -e 'console.log(require(\"lib\"))'",
  );
  assert.equal(fs.readFileSync(path.join(work, "npm", "app", "node_modules", "lib", "index.js"), "utf8"), "module.exports = 42\n");
});

test("a JS provider serves and stores files", { skip }, async () => {
  await ok("echo new > /js/made.txt");
  assert.equal(await ok("cat /js/made.txt"), "new\n");
  assert.match(await ok("ls /js"), /hello\.txt/);
});

test("ReadonlyProvider refuses writes with EROFS", { skip }, async () => {
  assert.equal(await ok("cat /ro/fixed.txt"), "read only\n");
  const r = await sh("echo x > /ro/new.txt");
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stderr, /Read-only file system/);
  assert.ok(!fs.existsSync(path.join(roDir, "new.txt")));
});

test("a shadowed .env is invisible and unreadable", { skip }, async () => {
  assert.equal(await ok("cat /shadow/ok.txt"), "visible\n");
  assert.doesNotMatch(await ok("ls -a /shadow"), /\.env/);
  const r = await sh("cat /shadow/.env");
  assert.notEqual(r.exitCode, 0);
  const w = await sh("echo x > /shadow/.env");
  assert.notEqual(w.exitCode, 0);
  assert.equal(fs.readFileSync(path.join(shadowDir, ".env"), "utf8"), "SECRET=1\n");
});

test("hooks see guest operations and can block them", { skip }, async () => {
  hookOps.length = 0;
  await ok("cat /mem/seeded.txt");
  assert.ok(hookOps.some((o) => o.startsWith("open /mem/seeded.txt")), hookOps.join("\n"));
  const r = await sh("echo no > /mem/blocked.txt");
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stderr, /Permission denied/);
});

test("vm.fs on VFS paths goes to the provider and the guest sees the change", { skip }, async () => {
  await vm.fs.writeFile("/workspace/from-vmfs.txt", "direct\n");
  assert.equal(fs.readFileSync(path.join(work, "from-vmfs.txt"), "utf8"), "direct\n");
  assert.equal(await vm.fs.readFile("/workspace/from-vmfs.txt", { encoding: "utf8" }), "direct\n");
  await vm.fs.writeFile("/mem/from-vmfs.txt", "mem direct\n");
  assert.equal(await ok("cat /mem/from-vmfs.txt"), "mem direct\n");
  await vm.fs.writeFile("/mem/from-vmfs.txt", "changed\n");
  assert.equal(await ok("cat /mem/from-vmfs.txt"), "changed\n");
  assert.ok((await vm.fs.listDir("/data/mem")).includes("from-vmfs.txt"));
  await vm.fs.deleteFile("/mem/from-vmfs.txt");
  assert.notEqual((await sh("cat /mem/from-vmfs.txt")).exitCode, 0);
});

test("vm.fs on a VFS path works before boot and does not boot", { skip }, async () => {
  const mem = new MemoryProvider();
  const cold = new VM({ vfs: { mounts: { "/w": mem } } });
  await cold.fs.writeFile("/w/a.txt", "cold");
  assert.equal(await mem.readFile("/a.txt", "utf8"), "cold");
  assert.equal(cold.info, null);
  await cold.close();
});

test("host-side changes to a mounted MemoryProvider reach the guest at once", { skip }, async () => {
  // The guest caches MemoryProvider entries for a minute; the provider
  // object tells the VM what changed.
  assert.equal(await ok("cat /mem/seeded.txt"), "seeded\n");
  await mem.writeFile("/seeded.txt", "changed on the host\n");
  assert.equal(await ok("cat /mem/seeded.txt"), "changed on the host\n");
  await mem.writeFile("/appeared.txt", "new\n");
  assert.equal(await ok("cat /mem/appeared.txt"), "new\n");
  await mem.unlink("/appeared.txt");
  assert.notEqual((await sh("cat /mem/appeared.txt")).exitCode, 0);
});

test("host edits to a RealFS directory reach the guest at once, not after the cache TTL", { skip }, async () => {
  // The guest caches RealFS attributes and entries for 1 s; the host-side
  // watch invalidates them as soon as another program changes the files.
  fs.writeFileSync(path.join(work, "watched.txt"), "short\n");
  assert.equal(await ok("cat /workspace/watched.txt"), "short\n");
  fs.writeFileSync(path.join(work, "watched.txt"), "a longer line than before\n");
  await sleep(100);
  assert.equal(await ok("cat /workspace/watched.txt"), "a longer line than before\n");
  // A name the guest found missing (a cached negative entry) appears.
  assert.notEqual((await sh("cat /workspace/appears.txt")).exitCode, 0);
  fs.writeFileSync(path.join(work, "appears.txt"), "here\n");
  await sleep(100);
  assert.equal(await ok("cat /workspace/appears.txt"), "here\n");
  // And one the host deletes goes away.
  fs.rmSync(path.join(work, "appears.txt"));
  await sleep(100);
  assert.notEqual((await sh("cat /workspace/appears.txt")).exitCode, 0);
});

test("a VM without a NIC serves its mounts and streams output", { skip }, async () => {
  const mem = new MemoryProvider();
  const plain = await VM.create({ sandbox: { netEnabled: false }, vfs: { mounts: { "/w": mem } } });
  try {
    const r = await plain.exec(["/bin/sh", "-c", "ls /sys/class/net; head -c 3000000 /dev/zero | tr '\\0' y > /w/big; wc -c < /w/big"]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, "lo\n3000000\n");
    const big = await mem.readFile("/big");
    assert.equal(big.length, 3000000);
    assert.ok(big.every((b) => b === 0x79));
    const out = await plain.exec(["/bin/sh", "-c", "head -c 5000000 /dev/zero"]);
    assert.equal(out.stdoutBuffer.length, 5000000);
  } finally {
    await plain.close();
  }
});
