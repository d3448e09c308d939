// VFS parity with upstream and the seeds (issue 13): ReadonlyProvider(path),
// vfs.hooks.onRead/onWrite, RealFSProvider.access, in-root absolute
// symlinks, the POSIX link behaviours kept on purpose, and a JS open that
// answers after its deadline. One VM for the whole file.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { VM, MemoryProvider, RealFSProvider, ReadonlyProvider } from "@gondolin/native";
import { vmSkip, sleep } from "./helpers.mjs";

const skip = vmSkip();
// The request deadline, short so the late-open test is quick; every other
// request here takes milliseconds.
const TIMEOUT_MS = 4000;
let vm;
let base, roDir, realDir, outside;
const slow = { opened: 0, closed: 0, answered: 0 };
const contentCalls = [];

/** A JS provider whose open of /slow answers after the deadline has passed. */
function slowOpenProvider() {
  const st = (dir) => Object.assign(Object.create(fs.Stats.prototype), {
    mode: dir ? 0o040755 : 0o100644, nlink: 1, uid: 0, gid: 0, size: 4, ino: 0,
    atimeMs: 0, mtimeMs: 0, ctimeMs: 0,
  });
  return {
    async stat(p) {
      if (p === "/") return st(true);
      if (p === "/slow") return st(false);
      throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
    },
    async readdir() { return ["slow"]; },
    async open() {
      await sleep(TIMEOUT_MS + 1500);
      slow.opened++;
      return {
        async read(buf, off, len, pos) {
          const n = Buffer.from("slow").copy(buf, off, pos, Math.min(4, pos + len));
          return { bytesRead: n, buffer: buf };
        },
        async stat() { return st(false); },
        async close() { slow.closed++; },
      };
    },
  };
}

async function sh(script) {
  return vm.exec(["/bin/sh", "-c", script]);
}

async function ok(script) {
  const r = await sh(script);
  assert.equal(r.exitCode, 0, `${script}\n${r.stderr}`);
  return r.stdout;
}

before(async () => {
  if (skip) return;
  process.env.GONDOLIN_VFS_TIMEOUT_MS = String(TIMEOUT_MS);
  base = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-vfs-parity-")));
  [roDir, realDir, outside] = ["ro", "real", "outside"].map((d) => path.join(base, d));
  for (const d of [roDir, realDir, outside]) fs.mkdirSync(d);
  fs.writeFileSync(path.join(roDir, "seed.txt"), "read only\n");
  fs.writeFileSync(path.join(realDir, "real.txt"), "real\n");
  fs.writeFileSync(path.join(outside, "secret"), "secret\n");
  vm = await VM.create({
    vfs: {
      mounts: {
        "/ro": new ReadonlyProvider(roDir),
        "/real": new RealFSProvider(realDir),
        "/mem": new MemoryProvider(),
        "/js": slowOpenProvider(),
      },
      // The seeds' spelling: (path, data) => data, here with replacements.
      hooks: {
        onRead: (p, data, info) => {
          contentCalls.push(`read ${p} ${info.offset} ${data.length}`);
          return p.startsWith("/mem/upper") ? Buffer.from(data.toString().toUpperCase()) : data;
        },
        onWrite: (p, data, info) => {
          contentCalls.push(`write ${p} ${info.offset} ${data.length}`);
          return p.startsWith("/mem/redact") ? data.toString().replaceAll("secret", "******") : undefined;
        },
      },
    },
  });
  await vm.start();
});

after(async () => {
  await vm?.close();
  delete process.env.GONDOLIN_VFS_TIMEOUT_MS;
  if (base) fs.rmSync(base, { recursive: true, force: true });
});

test("new ReadonlyProvider(path) serves that host directory read-only", { skip }, async () => {
  assert.equal(await ok("cat /ro/seed.txt"), "read only\n");
  const r = await sh("echo x > /ro/new.txt");
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stderr, /Read-only file system/);
  assert.ok(!fs.existsSync(path.join(roDir, "new.txt")));
  const p = new ReadonlyProvider(roDir);
  assert.ok(p.backend instanceof RealFSProvider);
  assert.equal(p.readonly, true);
  assert.equal(await p.readFile("/seed.txt", "utf8"), "read only\n");
  await assert.rejects(p.writeFile("/x", "y"), { code: "EROFS" });
});

test("vfs.hooks.onRead / onWrite see each chunk with its offset and replace it", { skip }, async () => {
  // Five write(2)s of 64 KiB arrive as (at least) five requests.
  await ok("printf 'my secret is secret' > /mem/redact.txt; dd if=/dev/zero of=/mem/big.bin bs=64k count=5 2>/dev/null; echo hello > /mem/upper.txt");
  assert.equal(await ok("cat /mem/redact.txt"), "my ****** is ******");
  assert.equal(await ok("cat /mem/upper.txt"), "HELLO\n");
  const bigWrites = contentCalls.filter((c) => c.startsWith("write /mem/big.bin "));
  assert.ok(bigWrites.length >= 2, contentCalls.join("\n"));
  assert.equal(bigWrites.reduce((n, c) => n + Number(c.split(" ")[3]), 0), 327680);
  assert.ok(bigWrites.some((c) => c.split(" ")[2] !== "0"), "a later chunk has a non-zero offset");
  // The stored bytes are the replaced ones; onRead changes only what is read.
  const again = await ok("cat /mem/upper.txt");
  assert.equal(again, "HELLO\n", "a reopen asks the hook again");
  assert.ok(contentCalls.filter((c) => c.startsWith("read /mem/upper.txt")).length >= 2, contentCalls.join("\n"));
});

