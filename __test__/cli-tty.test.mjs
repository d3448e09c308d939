// `gondolin bash` in a real terminal (tmux): prompt, arithmetic, pty size, exit.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { cli, vmSkip, sleep } from "./helpers.mjs";

const hasTmux = spawnSync("sh", ["-c", "command -v tmux"]).status === 0;
let skip = vmSkip();
if (!skip && !hasTmux) {
  if (process.env.GONDOLIN_TEST_VM === "1") throw new Error("GONDOLIN_TEST_VM=1 but tmux is not installed");
  skip = "tmux is not installed";
}

const session = `gondolin-test-${process.pid}`;
const tmux = (...args) => execFileSync("tmux", args, { encoding: "utf8" });
const pane = () => tmux("capture-pane", "-p", "-t", session);

async function waitFor(re, ms, what) {
  const deadline = Date.now() + ms;
  let text = "";
  while (Date.now() < deadline) {
    text = pane();
    if (re.test(text)) return text;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}; pane:\n${text}`);
}

test("gondolin bash: prompt, echo $((6*7)), stty size, exit", { skip }, async () => {
  tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", `${process.execPath} ${cli} bash; echo "CLI-EXIT=$?"; sleep 60`);
  try {
    await waitFor(/root@gondolin:[^\n]*#/, 120000, "the shell prompt");
    tmux("send-keys", "-t", session, "echo $((6*7))", "Enter");
    await waitFor(/^42\s*$/m, 20000, "42");
    tmux("send-keys", "-t", session, "stty size", "Enter");
    await waitFor(/^30 100\s*$/m, 20000, "the pane size");
    tmux("send-keys", "-t", session, "exit 5", "Enter");
    await waitFor(/CLI-EXIT=5/, 30000, "the CLI to exit with the shell's status");
  } finally {
    spawnSync("tmux", ["kill-session", "-t", session]);
  }
});
