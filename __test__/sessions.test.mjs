// Session registry, `gondolin list` and `gondolin attach` against a VM owned
// by another process.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { cli, root, vmSkip, sleep } from "./helpers.mjs";

const skip = vmSkip();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-sessions-"));
process.env.GONDOLIN_SESSIONS_DIR = dir;
const { listSessions, findSession, gcSessions } = await import("@gondolin/native");
let owner;
let vmId;

const OWNER = `
const { VM } = require(${JSON.stringify(path.join(root, "js", "index.cjs"))});
(async () => {
  const vm = await VM.create({ sessionLabel: "test-owner" });
  await vm.start();
  process.stdout.write("ready " + vm.id + "\\n");
  process.stdin.on("data", async () => { await vm.close(); process.stdout.write("closed\\n"); process.exit(0); });
})().catch((e) => { console.error(e); process.exit(1); });
`;

function run(args) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 120000, env: process.env });
}

before(async () => {
  if (skip) return;
  owner = spawn(process.execPath, ["-e", OWNER], { stdio: ["pipe", "pipe", "inherit"], env: process.env });
  vmId = await new Promise((resolve, reject) => {
    let out = "";
    owner.stdout.on("data", (d) => {
      out += d;
      const m = /ready (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    owner.on("exit", (c) => reject(new Error(`owner exited ${c}`)));
  });
});

after(async () => {
  if (owner && owner.exitCode === null) owner.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a VM started by another process is listed, found by prefix and attachable", { skip }, async () => {
  const all = await listSessions();
  const mine = all.find((s) => s.id === vmId);
  assert.ok(mine, "listed");
  assert.equal(mine.alive, true);
  assert.equal(mine.pid, owner.pid);
  assert.equal(mine.label, "test-owner");
  assert.equal((await findSession(vmId.slice(0, 8))).id, vmId);

  const list = run(["list"]);
  assert.equal(list.status, 0);
  assert.match(list.stdout, new RegExp(`${vmId}\\s+${owner.pid}\\s+\\S+\\s+yes\\s+test-owner`));

  const a = run(["attach", vmId.slice(0, 8), "--", "sh", "-c", "echo hi; echo err >&2; exit 4"]);
  assert.equal(a.status, 4, a.stderr);
  assert.equal(a.stdout, "hi\n");
  assert.match(a.stderr, /err/);

  const none = run(["attach", "ffffffff-nope", "--", "true"]);
  assert.equal(none.status, 1);
  assert.match(none.stderr, /no session matches 'ffffffff-nope'/);
});

test("ambiguous prefixes and garbage collection", { skip }, async () => {
  const fake = (id, pid) =>
    fs.writeFileSync(path.join(dir, `${id}.json`), JSON.stringify({ id, pid, socketPath: path.join(dir, `${id}.sock`), createdAt: new Date().toISOString() }));
  fake("abcd0000-dead-4000-8000-000000000001", 999999);
  fake("abcd0000-dead-4000-8000-000000000002", 999998);
  fs.writeFileSync(path.join(dir, "broken.json"), "{not json");
  await assert.rejects(findSession("abcd0000"), /ambiguous session prefix 'abcd0000' matches 2 sessions/);
  assert.equal(await gcSessions(), 3);
  assert.equal(await findSession("abcd0000"), null);
  assert.ok(await findSession(vmId), "the live session survives gc");
});

test("closing the owner's VM removes its entry and socket", { skip }, async () => {
  owner.stdin.write("close\n");
  await new Promise((r) => owner.once("exit", r));
  assert.equal(fs.existsSync(path.join(dir, `${vmId}.json`)), false);
  assert.equal(fs.existsSync(path.join(dir, `${vmId}.sock`)), false);
  assert.equal(await findSession(vmId), null);
});
