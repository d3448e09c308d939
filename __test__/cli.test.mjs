// The CLI: usage errors without a VM, exit status passthrough with one.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cli, vmSkip } from "./helpers.mjs";

function run(args, opts = {}) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 300000, ...opts });
}

test("help and usage errors", () => {
  const help = run(["--help"]);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /exec \[options\] -- CMD/);
  assert.equal(run([]).status, 1);
  const unknown = run(["frobnicate"]);
  assert.equal(unknown.status, 1);
  assert.match(unknown.stderr, /Unknown command: frobnicate/);
  const badFlag = run(["exec", "--bogus", "--", "true"]);
  assert.equal(badFlag.status, 2);
  assert.match(badFlag.stderr, /Unknown argument: --bogus/);
  assert.match(badFlag.stderr, /Usage: gondolin exec/);
  const noCmd = run(["exec", "--"]);
  assert.equal(noCmd.status, 2);
  assert.match(noCmd.stderr, /missing command after --/);
  const badCpus = run(["exec", "--cpus", "x", "--", "true"]);
  assert.equal(badCpus.status, 2);
  assert.match(badCpus.stderr, /--cpus must be a positive integer/);
  assert.equal(run(["exec", "--help"]).status, 0);
  assert.equal(run(["build", "--help"]).status, 0);
});

test("gondolin exec passes the command's exit status and output through", { skip: vmSkip() }, () => {
  const r = run(["exec", "--env", "X=from-cli", "--", "sh", "-c", 'echo "$X"; echo oops >&2; exit 3']);
  assert.equal(r.status, 3, r.stderr);
  assert.equal(r.stdout, "from-cli\n");
  assert.match(r.stderr, /oops/);
});
