// SSH egress (`ssh` option) against a real VM: a host sshd started here on
// 127.0.0.1:<free port> (its own config, host key and authorized_keys in a
// tmpdir) serves bare git repos; the guest's git/ssh reach it by a name
// through the host's SSH proxy, which holds the only private key.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { VM, getInfoFromSshExecRequest } from "@gondolin/native";
import { cli, vmSkip, sleep } from "./helpers.mjs";
import { startSshd, hasSshd } from "./sshd.mjs";

const skip = vmSkip() || (hasSshd() ? false : "openssh-server is not installed (make deps)");
let vm;
let server;
let dir;
let userKey;
let sshdPort;
const events = [];
const policyCalls = [];

const GIT_SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";

before(async () => {
  if (skip) return;
  server = await startSshd();
  ({ dir, userKey, port: sshdPort } = server);
  // The git.test known_hosts line; badkey.test is left out on purpose.
  fs.writeFileSync(`${dir}/known_hosts`, `# test\ngit.test ${server.hostPub}\n`);
  server.makeRepo("small", { "README.md": "hello from the host\n" });
  // 20 MiB of random bytes: git cannot compress it.
  server.makeRepo("big", { "blob.bin": randomBytes(20 * 1024 * 1024) });
  execFileSync("git", ["init", "-q", "--bare", `${dir}/push.git`]);
  vm = await VM.create({
    ssh: {
      allowedHosts: ["git.test", "badkey.test"],
      credentials: { "*.test": { username: server.user, privateKey: userKey } },
      knownHostsFile: `${dir}/known_hosts`,
      // Our extension: the host sshd is on a random port, not git.test:22.
      upstreams: { "git.test": `127.0.0.1:${sshdPort}`, "badkey.test": `127.0.0.1:${sshdPort}` },
      execPolicy: (req) => {
        policyCalls.push(req);
        const git = getInfoFromSshExecRequest(req);
        if (git || req.command === "cat") return { allow: true };
        return { allow: false, exitCode: 42, message: `gondolin test policy: ${JSON.stringify(req.command)} is not git` };
      },
    },
    onEgress: (e) => events.push(e),
  });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
  if (server) server.stop();
});

async function guest(script, timeout = 300000) {
  return vm.exec(["sh", "-c", script], { env: { GIT_SSH_COMMAND: GIT_SSH }, timeout });
}

test("getInfoFromSshExecRequest parses git commands and refuses the rest", () => {
  const req = (command) => ({ hostname: "h", port: 22, guestUsername: "git", command, src: { ip: "10.0.2.15", port: 1 } });
  assert.deepEqual(getInfoFromSshExecRequest(req("git-upload-pack '~/org/repo.git/'")), { service: "git-upload-pack", repo: "org/repo.git" });
  assert.deepEqual(getInfoFromSshExecRequest(req("git-receive-pack 'org/repo'")), { service: "git-receive-pack", repo: "org/repo" });
  assert.equal(getInfoFromSshExecRequest(req("git-upload-pack 'org/repo.git'; id")), null);
  assert.equal(getInfoFromSshExecRequest(req("id")), null);
  assert.equal(getInfoFromSshExecRequest(req("git-upload-pack '../etc/passwd'")), null);
});

test("ssh option errors are upstream's, at construction", () => {
  const refused = (ssh, re, extra = {}) =>
    assert.throws(() => new VM({ ssh, ...extra }), (err) => err.code === "invalid_option" && re.test(err.message));
  refused({ allowedHosts: ["a.test"] }, /^ssh egress requires at least one credential or ssh agent \(direct ssh is not supported\)$/);
  refused({ allowedHosts: ["a.test"], agent: "/nonexistent.sock", knownHostsFile: "/nonexistent/kh" },
    /^ssh egress requires ssh\.hostVerifier to validate upstream host keys \(failed to load known_hosts: no OpenSSH known_hosts files found \(tried \/nonexistent\/kh\)\)$/);
  refused({ allowedHosts: ["a.test"], agent: "/x.sock", hostVerifier: () => true }, /^ssh egress requires dns mode 'synthetic'$/, { dns: { mode: "open" } });
  refused({ allowedHosts: ["a.test"], agent: "/x.sock", hostVerifier: () => true }, /^ssh egress requires dns syntheticHostMapping='per-host'$/, { dns: { syntheticHostMapping: "single" } });
  refused({ allowedHosts: ["a.test"], agent: "/x.sock", hostVerifier: () => true, maxUpstreamConnectionsTotal: 0 }, /ssh\.maxUpstreamConnectionsTotal must be an integer > 0/);
  refused({ allowedHosts: ["a.test"], credentials: { "a.test": { privateKey: "not a key" } }, hostVerifier: () => true }, /ssh\.credentials\["a\.test"\]: cannot read the private key/);
  // No allowed host: SSH egress stays off (upstream), nothing else is checked.
  assert.ok(new VM({ ssh: { allowedHosts: [] } }));
});

