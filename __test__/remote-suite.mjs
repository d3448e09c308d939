#!/usr/bin/env node
// Run existing VM test files against a remote VM: start `gondolin ws-server`
// on 127.0.0.1 (a free port, no auth on loopback), then `node --test FILES`
// with GONDOLIN_REMOTE pointing at it, so every VM.create in those files
// makes a remote VM. Exits with node --test's status.
//
//   node __test__/remote-suite.mjs [FILES...]   (default: the exec, fs and streaming tests)
import { spawn } from "node:child_process";
import path from "node:path";
import { cli, root } from "./helpers.mjs";

const files = process.argv.slice(2);
const targets = files.length ? files : ["__test__/exec.test.mjs", "__test__/fs.test.mjs", "__test__/streaming.test.mjs"];

const env = { ...process.env };
delete env.GONDOLIN_REMOTE;
const server = spawn(process.execPath, [cli, "ws-server", "--port", "0", "--insecure-no-auth"], { env, stdio: ["ignore", "pipe", "inherit"] });
const url = await new Promise((resolve, reject) => {
  let out = "";
  server.stdout.on("data", (d) => {
    out += d;
    const m = /listening on (\S+)/.exec(out);
    if (m) resolve(m[1]);
  });
  server.once("exit", (code) => reject(new Error(`ws-server exited ${code}`)));
});
process.stderr.write(`remote-suite: ${targets.join(" ")} against ${url}\n`);
const run = spawn(process.execPath, ["--test", ...targets.map((f) => path.resolve(root, f))], {
  env: { ...process.env, GONDOLIN_REMOTE: url },
  stdio: "inherit",
  cwd: root,
});
const code = await new Promise((r) => run.once("exit", (c) => r(c ?? 1)));
server.kill("SIGTERM");
await new Promise((r) => server.once("exit", r));
process.exit(code);
