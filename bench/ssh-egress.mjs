#!/usr/bin/env node
// SSH egress benchmark (`ssh` option), one VM, one run. Prints JSON.
//   guestCloneMs:      `git clone` of a SSH_BENCH_MIB (default 20) MiB repo
//                      (random bytes: the pack cannot shrink) from the guest
//                      over ssh through the host's proxy to a host sshd on
//                      127.0.0.1, timed inside the guest
//   hostCloneMs:       the same clone run on the host straight against the
//                      sshd (the host's own ssh client and key)
//   guestLocalCloneMs: the same repo cloned inside the guest from a local
//                      bare copy with --no-local (git's pack work in the
//                      guest without any network): the guest's own floor
//   guestDirectCloneMs: the guest clone again, its ssh talking straight to
//                      the sshd through mapped TCP (tcp.hosts) with the key
//                      copied into the guest (a reference only: what the
//                      proxy costs over the guest's own ssh + git work)
//   guestMiBps:        repo MiB / guestCloneMs
//   ratioToHost / ratioToGuestLocal: guestCloneMs over the two references
//   guestCloneMsByCipher: with SSH_BENCH_CIPHERS=a,b the guest clone again
//                      with the guest's ssh forced to each cipher (-c)
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { VM } from "@gondolin/native";

const MIB = Number(process.env.SSH_BENCH_MIB || 20);
const round = (x, d = 2) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const sh = (cmd, cwd) => execFileSync("sh", ["-c", cmd], { cwd, stdio: "pipe" });

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolinsshbench"));
fs.mkdirSync("/run/sshd", { recursive: true });
sh(`ssh-keygen -q -t ed25519 -N "" -f ${dir}/host_key && ssh-keygen -q -t ed25519 -N "" -f ${dir}/user_key`);
fs.copyFileSync(`${dir}/user_key.pub`, `${dir}/authorized_keys`);
const user = os.userInfo().username;
const port = await new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
fs.writeFileSync(
  `${dir}/sshd_config`,
  `Port ${port}\nListenAddress 127.0.0.1\nHostKey ${dir}/host_key\nAuthorizedKeysFile ${dir}/authorized_keys\n` +
    `PidFile ${dir}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPubkeyAuthentication yes\n` +
    `AllowUsers ${user}\nPermitRootLogin prohibit-password\n`,
);
const hostPub = fs.readFileSync(`${dir}/host_key.pub`, "utf8").trim().split(" ").slice(0, 2).join(" ");
fs.writeFileSync(`${dir}/known_hosts`, `git.test ${hostPub}\n[127.0.0.1]:${port} ${hostPub}\n`);
const work = path.join(dir, "work");
fs.mkdirSync(work);
fs.writeFileSync(path.join(work, "blob.bin"), randomBytes(MIB * 1024 * 1024));
sh("git init -q -b main . && git add -A && git -c user.name=b -c user.email=b@b commit -qm bench", work);
sh(`git clone -q --bare ${work} ${dir}/big.git`);

const sshd = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", `${dir}/sshd_config`], { stdio: "ignore" });
for (let i = 0; i < 100; i++) {
  const ok = await new Promise((resolve) => {
    const c = net.connect(port, "127.0.0.1", () => (c.destroy(), resolve(true)));
    c.on("error", () => resolve(false));
  });
  if (ok) break;
  await new Promise((r) => setTimeout(r, 100));
}

// Host reference: the host's own ssh client, straight to the sshd.
const hostSsh = `ssh -i ${dir}/user_key -o IdentitiesOnly=yes -o UserKnownHostsFile=${dir}/known_hosts -o BatchMode=yes -o LogLevel=ERROR`;
let t0 = performance.now();
execFileSync("git", ["clone", "-q", `ssh://${user}@127.0.0.1:${port}${dir}/big.git`, `${dir}/host-clone`], {
  env: { ...process.env, GIT_SSH_COMMAND: hostSsh },
});
const hostCloneMs = performance.now() - t0;

const vm = await VM.create({
  ssh: {
    allowedHosts: ["git.test"],
    credentials: { "git.test": { username: user, privateKey: fs.readFileSync(`${dir}/user_key`, "utf8") } },
    knownHostsFile: `${dir}/known_hosts`,
    upstreams: { "git.test": `127.0.0.1:${port}` },
  },
  tcp: { hosts: { "direct.test:22": `127.0.0.1:${port}` } },
});
let out;
try {
  await vm.start();
  const guest = async (script) => {
    const r = await vm.exec(["/bin/bash", "-c", script], {
      env: { GIT_SSH_COMMAND: "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR" },
    });
    if (r.exitCode !== 0) throw new Error(`${script.slice(0, 80)}: ${r.stderr}`);
    return r.stdout;
  };
  const ms = async (script) => {
    const o = await guest(`set -e; t0=$(date +%s%N); ${script}; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 ))`);
    return Number(o.trim().split("\n").pop());
  };
  const guestCloneMs = await ms(`cd /tmp && git clone -q ssh://git@git.test${dir}/big.git g1`);
  const cipherMs = {};
  for (const c of (process.env.SSH_BENCH_CIPHERS || "").split(",").filter(Boolean)) {
    cipherMs[c] = await ms(`cd /tmp && rm -rf gc && GIT_SSH_COMMAND="$GIT_SSH_COMMAND -c ${c}" git clone -q ssh://git@git.test${dir}/big.git gc`);
  }
  await guest("cd /tmp && git clone -q --bare g1 local.git");
  await vm.fs.writeFile("/tmp/direct_key", fs.readFileSync(`${dir}/user_key`));
  const guestDirectCloneMs = await ms(
    `chmod 600 /tmp/direct_key && cd /tmp && GIT_SSH_COMMAND="$GIT_SSH_COMMAND -i /tmp/direct_key -o IdentitiesOnly=yes" git clone -q ssh://${user}@direct.test${dir}/big.git g3`,
  );
  const guestLocalCloneMs = await ms("cd /tmp && git clone -q --no-local /tmp/local.git g2");
  const size = Number((await guest("wc -c < /tmp/g1/blob.bin")).trim());
  out = {
    bench: "ssh-egress",
    repoMiB: MIB,
    checkedOutBytes: size,
    guestCloneMs: round(guestCloneMs, 0),
    hostCloneMs: round(hostCloneMs, 0),
    guestLocalCloneMs: round(guestLocalCloneMs, 0),
    guestDirectCloneMs: round(guestDirectCloneMs, 0),
    guestMiBps: round(MIB / (guestCloneMs / 1000)),
    ratioToHost: round(guestCloneMs / hostCloneMs),
    ratioToGuestLocal: round(guestCloneMs / guestLocalCloneMs),
    ratioToGuestDirect: round(guestCloneMs / guestDirectCloneMs),
    ...(Object.keys(cipherMs).length ? { guestCloneMsByCipher: cipherMs } : {}),
  };
} finally {
  await vm.close();
  sshd.kill();
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify(out, null, 2));
