// vm.fs against a real VM, beside a long-running exec.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import { Readable } from "node:stream";
import { VM } from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const skip = vmSkip();
let vm;
let server;

before(async () => {
  if (skip) return;
  vm = await VM.create();
  await vm.start();
  // A long-running exec for the whole file: fs calls must not wait for it.
  server = vm.exec(["sleep", "100000"]);
});

after(async () => {
  if (vm) await vm.close();
  if (server) await server.catch(() => {});
});

test("writeFile/readFile round trip for every input kind", { skip }, async () => {
  await vm.fs.writeFile("/tmp/a.txt", "héllo\n");
  assert.equal(await vm.fs.readFile("/tmp/a.txt", { encoding: "utf-8" }), "héllo\n");
  await vm.fs.writeFile("/tmp/b.bin", Buffer.from([0, 1, 255]));
  assert.deepEqual([...(await vm.fs.readFile("/tmp/b.bin"))], [0, 1, 255]);
  await vm.fs.writeFile("/tmp/c.bin", new Uint8Array([9, 8, 7]));
  assert.deepEqual([...(await vm.fs.readFile("/tmp/c.bin"))], [9, 8, 7]);
  await vm.fs.writeFile("/tmp/d.txt", Readable.from([Buffer.from("a"), Buffer.from("b")]));
  assert.equal(await vm.fs.readFile("/tmp/d.txt", { encoding: "utf8" }), "ab");
  async function* gen() {
    yield Buffer.from("x");
    yield new Uint8Array([121]);
  }
  await vm.fs.writeFile("/tmp/e.txt", gen());
  assert.equal(await vm.fs.readFile("/tmp/e.txt", { encoding: "utf8" }), "xy");
  // writeFile truncates.
  await vm.fs.writeFile("/tmp/a.txt", "1");
  assert.equal(await vm.fs.readFile("a.txt", { encoding: "utf8", cwd: "/tmp" }), "1");
  await vm.fs.writeFile("/tmp/empty", "");
  assert.equal((await vm.fs.readFile("/tmp/empty")).length, 0);
  await vm.fs.writeFile("/tmp/latin", "é", { encoding: "latin1" });
  assert.deepEqual([...(await vm.fs.readFile("/tmp/latin"))], [0xe9]);
});

test("stat, access, mkdir, listDir, rename, deleteFile", { skip }, async () => {
  await vm.fs.mkdir("/tmp/t/deep/er", { recursive: true });
  await vm.fs.mkdir("/tmp/t/m", { mode: 0o700 });
  await vm.fs.writeFile("/tmp/t/f", "12345");
  const st = await vm.fs.stat("/tmp/t/f");
  assert.ok(st instanceof fs.Stats);
  assert.equal(st.isFile(), true);
  assert.equal(st.size, 5);
  assert.ok(Math.abs(st.mtimeMs - Date.now()) < 10 * 60 * 1000, "mtime is recent");
  const d = await vm.fs.stat("/tmp/t/m");
  assert.equal(d.isDirectory(), true);
  assert.equal(d.mode & 0o777, 0o700);
  assert.deepEqual(await vm.fs.listDir("/tmp/t"), ["deep", "f", "m"]);
  await vm.fs.access("/tmp/t/f");
  await vm.fs.access("/bin/sh", { mode: fs.constants.X_OK });
  await assert.rejects(vm.fs.access("/tmp/t/nope"), (e) => e.code === "ENOENT" && /failed to access guest file '\/tmp\/t\/nope'/.test(e.message));
  await assert.rejects(vm.fs.access("/tmp/t/f", { mode: 64 }), /mode can only contain/);
  await vm.fs.rename("/tmp/t/f", "/tmp/t/g");
  assert.deepEqual(await vm.fs.listDir("/tmp/t"), ["deep", "g", "m"]);
  await assert.rejects(vm.fs.listDir("/tmp/t/g"), (e) => e.code === "ENOTDIR");
  await assert.rejects(vm.fs.readFile("/tmp/t/missing"), (e) => e.code === "ENOENT" && /failed to read guest file/.test(e.message));
  await assert.rejects(vm.fs.stat("/nope"), (e) => e.code === "ENOENT");
  await assert.rejects(vm.fs.deleteFile("/tmp/t"), (e) => e.code === "EISDIR");
  await assert.rejects(vm.fs.deleteFile("/tmp/zz", { recursive: true }), (e) => e.code === "ENOENT");
  await vm.fs.deleteFile("/tmp/zz", { recursive: true, force: true });
  await assert.rejects(vm.fs.deleteFile("/", { recursive: true, force: true }), /CannotDeleteRootDirectory/);
  await assert.rejects(vm.fs.deleteFile("/tmp/..", { recursive: true }), /CannotDeleteRootDirectory/);
  await vm.fs.deleteFile("/tmp/t", { recursive: true });
  await assert.rejects(vm.fs.stat("/tmp/t"), (e) => e.code === "ENOENT");
  await assert.rejects(vm.fs.readFile(""), /filePath must be a non-empty string/);
  await assert.rejects(vm.fs.readFile("rel"), /absolute options.cwd/);
  await assert.rejects(vm.fs.readFile("/a\0b"), /null bytes/);
  // Works on the rootfs too, not only tmpfs.
  assert.match(await vm.fs.readFile("/etc/os-release", { encoding: "utf8" }), /Debian/);
});

