// CLI flags of upstream's `gondolin` (spec/cli.md): host and memory mounts,
// stdin to exec, bash -- CMD, attach --cwd/--env, list --all, --version, and
// a help text that names every flag the parser takes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { cli, root, vmSkip } from "./helpers.mjs";

const skip = vmSkip();

function run(args, opts = {}) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 300000, ...opts });
}

/** The CLI run asynchronously (for a VM this process owns: its session server needs our event loop). */
function runAsync(args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ["ignore", "pipe", "pipe"], ...opts });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

function tmpDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `gondolin-parity-${prefix}-`));
}

test("--version and -V print the package version", () => {
  const { version } = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
  for (const flag of ["--version", "-V"]) {
    const r = run([flag]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `gondolin ${version}\n`);
  }
});

test("every command's --help names each flag its parser accepts", () => {
  const flags = {
    "": ["--help", "--version", "-V"],
    exec: ["--memory", "--cpus", "--image", "--rootfs-mode", "--env", "--cwd", "--mount-hostfs", "--mount-memfs",
      "--allow-host", "--deny-all-egress", "--host-secret", "--dns", "--dns-trusted-server", "--disable-websockets",
      "--no-network", "--help"],
    bash: ["--mount-hostfs", "--mount-memfs", "--env", "--cwd", "--no-network", "-- CMD", "--help"],
    list: ["--all", "--help"],
    attach: ["--cwd", "--env", "-- CMD", "--help"],
    build: ["--definition", "--output", "--verbose", "--quiet", "--help"],
  };
  let allHelp = "";
  for (const [cmd, expected] of Object.entries(flags)) {
    const r = run(cmd ? [cmd, "--help"] : ["--help"]);
    assert.equal(r.status, 0, r.stderr);
    allHelp += r.stdout;
    for (const f of expected) assert.ok(r.stdout.includes(f), `'gondolin ${cmd} --help' mentions ${f}:\n${r.stdout}`);
  }
  // And no flag the parser knows is left out of every help text.
  const parsed = [...fs.readFileSync(cli, "utf8").matchAll(/(?:case |=== )"(--?[a-zA-Z][\w-]*)"/g)].map((m) => m[1]);
  assert.ok(parsed.length > 20, `found the parser's flags: ${parsed}`);
  for (const f of new Set(parsed)) assert.match(allHelp, new RegExp(`(^|[\\s,\\[])${f}\\b`, "m"), `${f} is documented`);
});

