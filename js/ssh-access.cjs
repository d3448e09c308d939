"use strict";
// vm.enableSsh(): the guest's own sshd on its loopback, reached through a
// host TCP port piped to guest 127.0.0.1:22 (NativePortForward over the
// VM's network stack, src/net/forward.rs). A fresh ed25519 key per call,
// made by the host's ssh-keygen; only its public half enters the guest.
// Upstream's options, error messages, sshd flags and command string
// (spec api.md §1 "VM.enableSsh() facts").

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { execFile } = require("node:child_process");
const { native } = require("./native.cjs");
const { withCode } = require("./errors.cjs");
const { optionError } = require("./options.cjs");

const GUEST_PORT = 22;
/** Readiness: the banner must come within this, retried every 150 ms. */
const READY_TIMEOUT_MS = 10_000;

function checkOptions(options) {
  if (options === null || typeof options !== "object") throw optionError("enableSsh options must be an object");
  for (const k of Object.keys(options)) {
    if (!["user", "listenHost", "listenPort"].includes(k)) {
      throw optionError(`unknown enableSsh option ${JSON.stringify(k)} (expected user, listenHost, listenPort)`);
    }
  }
  const user = options.user ?? "root";
  if (typeof user !== "string" || !/^[a-z_][a-z0-9_.-]*\$?$/i.test(user) || user.length > 32) {
    throw optionError(`enableSsh user must be a user name (got ${JSON.stringify(user)})`);
  }
  const listenHost = options.listenHost ?? "127.0.0.1";
  if (typeof listenHost !== "string" || !listenHost) throw optionError("enableSsh listenHost must be an IP address string");
  const listenPort = options.listenPort ?? 0;
  if (!Number.isInteger(listenPort) || listenPort < 0 || listenPort > 65535) {
    throw optionError(`enableSsh listenPort must be an integer between 0 and 65535 (got ${listenPort})`);
  }
  return { user, listenHost: listenHost === "localhost" ? "127.0.0.1" : listenHost, listenPort };
}

function keygen(dir) {
  const key = path.join(dir, "id_ed25519");
  return new Promise((resolve, reject) => {
    execFile("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "gondolin", "-f", key], (err) => {
      if (err) {
        reject(withCode(`failed to run ssh-keygen (needed for vm.enableSsh): ${err.message}`, "missing_tool", { cause: err }));
      } else {
        resolve(key);
      }
    });
  });
}

// Exit codes as upstream's setup script: 127 no sshd, 125 no such user.
const SETUP = `set -e
user="$1"; key="$2"
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || exit 127
line=$(getent passwd "$user" 2>/dev/null || grep "^$user:" /etc/passwd || true)
[ -n "$line" ] || exit 125
home=$(printf '%s' "$line" | cut -d: -f6)
[ -n "$home" ] || { [ "$user" = root ] && home=/root || home="/home/$user"; }
mkdir -p "$home/.ssh" /run/sshd
printf '%s\\n' "$key" > "$home/.ssh/authorized_keys"
chmod 700 "$home/.ssh"; chmod 600 "$home/.ssh/authorized_keys"
chown -R "$user" "$home/.ssh" 2>/dev/null || true
ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A >/dev/null
if [ -f /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null; then exit 0; fi
exec "$(command -v sshd || echo /usr/sbin/sshd)" -e -p ${GUEST_PORT} -o ListenAddress=127.0.0.1 \\
  -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \\
  -o PubkeyAuthentication=yes -o AllowUsers="$user" -o AllowAgentForwarding=no \\
  -o AllowTcpForwarding=no -o X11Forwarding=no -o PermitTunnel=no \\
  -o PermitRootLogin=prohibit-password -o PidFile=/run/sshd.pid </dev/null >/dev/null 2>&1
`;

async function configureGuest(vm, user, publicKey) {
  const r = await vm.exec(["/bin/sh", "-c", SETUP, "sh", user, publicKey]);
  switch (r.exitCode) {
    case 0:
      return;
    case 127:
      throw withCode(
        "sshd not available in guest image. Rebuild guest assets with openssh installed (default images should include it).",
        "exec_failed",
      );
    case 125:
      throw withCode(`ssh user '${user}' does not exist in guest image (vm.enableSsh({ user }))`, "invalid_option");
    default:
      throw withCode(`failed to configure ssh in guest (exit ${r.exitCode}): ${r.stderr}`, "exec_failed");
  }
}

/** Wait until an SSH banner comes through the forwarder. */
async function waitForBanner(host, port) {
  const net = require("node:net");
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let detail = "no banner";
  while (Date.now() < deadline) {
    const banner = await new Promise((resolve) => {
      const s = net.connect({ host, port });
      let buf = "";
      const done = (v) => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(1000, () => done(null));
      s.on("data", (d) => {
        buf += d.toString("latin1");
        if (buf.length >= 4) done(buf.startsWith("SSH-") ? buf : null);
      });
      s.on("error", (e) => {
        detail = e.message;
        done(null);
      });
      s.on("close", () => done(null));
    });
    if (banner) return;
    await new Promise((r) => setTimeout(r, 150));
  }
  throw withCode(`ssh port-forward is not available: ${detail}`, "io_error");
}

/** vm.enableSsh(options) → SshAccess. */
async function enableSsh(vm, options = {}) {
  const { user, listenHost, listenPort } = checkOptions(options);
  await vm._implicitStart();
  if (!vm._native) throw vm._closedError();
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), "gondolin-ssh-"));
  let forward;
  try {
    const identityFile = await keygen(dir);
    const publicKey = (await fs.promises.readFile(`${identityFile}.pub`, "utf8")).trim();
    await configureGuest(vm, user, publicKey);
    forward = await native.startPortForward(vm._native, listenHost, listenPort, GUEST_PORT);
    const host = forward.host();
    const port = forward.port();
    await waitForBanner(host, port);
    let closing;
    return {
      host,
      port,
      user,
      identityFile,
      command:
        `ssh -p ${port} -i ${identityFile} -o ForwardAgent=no -o ClearAllForwardings=yes -o IdentitiesOnly=yes ` +
        `-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null ${user}@${host}`,
      close() {
        if (!closing) {
          closing = Promise.all([forward.close(), fs.promises.rm(dir, { recursive: true, force: true })]).then(() => {});
        }
        return closing;
      },
    };
  } catch (err) {
    if (forward) await forward.close();
    await fs.promises.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

module.exports = { enableSsh, checkSshOptions: checkOptions };
