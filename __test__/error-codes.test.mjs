// Every rejected call of the API carries `err.code` from one list: the
// core's ErrorCode enum, exported as `ErrorCodes` and mirrored by the
// `GondolinErrorCode` union in index.d.ts (filesystem calls carry Node's
// errno names instead, as upstream). The codes are real properties set
// where the error is made, never parsed back out of a message.
// One shared VM for the cases that need a booted guest.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  VM, ErrorCodes, ERRNO, MemoryProvider, RealFSProvider, ShadowProvider, createShadowPathPredicate,
  createHttpHooks, loadGuestAssets, ensureImage,
} from "@gondolin/native";
import { vmSkip, root } from "./helpers.mjs";

const skip = vmSkip();
const seen = new Set();

/** An assertion predicate: the error has `code` (recorded for the list check). */
function hasCode(code, message) {
  return (err) => {
    assert.equal(err.code, code, `${err.code}: ${err.message}`);
    assert.ok(Object.hasOwn(err, "code"), "code is an own property");
    assert.doesNotMatch(err.message, /^\[[a-z_]+\]/, "no code left in the message");
    if (message) assert.match(err.message, message);
    seen.add(code);
    return true;
  };
}

test("ErrorCodes is the GondolinErrorCode union of index.d.ts, one name per mistake", () => {
  const dts = fs.readFileSync(path.join(root, "index.d.ts"), "utf8");
  const start = dts.indexOf("export type GondolinErrorCode =");
  const union = dts.slice(start, dts.indexOf("\n\n", start));
  const listed = [...union.matchAll(/^\s*\| "([a-z_]+)"/gm)].map((m) => m[1]);
  assert.deepEqual([...ErrorCodes], listed);
  assert.ok(Object.isFrozen(ErrorCodes));
  assert.ok(ErrorCodes.includes("invalid_option") && !ErrorCodes.includes("invalid_argument"));
});

test("options: refused at construction, in Rust, with invalid_option naming the option and the fix", async () => {
  assert.throws(() => new VM({ memory: "32M" }), hasCode("invalid_option", /^memory must be at least 128M.*\(got "32M"\)$/));
  assert.throws(() => new VM({ sandbox: { memory: 512 } }), hasCode("invalid_option", /memory must be a size like "512M"/));
  assert.throws(() => new VM({ memroy: "1G" }), hasCode("invalid_option", /^unknown option memroy; did you mean memory\?$/));
  assert.throws(() => new VM({ cpus: 1.5 }), hasCode("invalid_option", /cpus must be an integer between 1 and 255 \(got 1\.5\)/));
  assert.throws(() => new VM({ tmpfs: { "/dev/shm": {} } }), hasCode("invalid_option", /reserved path: \/dev\/shm/));
  assert.throws(() => new VM({ sandbox: { debug: "net" } }), hasCode("invalid_option", /sandbox\.debug must be a boolean or an array/));
  await assert.rejects(VM.create({ memory: "2T" }), hasCode("invalid_option", /at most 1T/));
  assert.throws(() => createHttpHooks({ alowedHosts: [] }), hasCode("invalid_option", /did you mean createHttpHooks\.allowedHosts\?/));
  assert.throws(() => loadGuestAssets("/nonexistent/gondolin-assets"), hasCode("invalid_option", /does not exist/));
  // The check reads data only: a provider's own getters never run.
  const provider = new MemoryProvider();
  Object.defineProperty(provider, "trap", { enumerable: true, get: () => assert.fail("the options check read a provider") });
  const vm = new VM({ vfs: { mounts: { "/data": provider } }, sandbox: { netEnabled: false } });
  await vm.close();
  assert.throws(
    () => new VM({ vfs: { fuseMount: "/data", mounts: { "/data/x": provider } } }),
    hasCode("invalid_option", /vfs\.mounts key \/data\/x collides with vfs\.fuseMount \/data/),
  );
});

test("arguments of the JS facade and the addon: invalid_option naming the option (and the choices)", async () => {
  const bad = (message) => hasCode("invalid_option", message);
  // Checked in JS (values that cannot cross to Rust as they are).
  assert.throws(() => createHttpHooks({ allowedHosts: 5 }), bad(/^allowedHosts must be an array of host patterns$/));
  assert.throws(() => createHttpHooks({ onRequest: "x" }), bad(/createHttpHooks: onRequest must be a function/));
  const p = new MemoryProvider();
  assert.throws(() => new ShadowProvider(p, {}), bad(/^ShadowProvider requires options\.shouldShadow callback$/));
  // A string enum of the addon (WriteMode): refused before napi's nameless InvalidArg.
  const shouldShadow = createShadowPathPredicate(["/x"]);
  assert.throws(() => new ShadowProvider(p, { shouldShadow, writeMode: "bogus" }), bad(/^ShadowProvider writeMode must be "deny" or "tmpfs" \(got "bogus"\)$/));
  assert.throws(() => new ShadowProvider(p, { shouldShadow, denyWriteErrno: "EACCES" }), bad(/denyWriteErrno must be an integer/));
  assert.throws(() => new RealFSProvider(123), bad(/^RealFSProvider rootPath must be a non-empty string$/));
  assert.throws(() => new VM({ env: { A: 1 } }), bad(/^env\.A must be a string$/));
  const vm = await VM.create({ autoStart: false, sandbox: { netEnabled: false } });
  assert.throws(() => vm.exec("true", { env: ["A=1", 2] }), bad(/^exec options\.env entries must be strings$/));
  await vm.close();
  // Checked in Rust, built as coded JS errors on the JS thread.
  assert.throws(() => new RealFSProvider("/nonexistent/gondolin-test"), bad(/^RealFSProvider rootPath "\/nonexistent\/gondolin-test": /));
  assert.throws(() => createHttpHooks({ secretPlaceholderMode: "shared", secrets: { "A=B": { hosts: ["a.test"], value: "v" } } }), bad(/invalid environment variable name/));
  const { secretManager } = createHttpHooks({ secrets: { T: { hosts: ["a.test"], value: "v" } } });
  assert.throws(() => secretManager.deleteSecret("NOPE"), bad());
  assert.throws(() => secretManager.deleteSecret(5), bad(/^deleteSecret: name must be a string$/));
  assert.throws(() => secretManager.updateSecret("T", null), bad(/^updateSecret: options must be an object$/));
});

