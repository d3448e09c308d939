// `gondolin bash` in a real terminal (tmux): prompt, arithmetic, pty size,
// session registration while it runs, exit status.
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
const main = `${session}:bash`; // the window running `gondolin bash`
const { tmux, killServer, waitFor } = privateTmux(`gondolin-test-${process.pid}`, main);

test("gondolin bash: prompt, echo $((6*7)), stty size, exit; interactive attach to it", { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-tty-"));
  const env = `env GONDOLIN_SESSIONS_DIR=${q(dir)} TERM=xterm-256color`;
  const command = `${env} ${q(process.execPath)} ${q(cli)} bash; echo "CLI-EXIT=$?"; sleep 600`;
  tmux("-f", "/dev/null", "new-session", "-d", "-s", session, "-n", "bash", "-x", "100", "-y", "30", command);
  try {
    await waitFor(/root@gondolin:[^\n]*#\s*$/m, 120000, "the shell prompt");
    const [rows, cols] = tmux("display-message", "-p", "-t", main, "#{pane_height} #{pane_width}").trim().split(" ");

    tmux("send-keys", "-t", main, "echo $((6*7))", "Enter");
    await waitFor(/^42\s*$/m, 20000, "42");
    tmux("send-keys", "-t", main, "stty size", "Enter");
    await waitFor(new RegExp(`^${rows} ${cols}\\s*$`, "m"), 20000, `the pane size (${rows} ${cols})`);

    // The VM is registered while the shell runs.
    const list = spawnSync(process.execPath, [cli, "list"], {
      encoding: "utf8",
      env: { ...process.env, GONDOLIN_SESSIONS_DIR: dir },
    });
    assert.equal(list.status, 0, list.stderr);
    const row = /^(\S{36})\s+\d+\s+\d+[smhd]\s+yes\s+.*cli\.cjs bash$/m.exec(list.stdout);
    assert.ok(row, list.stdout);

    // An interactive attach from a second terminal (smaller) gets its own pty.
    const win = `${session}:attach`;
    tmux("new-window", "-t", session, "-n", "attach", `${env} ${q(process.execPath)} ${q(cli)} attach ${row[1].slice(0, 8)}; echo "ATTACH-EXIT=$?"; sleep 600`);
    tmux("resize-window", "-t", win, "-x", "70", "-y", "20");
    await waitFor(/root@gondolin:[^\n]*#\s*$/m, 60000, "the attached shell's prompt", win);
    const [aRows, aCols] = tmux("display-message", "-p", "-t", win, "#{pane_height} #{pane_width}").trim().split(" ");
    assert.notEqual(`${aRows} ${aCols}`, `${rows} ${cols}`);
    tmux("send-keys", "-t", win, "stty size; echo attached-$((6*7))", "Enter");
    await waitFor(new RegExp(`^${aRows} ${aCols}\\s*\\n+attached-42\\s*$`, "m"), 20000, "the attach pty size and output", win);
    // Ctrl-] detaches the attach: exit 130, the VM's own shell lives on.
    tmux("send-keys", "-t", win, "C-]");
    await waitFor(/\[gondolin\] detached \(Ctrl-\]\)\s*\n+ATTACH-EXIT=130/, 20000, "attach to detach on Ctrl-]", win);
    tmux("send-keys", "-t", main, "echo still-$((6*7))", "Enter");
    await waitFor(/^still-42\s*$/m, 20000, "the first shell to still answer");
    // A non-interactive attach exits with the remote command's status.
    const a = spawnSync(process.execPath, [cli, "attach", row[1].slice(0, 8), "--", "sh", "-c", "exit 3"], {
      encoding: "utf8",
      env: { ...process.env, GONDOLIN_SESSIONS_DIR: dir },
    });
    assert.equal(a.status, 3, a.stderr);

    tmux("send-keys", "-t", main, "exit 5", "Enter");
    await waitFor(/CLI-EXIT=5/, 30000, "the CLI to exit with the shell's status");
    assert.deepEqual(fs.readdirSync(dir), [], "the session entry is removed when the CLI exits");
  } finally {
    await killServer();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("gondolin bash: Ctrl-] detaches, closes the VM and exits 130", { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-tty-"));
  const env = `env GONDOLIN_SESSIONS_DIR=${q(dir)} TERM=xterm-256color`;
  const command = `${env} ${q(process.execPath)} ${q(cli)} bash; echo "CLI-EXIT=$?"; sleep 600`;
  tmux("-f", "/dev/null", "new-session", "-d", "-s", session, "-n", "bash", "-x", "100", "-y", "30", command);
  try {
    await waitFor(/root@gondolin:[^\n]*#\s*$/m, 120000, "the shell prompt");
    tmux("send-keys", "-t", main, "C-]");
    await waitFor(/\[gondolin\] detached \(Ctrl-\]\)\s*\n+CLI-EXIT=130/, 30000, "bash to detach on Ctrl-]");
    assert.deepEqual(fs.readdirSync(dir), [], "the VM is closed and its session entry removed");
  } finally {
    await killServer();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
