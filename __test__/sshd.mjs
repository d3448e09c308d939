// A throwaway OpenSSH server for SSH egress tests and benches: its own
// config, host key and authorized_keys in a tmpdir, on 127.0.0.1:<free
// port>, allowing only the current user with the generated user key.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const SSHD = "/usr/sbin/sshd";
export const hasSshd = () => fs.existsSync(SSHD);

const sh = (cmd, cwd) => execFileSync("sh", ["-c", cmd], { cwd, stdio: "pipe" });

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/**
 * Start sshd. Returns { dir, port, user, userKey (private PEM), userKeyPath,
 * hostPub ("type base64"), makeRepo(name, files) → bare repo path, stop() }.
 */
export async function startSshd(prefix = "gondolinssh") {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.mkdirSync("/run/sshd", { recursive: true });
  sh(`ssh-keygen -q -t ed25519 -N "" -f ${dir}/host_key && ssh-keygen -q -t ed25519 -N "" -f ${dir}/user_key`);
  fs.copyFileSync(`${dir}/user_key.pub`, `${dir}/authorized_keys`);
  fs.chmodSync(`${dir}/authorized_keys`, 0o600);
  const user = os.userInfo().username;
  const port = await freePort();
  fs.writeFileSync(
    `${dir}/sshd_config`,
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${dir}/host_key`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      `PidFile ${dir}/sshd.pid`,
      "StrictModes no",
      "UsePAM no",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PubkeyAuthentication yes",
      `AllowUsers ${user}`,
      "PermitRootLogin prohibit-password",
      "",
    ].join("\n"),
  );
  let log = "";
  const child = spawn(SSHD, ["-D", "-e", "-f", `${dir}/sshd_config`], { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr.on("data", (d) => (log = (log + d).slice(-4000)));
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`sshd exited with ${child.exitCode}: ${log}`);
    const ok = await new Promise((resolve) => {
      const c = net.connect(port, "127.0.0.1");
      c.once("data", (d) => (c.destroy(), resolve(d.toString().startsWith("SSH-"))));
      c.on("error", () => resolve(false));
    });
    if (ok) break;
    if (i > 100) throw new Error(`sshd does not answer on 127.0.0.1:${port}: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    dir,
    port,
    user,
    userKey: fs.readFileSync(`${dir}/user_key`, "utf8"),
    userKeyPath: `${dir}/user_key`,
    hostPub: fs.readFileSync(`${dir}/host_key.pub`, "utf8").trim().split(" ").slice(0, 2).join(" "),
    log: () => log,
    /** A bare repo `<dir>/<name>.git` with one commit holding `files`. */
    makeRepo(name, files) {
      const work = path.join(dir, `${name}-work`);
      fs.mkdirSync(work);
      for (const [f, data] of Object.entries(files)) fs.writeFileSync(path.join(work, f), data);
      sh("git init -q -b main . && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", work);
      const bare = path.join(dir, `${name}.git`);
      sh(`git clone -q --bare ${work} ${bare}`);
      return bare;
    },
    stop() {
      child.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