test("bad mount and attach arguments fail before any VM, naming the flag and the fix", () => {
  const dir = tmpDir("bad");
  const file = path.join(dir, "file.txt");
  fs.writeFileSync(file, "x");
  try {
    const cases = [
      [["exec", "--mount-hostfs", dir, "--", "true"], /--mount-hostfs expects HOST:GUEST\[:ro\] \(got .*\), e\.g\. \.\/project:\/workspace/],
      [["exec", "--mount-hostfs", `${dir}/nope:/w`, "--", "true"], /--mount-hostfs .*: host path .*nope does not exist/],
      [["exec", "--mount-hostfs", `${file}:/w`, "--", "true"], /host path .*file\.txt is not a directory \(mount its parent\)/],
      [["exec", "--mount-hostfs", `${dir}:`, "--", "true"], /missing the guest path after ':'/],
      [["exec", "--mount-hostfs", `${dir}:workspace`, "--", "true"], /guest path must be absolute \(got workspace; e\.g\. \/workspace\)/],
      [["bash", "--mount-memfs", "/w", "--mount-hostfs", `${dir}:/w/`], /\/w is already mounted by an earlier/],
      [["exec", "--mount-memfs", "/", "--", "true"], /--mount-memfs: cannot mount over the guest's root/],
      [["exec", "--mount-memfs", "--", "true"], /--mount-memfs requires an argument/],
      [["exec", "--rootfs-mode", "rw", "--", "true"], /--rootfs-mode must be readonly, memory or cow \(got rw\)/],
      [["bash", "--"], /missing command after --/],
      [["attach", "abc", "--env", "NOEQUALS"], /--env expects KEY=VALUE \(got NOEQUALS\)/],
      [["attach", "abc", "--cwd"], /--cwd requires an argument/],
      [["list", "--bogus"], /Unknown argument: --bogus/],
    ];
    for (const [args, re] of cases) {
      const r = run(args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(" "));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("list --all shows a stale entry that plain list removes", () => {
  const dir = tmpDir("list");
  const env = { ...process.env, GONDOLIN_SESSIONS_DIR: dir };
  const dead = spawnSync(process.execPath, ["-e", ""]).pid; // exited: its pid names no process
  const id = crypto.randomUUID();
  fs.writeFileSync(
    path.join(dir, `${id}.json`),
    JSON.stringify({ id, pid: dead, socketPath: path.join(dir, `${id}.sock`), createdAt: new Date().toISOString(), label: "stale-one" }),
  );
  try {
    const all = run(["list", "--all"], { env });
    assert.equal(all.status, 0, all.stderr);
    assert.match(all.stdout, new RegExp(`^${id}\\s+${dead}\\s+\\S+\\s+no\\s+stale-one$`, "m"));
    const live = run(["list"], { env });
    assert.equal(live.status, 0, live.stderr);
    assert.doesNotMatch(live.stdout, new RegExp(id));
    assert.deepEqual(fs.readdirSync(dir), [], "plain list removed the stale entry");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("exec --mount-hostfs HOST:/workspace reads and writes the host directory", { skip }, () => {
  const dir = tmpDir("rw");
  fs.writeFileSync(path.join(dir, "in.txt"), "from-host\n");
  try {
    const r = run(["exec", "--mount-hostfs", `${dir}:/workspace`, "--cwd", "/workspace", "--",
      "sh", "-c", "cat in.txt && echo from-guest > out.txt && pwd"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "from-host\n/workspace\n");
    assert.equal(fs.readFileSync(path.join(dir, "out.txt"), "utf8"), "from-guest\n");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("exec --mount-hostfs HOST:GUEST:ro reads but refuses writes", { skip }, () => {
  const dir = tmpDir("ro");
  fs.writeFileSync(path.join(dir, "in.txt"), "read-only\n");
  try {
    const r = run(["exec", "--mount-hostfs", `${dir}:/src:ro`, "--",
      "sh", "-c", "cat /src/in.txt; echo x > /src/new.txt; echo status=$?"]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "read-only\nstatus=2\n");
    assert.match(r.stderr, /Read-only file system/);
    assert.deepEqual(fs.readdirSync(dir), ["in.txt"], "nothing was written to the host");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("exec --mount-memfs PATH gives a writable in-memory directory", { skip }, () => {
  const r = run(["exec", "--mount-memfs", "/scratch", "--", "sh", "-c",
    "echo one > /scratch/a && mkdir /scratch/d && cat /scratch/a && ls /scratch && grep -c ' /scratch ' /proc/mounts"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "one\na\nd\n1\n");
});

test("exec forwards a piped stdin to the command and does not wait for an open one", { skip }, async () => {
  // 256 KiB through `cat` and back, byte for byte (several flow-control windows).
  const input = crypto.randomBytes(192 * 1024).toString("base64");
  const r = run(["exec", "--", "cat"], { input, maxBuffer: 4 * 1024 * 1024 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.length, input.length);
  assert.ok(r.stdout === input, "stdout equals stdin");
  const hi = run(["exec", "--", "cat"], { input: "hi\n" });
  assert.equal(hi.stdout, "hi\n");

  // A stdin pipe nobody closes: the command ignores it and exits; so does the CLI.
  const child = spawn(process.execPath, [cli, "exec", "--", "sh", "-c", "echo done; exit 7"], { stdio: ["pipe", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  const status = await new Promise((resolve) => child.on("exit", resolve));
  child.stdin.destroy();
  assert.equal(status, 7);
  assert.equal(out, "done\n");
});

test("bash -- CMD runs CMD on a pty with bash's options and exits with its status", { skip }, () => {
  const r = run(["bash", "--env", "X=from-bash", "--cwd", "/tmp", "--", "sh", "-c", 'tty; echo "X=$X"; pwd; exit 4'], { input: "" });
  assert.equal(r.status, 4, r.stderr);
  const lines = r.stdout.split(/\r?\n/);
  assert.match(lines[0], /^\/dev\/pts\/\d+$/);
  assert.deepEqual(lines.slice(1, 3), ["X=from-bash", "/tmp"]);
});

test("attach --cwd and --env reach the command in another process's VM", { skip }, async () => {
  const dir = tmpDir("attach");
  const env = { ...process.env, GONDOLIN_SESSIONS_DIR: dir };
  process.env.GONDOLIN_SESSIONS_DIR = dir;
  const { VM } = await import("@gondolin/native");
  const vm = await VM.create({ sessionLabel: "parity" });
  try {
    await vm.start();
    const r = await runAsync(["attach", vm.id.slice(0, 8), "--cwd", "/etc", "--env", "A=1", "--env", "B=two words",
      "--", "sh", "-c", 'pwd; echo "$A|$B"'], { env });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "/etc\n1|two words\n");
  } finally {
    await vm.close();
    delete process.env.GONDOLIN_SESSIONS_DIR;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a guest reaches a service on the host's loopback as localhost with --allow-host localhost (README)", { skip }, async () => {
  const server = http.createServer((req, res) => res.end(`host-service saw Host: ${req.headers.host}\n`));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  try {
    // The guest's own resolver maps localhost to the guest: send the
    // connection to the gateway, the host routes by the Host header.
    const r = await runAsync(["exec", "--allow-host", "localhost", "--", "sh", "-c",
      `curl -sS -m 30 --resolve localhost:${port}:192.0.2.1 http://localhost:${port}/; ` +
      `curl -sS -m 30 -H 'Host: 127.0.0.1:${port}' http://192.0.2.1:${port}/`]);
    assert.equal(r.status, 0, r.stderr);
    const [ok, refused] = r.stdout.split("\n");
    assert.equal(ok, `host-service saw Host: localhost:${port}`);
    assert.match(refused, /^403 Forbidden: blocked by policy: 127\.0\.0\.1/, "only the allowed name reaches the host");
  } finally {
    server.close();
  }
});
