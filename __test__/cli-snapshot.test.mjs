// `gondolin snapshot` of a `gondolin bash` running in a real terminal (tmux),
// then `gondolin bash --resume` of it (upstream cli.md §3, §6).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { cli } from "./helpers.mjs";
import { privateTmux, q, tmuxSkip } from "./tmux.mjs";

const skip = tmuxSkip();
const session = "t";
const { tmux, killServer, waitFor } = privateTmux(`gondolin-snap-test-${process.pid}`);

test("gondolin snapshot stops a running bash session; bash --resume continues from its disk", { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-snap-"));
  const vars = {
    GONDOLIN_SESSIONS_DIR: path.join(dir, "sessions"),
    GONDOLIN_CHECKPOINT_DIR: path.join(dir, "checkpoints"),
    // The CLI is under test here, not boot templates.
    GONDOLIN_BOOT_SNAPSHOT: "0",
  };
  const env = `env ${Object.entries(vars).map(([k, v]) => `${k}=${q(v)}`).join(" ")} TERM=xterm-256color`;
  const run = (...args) => spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", env: { ...process.env, ...vars } });
  const first = `${session}:first`;
  tmux("-f", "/dev/null", "new-session", "-d", "-s", session, "-n", "first", "-x", "100", "-y", "30",
    `${env} ${q(process.execPath)} ${q(cli)} bash; echo "CLI-EXIT=$?"; sleep 600`);
  try {
    await waitFor(/root@gondolin:[^\n]*#\s*$/m, 120000, "the shell prompt", first);
    tmux("send-keys", "-t", first, "echo kept-$((6*7)) > /opt/snap.txt; sync; echo written", "Enter");
    await waitFor(/^written\s*$/m, 20000, "the file to be written", first);

    const list = run("list");
    const id = /^(\S{36})\s/m.exec(list.stdout)?.[1];
    assert.ok(id, list.stdout);
    assert.match(run("snapshot", id, "--name", "a", "--output", "/x").stderr, /--name cannot be combined with --output/);
    assert.match(run("snapshot").stderr, /snapshot requires a session id/);

    const snap = run("snapshot", id.slice(0, 8), "--name", "my snap!");
    assert.equal(snap.status, 0, snap.stderr);
    const file = path.join(vars.GONDOLIN_CHECKPOINT_DIR, "my-snap.qcow2");
    assert.equal(
      snap.stdout,
      `Snapshot created:\n  ID: my-snap\n  PATH: ${file}\nResume with:\n  gondolin bash --resume my-snap\n`,
    );
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    // The snapshotted VM stopped: its shell ended and its session is gone.
    await waitFor(/the VM was checkpointed[^\n]*\n+CLI-EXIT=0/, 30000, "the first bash to end", first);
    assert.deepEqual(fs.readdirSync(vars.GONDOLIN_SESSIONS_DIR), []);

    const second = `${session}:second`;
    tmux("new-window", "-t", session, "-n", "second",
      `${env} ${q(process.execPath)} ${q(cli)} bash --resume my; echo "CLI-EXIT=$?"; sleep 600`);
    await waitFor(/root@gondolin:[^\n]*#\s*$/m, 120000, "the resumed shell's prompt", second);
    tmux("send-keys", "-t", second, "cat /opt/snap.txt", "Enter");
    await waitFor(/^kept-42\s*$/m, 20000, "the file from before the snapshot", second);
    tmux("send-keys", "-t", second, "exit 4", "Enter");
    await waitFor(/CLI-EXIT=4/, 30000, "the resumed bash to exit", second);
    assert.ok(fs.existsSync(file), "resuming keeps the checkpoint");

    const missing = run("bash", "--resume", "nope");
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /checkpoint not found: nope/);
  } finally {
    await killServer();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
