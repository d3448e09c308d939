// Session registry, `gondolin list` and `gondolin attach` against a VM owned
// by another process.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { cli, root, vmSkip } from "./helpers.mjs";

const skip = vmSkip();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-sessions-"));
process.env.GONDOLIN_SESSIONS_DIR = dir;
const { listSessions, findSession, gcSessions, connectToSession } = await import("@gondolin/native");
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
  assert.equal(fs.statSync(mine.socketPath).mode & 0o777, 0o600);
  const meta = fs.readFileSync(path.join(dir, `${vmId}.json`), "utf8");
  assert.ok(meta.endsWith("}\n") && meta.includes('\n  "pid": '), "pretty JSON + newline");

  const list = run(["list"]);
  assert.equal(list.status, 0);
  assert.match(list.stdout, new RegExp(`${vmId}\\s+${owner.pid}\\s+\\S+\\s+yes\\s+test-owner`));

  const a = run(["attach", vmId.slice(0, 8), "--", "sh", "-c", "echo hi; echo err >&2; exit 4"]);
  assert.equal(a.status, 4, a.stderr);
  assert.equal(a.stdout, "hi\n");
  assert.match(a.stderr, /err/);

  const piped = spawnSync(process.execPath, [cli, "attach", vmId.slice(0, 8)], {
    input: "echo piped $((2+3)); exit 6\n",
    encoding: "utf8",
    timeout: 120000,
    env: process.env,
  });
  assert.equal(piped.status, 6, piped.stderr);
  assert.equal(piped.stdout, "piped 5\n");

  const none = run(["attach", "ffffffff-nope", "--", "true"]);
  assert.equal(none.status, 1);
  assert.match(none.stderr, /session not found or not running: ffffffff-nope/);
});

test("bash/list/attach usage errors; list with no sessions", async () => {
  const help = run(["--help"]);
  assert.match(help.stdout, /^ {2}bash .*\n {2}list .*\n {2}attach ID/m);
  for (const [args, re] of [
    [["bash", "--bogus"], /Unknown argument: --bogus[\s\S]*Usage: gondolin bash/],
    [["bash", "--cpus"], /--cpus requires an argument/],
    [["list", "extra"], /Unknown argument: extra[\s\S]*Usage: gondolin list/],
    [["attach"], /attach requires a session id[\s\S]*Usage: gondolin attach/],
    [["attach", "--all", "x"], /Unknown argument: --all/],
    [["attach", "x", "y"], /Unknown argument: y/],
    [["attach", "x", "--"], /missing command after --/],
  ]) {
    const r = run(args);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
  for (const c of ["bash", "list", "attach"]) assert.equal(run([c, "--help"]).status, 0);
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-empty-"));
  try {
    const r = spawnSync(process.execPath, [cli, "list"], { encoding: "utf8", env: { ...process.env, GONDOLIN_SESSIONS_DIR: empty } });
    assert.equal(r.status, 0);
    assert.equal(r.stdout, "No sessions.\n");
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

test("ambiguous prefixes and garbage collection", { skip }, async () => {
  const fake = (id, pid) =>
    fs.writeFileSync(path.join(dir, `${id}.json`), JSON.stringify({ id, pid, socketPath: path.join(dir, `${id}.sock`), createdAt: new Date().toISOString() }));
  fake("abcd0000-dead-4000-8000-000000000001", 999999);
  fake("abcd0000-dead-4000-8000-000000000002", 999998);
  await assert.rejects(
    findSession("abcd0000"),
    /ambiguous session prefix 'abcd0000' matches 2 sessions:\n {2}abcd0000-dead-4000-8000-00000000000[12]\n {2}abcd0000-dead/,
  );
  const amb = run(["attach", "abcd0000", "--", "true"]); // gc runs first: both dead entries go
  assert.equal(amb.status, 1);
  assert.match(amb.stderr, /session not found or not running: abcd0000/);
  fake("abcd0000-dead-4000-8000-000000000001", 999999);
  fs.writeFileSync(path.join(dir, "broken.json"), "{not json");
  fs.writeFileSync(path.join(dir, "orphan.sock"), "");
  assert.equal(await gcSessions(), 3); // the re-fabricated entry, broken.json, orphan.sock
  assert.equal(fs.existsSync(path.join(dir, "broken.json")), false);
  assert.equal(fs.existsSync(path.join(dir, "orphan.sock")), false);
  assert.equal(await findSession("abcd0000"), null);
  assert.ok(await findSession(vmId), "the live session survives gc");
});

/** A raw protocol client: collects messages, waits for one matching a predicate. */
function client() {
  const msgs = [];
  let closed = false;
  const waiters = new Set();
  const check = () => {
    for (const w of waiters) {
      const m = msgs.find(w.pred);
      if (m || (closed && w.onClose)) {
        waiters.delete(w);
        clearTimeout(w.timer);
        m ? w.resolve(m) : w.reject(new Error(`connection closed; got ${JSON.stringify(msgs)}`));
      }
    }
  };
  const conn = connectToSession(path.join(dir, `${vmId}.sock`), {
    onMessage: (m) => {
      msgs.push(m);
      check();
    },
    onClose: () => {
      closed = true;
      check();
    },
  });
  conn.msgs = msgs;
  conn.closedPromise = () => new Promise((r) => (closed ? r() : conn.socket.once("close", r)));
  conn.wait = (pred, ms = 30000) =>
    new Promise((resolve, reject) => {
      const w = { pred, resolve, reject, onClose: true };
      w.timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`timed out; got ${JSON.stringify(msgs)}`));
      }, ms);
      waiters.add(w);
      check();
    });
  return conn;
}
const out = (c, id) =>
  Buffer.concat(c.msgs.filter((m) => m.type === "output" && m.id === id && m.stream === "stdout").map((m) => Buffer.from(m.data, "base64"))).toString();