test("unknown vfs.hooks keys are refused with the nearest one", { skip }, async () => {
  await assert.rejects(
    VM.create({ autoStart: false, vfs: { hooks: { onread: () => {} } } }),
    (e) => e.code === "invalid_option" && /unknown option vfs\.hooks\.onread; did you mean vfs\.hooks\.onRead\?/.test(e.message),
  );
  await assert.rejects(
    VM.create({ autoStart: false, vfs: { hooks: { onWrite: "yes" } } }),
    /vfs\.hooks\.onWrite must be a function/,
  );
});

test("RealFSProvider.access / accessSync check like fs.access", { skip }, async () => {
  const dir = path.join(base, "access");
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "plain"), "x", { mode: 0o644 });
  fs.writeFileSync(path.join(dir, "exec"), "x", { mode: 0o755 });
  fs.writeFileSync(path.join(dir, "none"), "x", { mode: 0o000 });
  const p = new RealFSProvider(dir);
  const { F_OK, R_OK, W_OK, X_OK } = fs.constants;
  for (const name of ["plain", "exec", "none", "missing"]) {
    for (const mode of [undefined, F_OK, R_OK, W_OK, X_OK, R_OK | W_OK]) {
      const host = path.join(dir, name);
      const want = await fs.promises.access(host, mode).then(() => "ok", (e) => e.code);
      const got = await p.access(`/${name}`, mode).then(() => "ok", (e) => e.code);
      assert.equal(got, want, `access ${name} ${mode}`);
      let sync = "ok";
      try {
        p.accessSync(`/${name}`, mode);
      } catch (e) {
        sync = e.code;
      }
      assert.equal(sync, want, `accessSync ${name} ${mode}`);
    }
  }
});

test("RealFS follows an absolute symlink inside its root, and nothing that leaves it", { skip }, async () => {
  const sym = (target, name) => fs.symlinkSync(target, path.join(realDir, name));
  sym(path.join(realDir, "real.txt"), "link");
  sym(path.join(realDir, "link"), "chain");
  sym("/etc/passwd", "etc");
  sym(path.join(realDir, "..", "outside", "secret"), "climb");
  sym("climb", "chain-out");
  const p = new RealFSProvider(realDir);
  assert.equal(await p.readFile("/link", "utf8"), "real\n");
  assert.equal(await p.readFile("/chain", "utf8"), "real\n");
  assert.ok((await p.stat("/link")).isFile());
  assert.ok((await p.lstat("/link")).isSymbolicLink());
  for (const name of ["/etc", "/climb", "/chain-out"]) {
    await assert.rejects(p.readFile(name), { code: "ENOENT" }, name);
    await assert.rejects(p.writeFile(name, "x"), { code: "ENOENT" }, name);
  }
  assert.equal(fs.readFileSync(path.join(outside, "secret"), "utf8"), "secret\n");
  // In the guest, its kernel follows the links in its own namespace
  // (/real/etc is the guest's own /etc/passwd); relative escapes still
  // end at the root of the mount.
  const r = await sh("cat /real/climb /real/chain-out 2>&1; true");
  assert.match(r.stdout, /No such file or directory/);
  assert.doesNotMatch(r.stdout, /secret/);
});

test("kept POSIX behaviours: a dangling in-root link opened with 'w' creates its target; link() links the link", { skip }, async () => {
  fs.symlinkSync("made.txt", path.join(realDir, "dangling"));
  fs.symlinkSync(path.join(realDir, "made-abs.txt"), path.join(realDir, "dangling-abs"));
  const p = new RealFSProvider(realDir);
  await p.writeFile("/dangling-abs", "abs");
  assert.equal(fs.readFileSync(path.join(realDir, "made-abs.txt"), "utf8"), "abs");
  await p.link("/dangling-abs", "/hard-abs");
  assert.ok(fs.lstatSync(path.join(realDir, "hard-abs")).isSymbolicLink());
  // From the guest: the same through its own syscalls.
  await ok("echo made > /real/dangling && ln /real/dangling /real/hard");
  assert.equal(fs.readFileSync(path.join(realDir, "made.txt"), "utf8"), "made\n");
  assert.equal(fs.readlinkSync(path.join(realDir, "hard")), "made.txt");
  assert.equal(fs.lstatSync(path.join(realDir, "dangling")).nlink, 2);
});

test("a JS open that answers after its deadline gets its handle closed", { skip }, async () => {
  const r = await sh("cat /js/slow");
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stderr, /Input\/output error/);
  for (let i = 0; i < 100 && slow.opened === 0; i++) await sleep(100);
  for (let i = 0; i < 50 && slow.closed < slow.opened; i++) await sleep(100);
  assert.ok(slow.opened >= 1);
  assert.equal(slow.closed, slow.opened, "every late handle was closed");
});
