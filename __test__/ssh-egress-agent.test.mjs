// SSH egress through the host's ssh-agent, with a JS hostVerifier instead
// of known_hosts and the default exec policy (git services only): a host
// sshd and an ssh-agent holding the only key, both started here.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import { VM } from "@gondolin/native";
import { vmSkip, sleep } from "./helpers.mjs";
import { startSshd, hasSshd } from "./sshd.mjs";

const skip = vmSkip() || (hasSshd() ? false : "openssh-server is not installed (make deps)");
let vm;
let server;
let agent;
const verified = [];
const events = [];

const GIT_SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR";

before(async () => {
  if (skip) return;
  server = await startSshd("gondolinsshagent");
  server.makeRepo("repo", { "file.txt": "via the agent\n" });
  const sock = `${server.dir}/agent.sock`;
  agent = spawn("ssh-agent", ["-D", "-a", sock], { stdio: "ignore" });
  for (let i = 0; i < 100 && !fs.existsSync(sock); i++) await sleep(50);
  execFileSync("ssh-add", ["-q", server.userKeyPath], { env: { ...process.env, SSH_AUTH_SOCK: sock }, stdio: "pipe" });
  // The key as the verifier gets it: the SSH wire blob (base64 in .pub files).
  const hostBlob = Buffer.from(server.hostPub.split(" ")[1], "base64");
  vm = await VM.create({
    ssh: {
      allowedHosts: ["agent.test", "spoofed.test"],
      agent: sock,
      hostVerifier: (hostname, key, port) => {
        verified.push({ hostname, port, same: Buffer.isBuffer(key) && key.equals(hostBlob) });
        return hostname === "agent.test" && key.equals(hostBlob);
      },
      upstreams: { "agent.test": `127.0.0.1:${server.port}`, "spoofed.test": `127.0.0.1:${server.port}` },
    },
    onEgress: (e) => events.push(e),
  });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
  if (agent) agent.kill();
  if (server) server.stop();
});

const guest = (script) => vm.exec(["sh", "-c", script], { env: { GIT_SSH_COMMAND: GIT_SSH } });

test("git clone authenticates with the host's ssh-agent; hostVerifier sees the key", { skip }, async () => {
  // With the agent, the upstream login name is the guest's.
  const r = await guest(`git clone -q ssh://${server.user}@agent.test${server.dir}/repo.git /tmp/r && cat /tmp/r/file.txt`);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout, "via the agent\n");
  assert.deepEqual(verified[0], { hostname: "agent.test", port: 22, same: true });
});

test("hostVerifier saying no refuses the upstream", { skip }, async () => {
  const r = await guest(`git clone -q ssh://${server.user}@spoofed.test${server.dir}/repo.git /tmp/s; echo "exit=$?"`);
  assert.match(r.stderr, /gondolin ssh proxy error: upstream host key for spoofed\.test:22 is not trusted/);
  assert.doesNotMatch(r.stdout, /exit=0/);
  assert.ok(verified.some((v) => v.hostname === "spoofed.test"));
});

test("the default exec policy allows git's services only", { skip }, async () => {
  const r = await guest(`${GIT_SSH} ${server.user}@agent.test id; echo "exit=$?"`);
  assert.match(r.stderr, /gondolin ssh proxy: command not allowed: only git-upload-pack, git-receive-pack and git-upload-archive/);
  assert.match(r.stdout, /exit=1$/m);
  let e;
  for (let i = 0; i < 50 && !(e = events.find((x) => x.protocol === "ssh" && x.reason === "exec-policy-deny")); i++) await sleep(100);
  assert.ok(e, JSON.stringify(events));
  assert.equal(e.url, "id");
});

test("subsystems (sftp) are refused", { skip }, async () => {
  const r = await guest(`${GIT_SSH} -s ${server.user}@agent.test sftp </dev/null; echo "exit=$?"`);
  assert.doesNotMatch(r.stdout, /exit=0/);
});