test("a secret headed for another host is refused with secret_refused", async () => {
  const { httpHooks, env } = createHttpHooks({ allowedHosts: ["*"], secrets: { T: { hosts: ["a.test"], value: "s3cret" } } });
  const req = new Request("https://b.test/", { headers: { authorization: `Bearer ${env.T}` } });
  await assert.rejects(httpHooks.onRequest(req), hasCode("secret_refused", /secret T not allowed for host: b\.test/));
});

test("lifecycle refusals without a boot: vm_not_started, vm_closed; exec misuse", async () => {
  const vm = await VM.create({ autoStart: false, sandbox: { netEnabled: false } });
  const proc = vm.exec("true");
  // Misuse of an exec throws at once, coded too.
  assert.throws(() => proc.write("x"), hasCode("stdin_disabled", /stdin was not enabled/));
  assert.throws(() => proc.kill("SIGNOPE"), hasCode("invalid_option", /invalid signal/));
  assert.throws(() => proc.output(), hasCode("invalid_state", /not piped/));
  assert.throws(() => vm.exec("ls", { cwd: "tmp" }), hasCode("invalid_option", /cwd must be an absolute path/));
  await assert.rejects(proc, hasCode("vm_not_started", /call vm\.start\(\) first/));
  await vm.close();
  await assert.rejects(vm.exec("true"), hasCode("vm_closed"));
  await assert.rejects(vm.start(), hasCode("vm_closed"));
});

test("boot failures carry the core's code: qemu_not_found, invalid_image, vm_boot_failed", { skip }, async () => {
  const noQemu = await VM.create({ sandbox: { qemuPath: "/nonexistent/qemu-system-x86_64", netEnabled: false } });
  await assert.rejects(noQemu.start(), hasCode("qemu_not_found", /apt install qemu-system-x86/));
  await assert.rejects(noQemu.exec("true"), hasCode("vm_closed"), "a VM whose boot failed is closed");

  // Image copies beside the image store (hard links: same filesystem), one
  // without its kernel file, one whose kernel file is not a kernel.
  const image = await ensureImage();
  const kernel = path.basename(image.kernel);
  const copy = () => {
    const dir = fs.mkdtempSync(path.join(path.dirname(path.dirname(image.dir)), ".test-errcodes-"));
    for (const f of fs.readdirSync(image.dir)) if (f !== kernel) fs.linkSync(path.join(image.dir, f), path.join(dir, f));
    return dir;
  };
  const missing = copy();
  const garbage = copy();
  try {
    await assert.rejects(VM.create({ sandbox: { imagePath: missing } }), hasCode("invalid_image", /assets\.kernel: .* is missing/));
    fs.writeFileSync(path.join(garbage, kernel), "not a kernel");
    const vm = await VM.create({ sandbox: { imagePath: garbage, netEnabled: false }, rootfs: { mode: "readonly" } });
    await assert.rejects(vm.start(), hasCode("vm_boot_failed", /QEMU exited/));
  } finally {
    for (const d of [missing, garbage]) fs.rmSync(d, { recursive: true, force: true });
  }
});

let vm;
after(() => vm && vm.close());

test("a running VM: exec_aborted, errno codes on vm.fs, then vm_closed", { skip }, async () => {
  vm = await VM.create({ memory: "256M", vfs: { mounts: { "/data": new MemoryProvider() } }, sandbox: { netEnabled: false } });
  const ac = new AbortController();
  const proc = vm.exec("echo started; sleep 30", { signal: ac.signal, stdout: "pipe" });
  let out = "";
  proc.stdout.on("data", (d) => (out += d));
  while (!out.includes("started")) await new Promise((r) => setTimeout(r, 20));
  ac.abort();
  await assert.rejects(proc, hasCode("exec_aborted", /^exec aborted$/));

  // Filesystem calls use Node's errno names, guest paths and VFS paths alike.
  for (const p of ["/tmp/no-such-file", "/data/no-such-file"]) {
    await assert.rejects(vm.fs.readFile(p), (e) => e.code === "ENOENT" && ERRNO.ENOENT !== undefined);
  }

  await vm.close();
  await assert.rejects(vm.exec("true"), hasCode("vm_closed", /closed/));
});

test("every code the walk met is in ErrorCodes", () => {
  for (const code of seen) assert.ok(ErrorCodes.includes(code), code);
  assert.ok(seen.size >= 5, [...seen].join(","));
});