test("CLI: --ssh-* flag errors are upstream's (no VM starts)", () => {
  const run = (...args) => spawnSync(process.execPath, [cli, "exec", ...args, "--", "true"], { encoding: "utf8", timeout: 60000, env: { ...process.env, SSH_AUTH_SOCK: "" } });
  const cases = [
    [["--ssh-agent", "/x.sock"], /--ssh-agent requires at least one --ssh-allow-host \(or --ssh-credential\)/],
    [["--ssh-allow-host", "h", "--ssh-agent"], /--ssh-agent requires a socket path or \$SSH_AUTH_SOCK/],
    [["--ssh-allow-host", "h", "--ssh-agent", "/x.sock", "--dns", "open"], /--ssh-allow-host requires --dns synthetic/],
    [["--ssh-credential", "h"], /Invalid --ssh-credential format: h \(expected HOST=KEY_PATH\)/],
    [["--ssh-credential", "h="], /Invalid --ssh-credential format: h= \(missing KEY_PATH\)/],
    [["--ssh-credential", "@h=/k"], /Invalid --ssh-credential format: @h=\/k \(expected USER@HOST=KEY_PATH\)/],
    [["--ssh-credential", "h=/k,passphrase-ask"], /Invalid --ssh-credential option: passphrase-ask \(interactive prompting is not supported; use passphrase-env=ENV\)/],
    [["--ssh-credential", "h=/k,passphrase-env="], /Invalid --ssh-credential option: passphrase-env= \(missing env var name\)/],
    [["--ssh-credential", "h=/k,passphrase=a,passphrase-env=B"], /cannot combine passphrase and passphrase-env/],
    [["--ssh-credential", "h=/k,bogus"], /Invalid --ssh-credential option: bogus/],
    [["--ssh-credential", "h=/k,passphrase-env=GONDOLIN_NO_SUCH_VAR"], /--ssh-credential passphrase env var 'GONDOLIN_NO_SUCH_VAR' is not set \(for h\)/],
    [["--ssh-credential", "h=/nonexistent/key"], /SSH key file does not exist: \/nonexistent\/key/],
    [["--ssh-known-hosts"], /--ssh-known-hosts requires a path argument/],
    [["--ssh-allow-host"], /--ssh-allow-host requires a host argument/],
  ];
  for (const [args, re] of cases) {
    const r = run(...args);
    assert.notEqual(r.status, 0, args.join(" "));
    assert.match(r.stderr, re, args.join(" "));
  }
});

test("git clone over ssh from the guest works with the key held on the host", { skip }, async () => {
  const r = await guest(`set -e
cd /tmp && rm -rf small && git clone -q ssh://git@git.test${dir}/small.git small && cat small/README.md`);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, "hello from the host\n");
  const call = policyCalls.find((c) => c.command.includes("small.git"));
  assert.ok(call, JSON.stringify(policyCalls));
  assert.equal(call.hostname, "git.test");
  assert.equal(call.port, 22);
  assert.equal(call.guestUsername, "git");
  assert.match(call.src.ip, /^\d+\.\d+\.\d+\.\d+$/);
  let e;
  for (let i = 0; i < 50 && !(e = events.find((x) => x.protocol === "ssh" && x.decision === "allow")); i++) await sleep(100);
  assert.ok(e, JSON.stringify(events));
  assert.equal(e.host, "git.test:22");
  assert.match(e.url, /^git-upload-pack '.*small\.git'$/);
});

test("a 20 MiB clone and a push both ways through the proxy", { skip }, async () => {
  const t0 = Date.now();
  const r = await guest(`set -e
cd /tmp && rm -rf big && git clone -q ssh://git@git.test${dir}/big.git big && wc -c < big/blob.bin`);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout.trim(), String(20 * 1024 * 1024));
  const ms = Date.now() - t0;
  const p = await guest(`set -e
cd /tmp/big && head -c 4194304 /dev/urandom > pushed.bin && git add pushed.bin
git -c user.name=g -c user.email=g@g commit -qm push
git push -q ssh://git@git.test${dir}/push.git HEAD:refs/heads/main`);
  assert.equal(p.exitCode, 0, p.stderr);
  const log = execFileSync("git", ["--git-dir", `${dir}/push.git`, "log", "--format=%s", "main"], { encoding: "utf8" });
  assert.equal(log, "push\ninit\n");
  console.log(`# 20 MiB clone through the proxy: ${ms} ms`);
});

test("full-duplex bulk: 24 MiB through the upstream's cat, both directions at once", { skip }, async () => {
  const r = await guest(`head -c 25165824 /dev/urandom > /tmp/in.bin && ${GIT_SSH} git@git.test cat < /tmp/in.bin | cmp - /tmp/in.bin && echo same`);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout.trim(), "same");
});