test("attach protocol: validation, stdin, kill on disconnect, line bound", { skip }, async () => {
  const c = client();
  assert.equal((await c.wait((m) => m.type === "status")).vmId, vmId);
  c.socket.write("{not json\n");
  await c.wait((m) => m.type === "error" && m.code === "invalid_request" && /JSON/.test(m.message));
  c.send({ type: "exec", id: 1, argv: [] });
  await c.wait((m) => m.type === "error" && m.id === 1 && /argv/.test(m.message));
  c.send({ type: "stdin", id: 99, data: "aGk=" });
  await c.wait((m) => m.type === "error" && m.id === 99 && m.code === "unknown_id");
  c.send({ type: "bogus", id: 2 });
  await c.wait((m) => m.type === "error" && m.id === 2 && m.code === "unknown_type");

  // stdin round trip, then an exit after all the output.
  c.send({ type: "exec", id: 3, argv: ["sh", "-c", "cat; seq 1 20000 | wc -l; exit 7"], stdin: true });
  c.send({ type: "stdin", id: 3, data: Buffer.from("echoed\n").toString("base64"), eof: true });
  const exit = await c.wait((m) => m.type === "exit" && m.id === 3);
  assert.equal(exit.exitCode, 7);
  assert.equal(out(c, 3), "echoed\n20000\n");

  // A client's execs die with its connection.
  c.send({ type: "exec", id: 4, argv: ["sh", "-c", "echo $$; exec sleep 1000"] });
  await c.wait(() => /^\d+\n$/.test(out(c, 4)));
  const pid = out(c, 4).trim();
  c.send({ type: "exec", id: 5, argv: ["sh", "-c", `kill -0 ${pid}`] });
  assert.equal((await c.wait((m) => m.type === "exit" && m.id === 5)).exitCode, 0, "the probe sees a live sleep");
  c.close();
  await c.closedPromise();
  const c2 = client();
  const deadline = Date.now() + 20000;
  let alive = true;
  for (let id = 1; alive && Date.now() < deadline; id++) {
    c2.send({ type: "exec", id, argv: ["sh", "-c", `kill -0 ${pid} 2>/dev/null`] });
    alive = (await c2.wait((m) => m.type === "exit" && m.id === id)).exitCode === 0;
  }
  assert.equal(alive, false, "the disconnected client's sleep was killed");

  // An oversized line gets an error, then the connection is closed.
  c2.socket.write(`{"type":"stdin","id":1,"data":"${"A".repeat(1.5 * 1024 * 1024)}`);
  await c2.wait((m) => m.type === "error" && m.code === "payload_too_large");
  await c2.closedPromise();
  // The server is still fine.
  const c3 = client();
  c3.send({ type: "exec", id: 1, argv: ["echo", "still here"] });
  assert.equal((await c3.wait((m) => m.type === "exit")).exitCode, 0);
  assert.equal(out(c3, 1), "still here\n");
  c3.close();
});

test("closing the owner's VM removes its entry and socket", { skip }, async () => {
  owner.stdin.write("close\n");
  await new Promise((r) => owner.once("exit", r));
  assert.equal(fs.existsSync(path.join(dir, `${vmId}.json`)), false);
  assert.equal(fs.existsSync(path.join(dir, `${vmId}.sock`)), false);
  assert.equal(await findSession(vmId), null);
});