test("100 MiB written and read back by streams, while an exec runs", { skip }, async () => {
  const size = 100 * 1024 * 1024;
  const block = crypto.randomBytes(1024 * 1024);
  const want = crypto.createHash("sha256");
  async function* source() {
    for (let i = 0; i < size / block.length; i++) {
      want.update(block);
      yield block;
    }
  }
  await vm.fs.writeFile("/var/tmp/big", source());
  const stream = await vm.fs.readFileStream("/var/tmp/big");
  const got = crypto.createHash("sha256");
  let n = 0;
  for await (const chunk of stream) {
    got.update(chunk);
    n += chunk.length;
  }
  assert.equal(n, size);
  assert.equal(got.digest("hex"), want.digest("hex"));
  const inGuest = await vm.exec("sha256sum /var/tmp/big && rm /var/tmp/big");
  assert.equal(inGuest.exitCode, 0);
  assert.equal((await vm.exec("pgrep -x sleep")).exitCode, 0, "the long-running exec is still running");
  await assert.rejects(vm.fs.readFileStream("/var/tmp/nope"), (e) => e.code === "ENOENT");
});

test("errors carry the guest's errno number and name, never parsed words", { skip }, async () => {
  // Errnos the English message table of old did not know (ELOOP,
  // ENAMETOOLONG) come out as well as the common ones, with a German locale
  // in the guest: the guest sends numbers, so neither words nor locale matter.
  const r = await vm.exec(
    "mkdir -p /tmp/e/full/x /tmp/e/empty && ln -s loop /tmp/e/loop && echo x > /tmp/e/file",
    { env: { LC_ALL: "de_DE.UTF-8", LANG: "de_DE.UTF-8", LANGUAGE: "de" } },
  );
  assert.equal(r.exitCode, 0, r.stderr);
  const cases = [
    [() => vm.fs.stat("/tmp/e/loop"), "ELOOP", 40],
    [() => vm.fs.access(`/tmp/e/${"n".repeat(300)}`), "ENAMETOOLONG", 36],
    [() => vm.fs.rename("/tmp/e/empty", "/tmp/e/full"), "ENOTEMPTY", 39],
    [() => vm.fs.mkdir("/tmp/e/file"), "EEXIST", 17],
    [() => vm.fs.mkdir("/tmp/e/file/sub", { recursive: true }), "ENOTDIR", 20],
    [() => vm.fs.listDir("/tmp/e/nope"), "ENOENT", 2],
    [() => vm.fs.deleteFile("/tmp/e/full"), "EISDIR", 21],
    [() => vm.fs.access("/tmp/e/file", { mode: fs.constants.X_OK }), "EACCES", 13],
    // File contents go through file execs: their status is the errno.
    [() => vm.fs.readFile("/tmp/e"), "EISDIR", 21],
    [() => vm.fs.writeFile("/tmp/e/nope/f", "x"), "ENOENT", 2],
    [() => vm.fs.readFileStream("/tmp/e/full"), "EISDIR", 21],
  ];
  for (const [call, code, errno] of cases) {
    await assert.rejects(call(), (e) => {
      assert.equal(e.code, code, `${e.message}`);
      assert.equal(e.errno, -errno);
      assert.match(e.message, new RegExp(`^failed to .*'/tmp/e[^']*'.*: ${code}`));
      return true;
    });
  }
  await vm.fs.deleteFile("/tmp/e", { recursive: true });
  await assert.rejects(vm.fs.stat("/tmp/e"), (e) => e.code === "ENOENT" && e.errno === -2);
});

test("a recursive delete of a large tree and a large listing", { skip }, async () => {
  // More entries than one guest reply carries (pages of 1024, removes of
  // 4096 per request): the host follows up until done.
  const r = await vm.exec("mkdir -p /tmp/many/sub && cd /tmp/many && for i in $(seq 1 5000); do : > f$i; done && : > sub/x");
  assert.equal(r.exitCode, 0, r.stderr);
  const names = await vm.fs.listDir("/tmp/many");
  assert.equal(names.length, 5001);
  assert.equal(new Set(names).size, 5001);
  await vm.fs.deleteFile("/tmp/many", { recursive: true });
  await assert.rejects(vm.fs.stat("/tmp/many"), (e) => e.code === "ENOENT");
});