test("a non-git command is refused with the policy's message and exit code", { skip }, async () => {
  const r = await guest(`${GIT_SSH} git@git.test id; echo "exit=$?"`);
  assert.match(r.stderr, /gondolin test policy: "id" is not git/);
  assert.match(r.stdout, /exit=42/);
  // An interactive shell is refused by the proxy itself.
  const s = await guest(`${GIT_SSH} -T git@git.test </dev/null; echo "exit=$?"`);
  assert.match(s.stderr, /gondolin ssh proxy: interactive shells are not supported/);
  assert.match(s.stdout, /exit=1/);
});

test("an unknown upstream host key refuses the connection", { skip }, async () => {
  const r = await guest(`git clone -q ssh://git@badkey.test${dir}/small.git /tmp/bad; echo "exit=$?"`);
  assert.match(r.stderr, /gondolin ssh proxy error: upstream host key for badkey\.test:22 is not trusted/);
  assert.doesNotMatch(r.stdout, /exit=0/);
  let e;
  for (let i = 0; i < 50 && !(e = events.find((x) => x.host === "badkey.test:22")); i++) await sleep(100);
  assert.ok(e, JSON.stringify(events));
  assert.equal(e.decision, "deny");
});

test("an unlisted host is refused", { skip }, async () => {
  const r = await guest(`${GIT_SSH} -o ConnectTimeout=30 git@unlisted.test git-upload-pack x/y.git; echo "exit=$?"`);
  assert.match(r.stdout, /exit=255/);
  assert.doesNotMatch(r.stderr, /gondolin ssh proxy/);
  let e;
  for (let i = 0; i < 50 && !(e = events.find((x) => x.host === "unlisted.test:22")); i++) await sleep(100);
  assert.ok(e, JSON.stringify(events));
  assert.deepEqual([e.protocol, e.decision, e.reason], ["ssh", "deny", "policy-deny"]);
});

test("the guest holds no private key and no agent", { skip }, async () => {
  // A line from the middle of the key's base64 body.
  const lines = userKey.trim().split("\n");
  const needle = lines[Math.floor(lines.length / 2)];
  const r = await guest(
    `grep -rlF -- '${needle}' /root /tmp /etc /home /var /run /srv /opt 2>/dev/null; ` +
      `cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c '^SSH_AUTH_SOCK=' ; ls /root/.ssh 2>/dev/null; true`,
  );
  assert.equal(r.stdout.trim().split("\n")[0], "0", `key material or an agent in the guest: ${r.stdout}`);
  assert.doesNotMatch(r.stdout, /id_|\.pem/);
});

test("a guest opening many SSH connections hits the per-VM cap (32)", { skip }, async () => {
  const r = await vm.exec(["python3", "-c", `
import socket, time
socks, banners, resets = [], 0, 0
for i in range(40):
    try:
        s = socket.create_connection(("git.test", 22), timeout=60)
        s.sendall(b"SSH-2.0-flood\\r\\n")
        socks.append(s)
    except OSError:
        resets += 1
for s in socks:
    try:
        b = s.recv(64)
        if b.startswith(b"SSH-2.0-gondolin-ssh-proxy"):
            banners += 1
        else:
            resets += 1
    except OSError:
        resets += 1
print(banners, resets)
`]);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout.trim(), "32 8");
  assert.ok(events.some((e) => e.protocol === "ssh" && e.reason === "too-many-ssh-flows"), JSON.stringify(events.slice(-5)));
  // Closed connections give their slots back: a clone works again.
  let ok = false;
  for (let i = 0; i < 20 && !ok; i++) {
    const c = await guest(`rm -rf /tmp/again && git clone -q ssh://git@git.test${dir}/small.git /tmp/again`);
    ok = c.exitCode === 0;
    if (!ok) await sleep(500);
  }
  assert.ok(ok, "a clone after the flood");
});

/** This process's open TCP sockets connected to 127.0.0.1:port (Linux: /proc/net/tcp and /proc/self/fd). */
function ownSocketsTo(port) {
  const inodes = new Set();
  for (const line of fs.readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 9 && f[2] === `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`) inodes.add(f[9]);
  }
  let n = 0;
  for (const fd of fs.readdirSync("/proc/self/fd")) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`));
      if (m && inodes.has(m[1])) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

// Last: it closes the VM.
test("closing the VM ends an open proxied session and its upstream connection", { skip }, async () => {
  const running = vm.exec(["sh", "-c", `sleep 600 | ${GIT_SSH} git@git.test cat`]);
  running.catch(() => {});
  let n = 0;
  for (let i = 0; i < 100 && (n = ownSocketsTo(sshdPort)) === 0; i++) await sleep(100);
  assert.ok(n >= 1, "the proxy holds an upstream connection");
  await vm.close();
  for (let i = 0; i < 50 && (n = ownSocketsTo(sshdPort)) > 0; i++) await sleep(100);
  assert.equal(n, 0, "no upstream connection left after close");
});
