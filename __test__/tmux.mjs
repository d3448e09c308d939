// A private tmux server for CLI tests that need a real terminal: `-L` keeps
// a user's tmux and its environment out of it.
import { execFileSync, spawnSync } from "node:child_process";
import { vmSkip, sleep } from "./helpers.mjs";

/** Why terminal tests skip (no VM, or no tmux), or false. */
export function tmuxSkip() {
  const hasTmux = spawnSync("sh", ["-c", "command -v tmux"]).status === 0;
  const skip = vmSkip();
  if (!skip && !hasTmux) {
    if (process.env.GONDOLIN_TEST_VM === "1") throw new Error("GONDOLIN_TEST_VM=1 but tmux is not installed");
    return "tmux is not installed";
  }
  return skip;
}

/** Shell-quote one word. */
export const q = (s) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Commands on the private server `server`; `target` is the default pane. */
export function privateTmux(server, target) {
  const tmux = (...args) => execFileSync("tmux", ["-L", server, ...args], { encoding: "utf8" });
  const pane = (t = target) => tmux("capture-pane", "-p", "-t", t);
  return {
    tmux,
    pane,
    /** Stop the server and wait until it is gone: a new session started
     * while it is still exiting fails with "server exited unexpectedly". */
    async killServer() {
      spawnSync("tmux", ["-L", server, "kill-server"]);
      for (let i = 0; i < 50; i++) {
        const r = spawnSync("tmux", ["-L", server, "list-sessions"], { encoding: "utf8" });
        if (r.status !== 0 && /no server running|error connecting/.test(r.stderr)) return;
        await sleep(100);
      }
    },
    /** Poll the pane until `re` matches; its text. */
    async waitFor(re, ms, what, t = target) {
      const deadline = Date.now() + ms;
      let text = "";
      while (Date.now() < deadline) {
        text = pane(t);
        if (re.test(text)) return text;
        await sleep(200);
      }
      throw new Error(`timed out waiting for ${what}; pane:\n${text}`);
    },
  };
}
