#!/usr/bin/env node
"use strict";
// The `gondolin` command line.

const path = require("node:path");
const fs = require("node:fs");
const os = require("node:os");

const USAGE = `Usage: gondolin <command> [options]

Commands:
  exec [options] -- CMD [ARGS...]   run one command in a fresh VM; exits with its status
  bash [options] [-- CMD...]        interactive shell (or CMD) in a fresh VM
  list [--all]                      list running VMs (sessions) on this machine
  attach ID [options] [-- CMD...]   shell (or CMD) in a VM another process runs
  snapshot ID [--output PATH | --name NAME] [--memory]
                                    checkpoint a running VM (it stops) for
                                    'gondolin bash --resume'
  ws-server [options]               serve VMs to remote clients over WebSocket
  build [options]                   build the guest image from Debian packages
  image ls|inspect|tag|rm|import|pull|push
                                    the local image store, its NAME:TAG refs,
                                    OCI registries
  help                              show this help

Options:
  -h, --help                        show this help
  -V, --version                     print the version

Run 'gondolin <command> --help' for a command's options.
`;

const VM_OPTIONS = `VM options:
  --memory SIZE        guest memory (QEMU size syntax, default 1G)
  --cpus N             virtual CPUs (default 2)
  --image SELECTOR     guest image: a directory, a build id or NAME[:TAG]
                       (default: $GONDOLIN_DEFAULT_IMAGE, else debian-base:latest,
                       built on first use)
  --rootfs-mode MODE   readonly | memory | cow (default cow)
  --rootfs-size SIZE   grow the root disk and its filesystem to SIZE (e.g. 8G)
  --env KEY=VALUE      environment variable for the command (repeatable)
  --cwd PATH           working directory in the guest

Host files (repeatable; each GUEST path is a directory the guest sees):
  --mount-hostfs HOST:GUEST[:ro]
                       the host directory HOST at GUEST; writes go to HOST
                       unless ':ro' makes it read-only
  --mount-memfs GUEST  an empty in-memory directory at GUEST (gone on exit)

Network options (HTTP and HTTPS, plus --tcp-map and --ssh-allow-host targets;
internal addresses are blocked unless named exactly by --allow-host):
  --allow-host PATTERN       allow egress to PATTERN ('*' wildcards; repeatable)
  --deny-all-egress          deny every host not named by --allow-host
  --host-secret NAME@HOST[,HOST...][=VALUE]
                             give the guest $NAME as a placeholder that the host
                             replaces with VALUE (default: the host's $NAME)
                             only in requests to HOST (repeatable)
  --dns MODE                 synthetic (default) | trusted | open
  --dns-trusted-server IP    resolver for --dns trusted (repeatable)
  --tcp-map GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT
                             raw TCP from the guest's GUEST_HOST (any port, or
                             PORT) to UPSTREAM_HOST:PORT on the host side; turns
                             on per-host synthetic DNS (repeatable)
  --ssh-allow-host HOST_PATTERN[:PORT]
                             let the guest's ssh/git reach HOST (default port
                             22) through the host's SSH proxy; turns on
                             per-host synthetic DNS (repeatable)
  --ssh-credential [USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV]
                             host-side private key for HOST (the guest never
                             sees it); allows HOST too (repeatable)
  --ssh-agent [SOCK]         authenticate upstream with the ssh-agent at SOCK
                             (default $SSH_AUTH_SOCK)
  --ssh-known-hosts PATH     known_hosts file for upstream host keys (default
                             ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts;
                             repeatable)
  --disable-websockets       refuse WebSocket upgrades
  --no-network               no network device at all

Remote (ours; see 'gondolin ws-server --help'):
  --remote URL               run the VM on a gondolin ws-server (ws:// or
                             wss://; default $GONDOLIN_REMOTE); --mount-hostfs
                             is refused there (it would mean the server's disk)
  --token-file PATH          the server's bearer token (default
                             $GONDOLIN_REMOTE_TOKEN)
  --ca-file PATH             extra CA (PEM) for a wss:// server's certificate
                             (default $GONDOLIN_REMOTE_CA)`;

const EXEC_USAGE = `Usage: gondolin exec [options] -- CMD [ARGS...]

Runs CMD in a fresh VM (no shell: use 'sh -c "..."' for one), streams its
output, and exits with its exit status (128+N when killed by signal N).
Unless stdin is a terminal, it is forwarded to CMD ('echo hi | gondolin exec
-- cat'). Example:
  gondolin exec --mount-hostfs ~/project:/workspace --cwd /workspace -- npm test

${VM_OPTIONS}
  -h, --help           show this help
`;

const BASH_USAGE = `Usage: gondolin bash [options] [-- CMD [ARGS...]]

Starts a fresh VM and an interactive shell in it (bash, or sh if bash is
missing), or CMD on a terminal (pty) when given after '--'; exits with its
status. The VM is closed when it exits. Ctrl-] detaches (exit 130).

${VM_OPTIONS}

SSH into the VM:
  --ssh                start the guest's sshd (loopback only) and a host port
                       forwarded to it; prints the ssh command on stderr
  --ssh-user USER      guest user to log in as (default root)
  --ssh-port PORT      host port, 0-65535 (default 0: any free port)
  --ssh-listen HOST    host address to listen on (default 127.0.0.1)

Ingress (host HTTP gateway into the VM):
  --listen [HOST:]PORT start the ingress gateway (default 127.0.0.1:0) and
                       print its URL on stderr; routes come from
                       /etc/gondolin/listeners in the VM ('/ :8000' per line);
                       --disable-websockets also refuses ingress WebSockets

Checkpoints:
  --resume ID_OR_PATH  start from a checkpoint instead of a fresh VM: a file
                       path, or the name (or a unique prefix) of a snapshot in
                       $GONDOLIN_CHECKPOINT_DIR (default
                       ~/.cache/gondolin/checkpoints; see 'gondolin snapshot')
  -h, --help           show this help
`;

const LIST_USAGE = `Usage: gondolin list [--all]

Lists the VMs running on this machine (any process using gondolin), newest
first: ID, PID, AGE, ALIVE, LABEL. Stale entries (process gone, socket not
answering) are removed first.

Options:
  --all                also show stale entries (ALIVE no), leaving them in place
  -h, --help           show this help
`;

const ATTACH_USAGE = `Usage: gondolin attach ID [options] [-- CMD [ARGS...]]

Runs a command in a VM owned by another process. ID is a session id from
'gondolin list' or a unique prefix of one.

Without CMD: an interactive shell (bash, else sh) with a pty when stdin is a
terminal, else a shell reading a script from stdin. With CMD: runs it without
stdin, streams its output. Exits with the remote status.

Options:
  --cwd PATH           working directory in the guest
  --env KEY=VALUE      environment variable for the shell or CMD (repeatable)
  -h, --help           show this help
`;

const SNAPSHOT_USAGE = `Usage: gondolin snapshot ID [--output PATH | --name NAME] [--memory]

Checkpoints the running VM of session ID (from 'gondolin list', or a unique
prefix) into one file and stops it; 'gondolin bash --resume' starts from it.
The file goes to --output, else to $GONDOLIN_CHECKPOINT_DIR (default
~/.cache/gondolin/checkpoints) as NAME.qcow2 (default: a random id).

Options:
  --output PATH        write the checkpoint to PATH
  --name NAME          name of the checkpoint in the checkpoint directory
  --memory             also save the VM's memory: a resume continues running
                       processes instead of booting (our extension)
  -h, --help           show this help
`;

const BUILD_USAGE = `Usage: gondolin build [options]

Builds the guest image (Debian kernel + rootfs, our init and sandboxd) into
the local image store (~/.cache/gondolin/images/<buildId>/; the default
definition's build is named debian-base:latest). Runs mmdebstrap: as root,
or without root in a user namespace (needs subordinate ids in /etc/subuid and
the uidmap and fakeroot packages); also e2fsprogs and kmod. Then prepares the boot template
for the default VM settings (one VM is booted and saved once), so that later
VMs start without booting.

Options:
  --config FILE        image definition (default: images/debian-base.json):
                       Debian release, packages, postBuild.copy/commands, env,
                       rootfsExtraMiB, runtimeDefaults, oci: { image,
                       platform, pullPolicy } (rootfs from a container image)
  --definition FILE    the same as --config
  --init-config        print a starting definition to edit, and exit
  --verify DIR         check an image directory against its manifest's sha256
  --output DIR         also copy the finished image to DIR
  --tag NAME[:TAG]     name the image in the store (see 'gondolin image')
  --from-oci REF       rootfs from an OCI image instead of mmdebstrap (our
                       extension; the config's oci.image, overridden):
                       oci-layout:PATH[:TAG], a layout directory, or a
                       registry reference (pulled into a local OCI cache as
                       oci.pullPolicy says, default if-not-present; plain
                       http for 127.0.0.1/localhost). Kernel, modules, env
                       and runtimeDefaults still come from the definition
  --oci-pull-policy P  if-not-present | always | never, over oci.pullPolicy
                       (always: ask the registry again, a moved tag rebuilds)
  --no-boot-snapshot   do not prepare the boot template
  --verbose            show mmdebstrap's output
  -q, --quiet          print only the image directory
  -h, --help           show this help
`;

class UsageError extends Error {
  constructor(message, usage) {
    super(message);
    this.usage = usage;
  }
}

function takeValue(args, i, flag, usage) {
  const v = args[i + 1];
  if (v === undefined || v === "--") throw new UsageError(`${flag} requires an argument`, usage);
  return v;
}

function parseEnv(v, usage) {
  if (!v.includes("=") || v.startsWith("=")) throw new UsageError(`--env expects KEY=VALUE (got ${v})`, usage);
  return v;
}

function expandHome(p) {
  return p === "~" || p.startsWith("~/") ? path.join(os.homedir(), p.slice(1)) : p;
}

/** A guest mount point: absolute, normalized, not "/", not given twice. */
function guestMountPath(flag, guest, o, usage) {
  if (!guest.startsWith("/")) {
    throw new UsageError(`${flag}: the guest path must be absolute (got ${guest}; e.g. /workspace)`, usage);
  }
  const p = path.posix.normalize(guest).replace(/\/+$/, "");
  if (!p) throw new UsageError(`${flag}: cannot mount over the guest's root /; pick a directory such as /workspace`, usage);
  if (o.mounts.some((m) => m.guest === p)) {
    throw new UsageError(`${flag}: ${p} is already mounted by an earlier --mount-hostfs/--mount-memfs`, usage);
  }
  return p;
}

/** `--mount-hostfs HOST:GUEST[:ro]` → { host, guest, readonly }. */
function parseHostMount(v, o, usage) {
  const flag = "--mount-hostfs";
  let rest = v;
  let readonly = false;
  if (rest.endsWith(":ro")) {
    readonly = true;
    rest = rest.slice(0, -3);
  } else if (rest.endsWith(":rw")) {
    rest = rest.slice(0, -3);
  }
  const colon = rest.lastIndexOf(":");
  if (colon < 0) throw new UsageError(`${flag} expects HOST:GUEST[:ro] (got ${v}), e.g. ./project:/workspace`, usage);
  const hostArg = rest.slice(0, colon);
  const guestArg = rest.slice(colon + 1);
  if (!hostArg) throw new UsageError(`${flag} ${v}: missing the host directory before ':'`, usage);
  if (!guestArg) throw new UsageError(`${flag} ${v}: missing the guest path after ':' (e.g. ${hostArg}:/workspace)`, usage);
  const host = path.resolve(expandHome(hostArg));
  let st;
  try {
    st = fs.statSync(host);
  } catch {
    throw new UsageError(`${flag} ${v}: host path ${host} does not exist`, usage);
  }
  if (!st.isDirectory()) throw new UsageError(`${flag} ${v}: host path ${host} is not a directory (mount its parent)`, usage);
  return { host, guest: guestMountPath(flag, guestArg, o, usage), readonly };
}

// --- SSH egress ---
function sshFlags(o, usage) {
  return (o.ssh ||= { allowedHosts: [], credentials: {}, knownHosts: [], agent: undefined, usage });
}

/** `--ssh-credential [USER@]HOST[:PORT]=KEY_PATH[,passphrase-env=ENV][,passphrase=...]` (upstream's messages). */
function parseSshCredential(v, ssh, usage) {
  const eq = v.indexOf("=");
  if (eq < 0) throw new UsageError(`Invalid --ssh-credential format: ${v} (expected HOST=KEY_PATH)`, usage);
  const left = v.slice(0, eq).trim();
  const [keyPathRaw, ...opts] = v.slice(eq + 1).split(",");
  const keyPath = keyPathRaw.trim();
  if (!keyPath) throw new UsageError(`Invalid --ssh-credential format: ${v} (missing KEY_PATH)`, usage);
  let username;
  let host = left;
  const at = left.lastIndexOf("@");
  if (at >= 0) {
    username = left.slice(0, at);
    host = left.slice(at + 1);
    if (!username || !host) throw new UsageError(`Invalid --ssh-credential format: ${v} (expected USER@HOST=KEY_PATH)`, usage);
  }
  if (!host) throw new UsageError(`Invalid --ssh-credential format: ${v} (expected HOST=KEY_PATH)`, usage);
  let passphrase;
  let passphraseEnv;
  for (const raw of opts) {
    const opt = raw.trim();
    if (!opt) continue;
    if (opt === "passphrase-ask") {
      throw new UsageError("Invalid --ssh-credential option: passphrase-ask (interactive prompting is not supported; use passphrase-env=ENV)", usage);
    } else if (opt.startsWith("passphrase-env=")) {
      passphraseEnv = opt.slice("passphrase-env=".length);
      if (!passphraseEnv) throw new UsageError("Invalid --ssh-credential option: passphrase-env= (missing env var name)", usage);
    } else if (opt.startsWith("passphrase=")) {
      passphrase = opt.slice("passphrase=".length);
    } else {
      throw new UsageError(`Invalid --ssh-credential option: ${opt}`, usage);
    }
  }
  if (passphrase !== undefined && passphraseEnv !== undefined) {
    throw new UsageError(`Invalid --ssh-credential format: ${v} (cannot combine passphrase and passphrase-env)`, usage);
  }
  if (passphraseEnv !== undefined) {
    passphrase = process.env[passphraseEnv];
    if (passphrase === undefined) throw new UsageError(`--ssh-credential passphrase env var '${passphraseEnv}' is not set (for ${left})`, usage);
  }
  const file = path.resolve(expandHome(keyPath));
  if (!fs.existsSync(file)) throw new UsageError(`SSH key file does not exist: ${file}`, usage);
  ssh.credentials[host] = { privateKey: fs.readFileSync(file, "utf8"), username, passphrase };
  if (!ssh.allowedHosts.includes(host)) ssh.allowedHosts.push(host);
}
// --- end SSH egress ---

function parseVmFlag(args, i, o, usage) {
  const flag = args[i];
  switch (flag) {
    case "--mount-hostfs":
      o.mounts.push(parseHostMount(takeValue(args, i, flag, usage), o, usage));
      return 1;
    case "--mount-memfs":
      o.mounts.push({ guest: guestMountPath(flag, takeValue(args, i, flag, usage), o, usage), memory: true });
      return 1;
    case "--memory":
      o.memory = takeValue(args, i, flag, usage);
      return 1;
    case "--cpus": {
      const v = takeValue(args, i, flag, usage);
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`--cpus must be a positive integer (got ${v})`, usage);
      o.cpus = n;
      return 1;
    }
    case "--image":
      o.image = takeValue(args, i, flag, usage);
      return 1;
    case "--rootfs-mode": {
      const v = takeValue(args, i, flag, usage);
      if (!["readonly", "memory", "cow"].includes(v)) throw new UsageError(`--rootfs-mode must be readonly, memory or cow (got ${v})`, usage);
      o.rootfsMode = v;
      return 1;
    }
    case "--rootfs-size":
      o.rootfsSize = takeValue(args, i, flag, usage);
      return 1;
    case "--env":
      o.env.push(parseEnv(takeValue(args, i, flag, usage), usage));
      return 1;
    case "--cwd":
      o.cwd = takeValue(args, i, flag, usage);
      return 1;
    case "--allow-host":
      (o.allowHosts ||= []).push(takeValue(args, i, flag, usage));
      return 1;
    case "--deny-all-egress":
      o.denyAll = true;
      return 0;
    case "--host-secret": {
      const v = takeValue(args, i, flag, usage);
      const m = /^([A-Za-z_][A-Za-z0-9_]*)@([^=]+)(?:=([\s\S]*))?$/.exec(v);
      if (!m) throw new UsageError(`--host-secret expects NAME@HOST[,HOST...][=VALUE] (got ${v})`, usage);
      const value = m[3] ?? process.env[m[1]];
      if (value === undefined) throw new UsageError(`--host-secret ${m[1]}: no =VALUE given and $${m[1]} is not set`, usage);
      (o.secrets ||= {})[m[1]] = { hosts: m[2].split(",").map((h) => h.trim()).filter(Boolean), value };
      return 1;
    }
    case "--dns": {
      const v = takeValue(args, i, flag, usage);
      if (!["synthetic", "trusted", "open"].includes(v)) throw new UsageError(`--dns must be synthetic, trusted or open (got ${v})`, usage);
      o.dns = v;
      return 1;
    }
    case "--dns-trusted-server":
      (o.dnsServers ||= []).push(takeValue(args, i, flag, usage));
      return 1;
    // --- mapped TCP ---
    case "--tcp-map": {
      const v = takeValue(args, i, flag, usage);
      const eq = v.indexOf("=");
      if (eq <= 0 || eq === v.length - 1) {
        throw new UsageError(`Invalid --tcp-map format: ${v} (expected GUEST_HOST[:PORT]=UPSTREAM_HOST:PORT)`, usage);
      }
      o.tcpMap ||= { hosts: {}, usage };
      // Last wins for the same key (the VM checks the rest: ports, wildcards, duplicates).
      o.tcpMap.hosts[v.slice(0, eq).trim()] = v.slice(eq + 1).trim();
      return 1;
    }
    // --- end mapped TCP ---
    // --- SSH egress ---
    case "--ssh-allow-host": {
      const v = args[i + 1];
      if (v === undefined || v === "--") throw new UsageError("--ssh-allow-host requires a host argument", usage);
      sshFlags(o, usage).allowedHosts.push(v);
      return 1;
    }
    case "--ssh-known-hosts": {
      const v = args[i + 1];
      if (v === undefined || v === "--") throw new UsageError("--ssh-known-hosts requires a path argument", usage);
      sshFlags(o, usage).knownHosts.push(v);
      return 1;
    }
    case "--ssh-agent": {
      const next = args[i + 1];
      const takes = next !== undefined && !next.startsWith("--") && next !== "-h";
      const sock = takes ? next : process.env.SSH_AUTH_SOCK;
      if (!sock) throw new UsageError("--ssh-agent requires a socket path or $SSH_AUTH_SOCK", usage);
      sshFlags(o, usage).agent = sock;
      return takes ? 1 : 0;
    }
    case "--ssh-credential": {
      const v = takeValue(args, i, flag, usage);
      parseSshCredential(v, sshFlags(o, usage), usage);
      return 1;
    }
    // --- end SSH egress ---
    case "--disable-websockets":
      o.noWebSockets = true;
      return 0;
    case "--no-network":
      o.noNetwork = true;
      return 0;
    case "--remote": // remote
      o.remote = takeValue(args, i, flag, usage);
      return 1;
    case "--token-file": // remote
      o.tokenFile = takeValue(args, i, flag, usage);
      return 1;
    case "--ca-file": // remote
      o.caFile = takeValue(args, i, flag, usage);
      return 1;
    default:
      return -1;
  }
}

function vmOptions(o) {
  const options = { sandbox: {} };
  // remote: a ws-server runs the VM (the token from --token-file, else $GONDOLIN_REMOTE_TOKEN)
  if (o.remote || o.tokenFile || o.caFile) {
    options.remote = { url: o.remote ?? process.env.GONDOLIN_REMOTE, tokenFile: o.tokenFile, caFile: o.caFile };
  }
  if (o.memory) options.memory = o.memory;
  if (o.cpus) options.cpus = o.cpus;
  if (o.image) options.sandbox.imagePath = o.image;
  if (o.rootfsMode || o.rootfsSize) options.rootfs = { mode: o.rootfsMode, size: o.rootfsSize };
  if (o.mounts.length) {
    const { RealFSProvider, ReadonlyProvider, MemoryProvider } = require("./vfs.cjs");
    const mounts = {};
    for (const m of o.mounts) {
      if (m.memory) mounts[m.guest] = new MemoryProvider();
      else if (m.readonly) mounts[m.guest] = new ReadonlyProvider(new RealFSProvider(m.host));
      else mounts[m.guest] = new RealFSProvider(m.host);
    }
    options.vfs = { mounts };
  }
  if (o.noNetwork) {
    options.sandbox.netEnabled = false;
    return options;
  }
  const { createHttpHooks } = require("./net.cjs");
  const hooks = createHttpHooks({
    allowedHosts: o.denyAll ? o.allowHosts || [] : o.allowHosts,
    // A host named exactly (no wildcard) may be an internal address
    // (not through a ws-server: its internal network is the server's).
    allowedInternalHosts: options.remote ? undefined : (o.allowHosts || []).filter((h) => !h.includes("*")),
    secrets: o.secrets,
  });
  options.httpHooks = hooks.httpHooks;
  options.env = hooks.env;
  if (o.dns || o.dnsServers) options.dns = { mode: o.dns, trustedServers: o.dnsServers };
  // --- mapped TCP: forces synthetic, per-host DNS ---
  if (o.tcpMap) {
    if (o.dns && o.dns !== "synthetic") throw new UsageError("--tcp-map requires --dns synthetic", o.tcpMap.usage);
    options.tcp = { hosts: o.tcpMap.hosts };
    options.dns = { ...options.dns, mode: "synthetic", syntheticHostMapping: "per-host" };
  }
  // --- end mapped TCP ---
  // --- SSH egress: forces synthetic, per-host DNS ---
  if (o.ssh) {
    if (o.ssh.allowedHosts.length === 0) {
      if (o.ssh.agent) throw new UsageError("--ssh-agent requires at least one --ssh-allow-host (or --ssh-credential)", o.ssh.usage);
    } else {
      if (o.dns && o.dns !== "synthetic") throw new UsageError("--ssh-allow-host requires --dns synthetic", o.ssh.usage);
      options.dns = { ...options.dns, mode: "synthetic", syntheticHostMapping: "per-host" };
      options.ssh = {
        allowedHosts: o.ssh.allowedHosts,
        credentials: Object.keys(o.ssh.credentials).length ? o.ssh.credentials : undefined,
        agent: o.ssh.agent,
        knownHostsFile: o.ssh.knownHosts.length ? o.ssh.knownHosts : undefined,
      };
    }
  }
  // --- end SSH egress ---
  if (o.noWebSockets) options.allowWebSockets = false;
  return options;
}

async function cmdExec(args) {
  const o = { env: [], mounts: [] };
  const dash = args.indexOf("--");
  const before = dash < 0 ? args : args.slice(0, dash);
  for (let i = 0; i < before.length; i++) {
    const a = before[i];
    if (a === "-h" || a === "--help") {
      process.stdout.write(EXEC_USAGE);
      return 0;
    }
    const used = parseVmFlag(before, i, o, EXEC_USAGE);
    if (used < 0) throw new UsageError(`Unknown argument: ${a}`, EXEC_USAGE);
    i += used;
  }
  if (dash < 0) throw new UsageError("missing '--' before the command", EXEC_USAGE);
  const command = args.slice(dash + 1);
  if (command.length === 0) throw new UsageError("missing command after --", EXEC_USAGE);

  const { VM } = require("./vm.cjs");
  const vm = await VM.create(vmOptions(o));
  // A pipe or file on stdin goes to the command; a terminal does not (the
  // command would wait for typing that nobody expects to do).
  const stdin = process.stdin.isTTY ? undefined : process.stdin;
  try {
    const result = await vm.exec(command, { env: o.env, cwd: o.cwd, stdin, stdout: "inherit", stderr: "inherit" });
    if (result.signal != null) process.stderr.write(`process exited due to signal ${result.signal}\n`);
    return result.exitCode;
  } finally {
    // The command may exit without reading all of stdin: stop reading it, or
    // an open pipe would keep this process alive.
    if (stdin) stdin.destroy();
    await vm.close();
  }
}

function parseVmOnly(args, usage) {
  const o = { env: [], mounts: [] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "-h" || a === "--help") return null;
    if (a === "--resume" && usage === BASH_USAGE) {
      // An empty value is an error of its own (resolveResume), not a missing one.
      if (args[i + 1] === undefined || args[i + 1] === "--") throw new UsageError(`${a} requires an argument`, usage);
      o.resume = args[++i];
      continue;
    }
    if (usage === BASH_USAGE && a === "--listen") {
      i += parseListenFlag(args, i, o, usage); // ingress
      continue;
    }
    if (usage === BASH_USAGE && a.startsWith("--ssh") && SSH_FLAGS.has(a)) {
      i += parseSshFlag(args, i, o, usage);
      continue;
    }
    const used = parseVmFlag(args, i, o, usage);
    if (used < 0) throw new UsageError(`Unknown argument: ${a}`, usage);
    i += used;
  }
  return o;
}

// --- bash --ssh (upstream cli.md §3): vm.enableSsh() and print the command ---
const SSH_FLAGS = new Set(["--ssh", "--ssh-user", "--ssh-port", "--ssh-listen"]);

/** One --ssh* flag at args[i]; returns how many extra arguments it took. */
function parseSshFlag(args, i, o, usage) {
  const a = args[i];
  o.sshAccess = o.sshAccess || {};
  if (a === "--ssh") {
    o.sshAccess.enabled = true;
    return 0;
  }
  const v = args[i + 1];
  if (v === undefined || v === "--") throw new UsageError(`${a} requires an argument`, usage);
  if (a === "--ssh-user") o.sshAccess.user = v;
  else if (a === "--ssh-listen") o.sshAccess.listenHost = v;
  else {
    const port = Number(v);
    if (!/^\d+$/.test(v) || port > 65535) throw new UsageError("--ssh-port must be an integer between 0 and 65535", usage);
    o.sshAccess.listenPort = port;
  }
  return 1;
}

/** `--ssh`: enable SSH and tell the user how to connect (stderr, as upstream). */
async function startSsh(vm, o) {
  if (!o.sshAccess || !o.sshAccess.enabled) return;
  const { enabled, ...options } = o.sshAccess;
  const access = await vm.enableSsh(options);
  process.stderr.write(`SSH enabled: ${access.command}\n`);
}

// --- bash --listen (upstream cli.md §3): vm.enableIngress() and print the URL ---

/** Parse a --listen value: `HOST:PORT`, `:PORT`, `PORT`, `[IPv6]:PORT`. */
function parseListenValue(raw, usage) {
  const bad = (why) => new UsageError(`Invalid --listen value: ${raw} (${why})`, usage);
  const v = raw.trim();
  if (!v) throw new UsageError("--listen requires a non-empty value", usage);
  let host = "127.0.0.1";
  let portText = v;
  if (v.startsWith("[")) {
    const end = v.indexOf("]");
    if (end < 0) throw bad("missing ']'");
    host = v.slice(1, end);
    if (!host) throw bad("empty host in brackets");
    if (v[end + 1] !== ":") throw bad("expected :PORT after ]");
    portText = v.slice(end + 2);
  } else if (v.includes(":")) {
    const at = v.lastIndexOf(":");
    host = v.slice(0, at) || "127.0.0.1";
    portText = v.slice(at + 1);
  }
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) throw bad("port must be 0-65535");
  return { listenHost: host, listenPort: port };
}

/** `--listen [VALUE]`: the value is optional (next token unless it starts with `--` or is `-h`). */
function parseListenFlag(args, i, o, usage) {
  const next = args[i + 1];
  if (next === undefined || next.startsWith("--") || next === "-h") {
    o.listen = { listenHost: "127.0.0.1", listenPort: 0 };
    return 0;
  }
  o.listen = parseListenValue(next, usage);
  return 1;
}

/** `--listen`: enable ingress and say where (stderr, upstream's wording). */
async function startIngress(vm, o) {
  if (!o.listen) return;
  const access = await vm.enableIngress({ ...o.listen, allowWebSockets: !o.noWebSockets });
  process.stderr.write(`Ingress enabled: ${access.url}\n`);
  process.stderr.write("Configure routes by editing /etc/gondolin/listeners inside the VM.\n");
}

// bash if the image has it, else sh (one exec, no probe round trip).
// Ctrl-] in an interactive shell: stop forwarding and leave (cli.md).
const DETACHED = Symbol("detached");
const CHECKPOINTED = Symbol("checkpointed");
const DETACH_MESSAGE = "\n[gondolin] detached (Ctrl-])\n";
const DETACH_EXIT = 130;

const SHELL_COMMAND = [
  "/bin/sh",
  "-lc",
  "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec /bin/sh -i; fi",
];
// The same for a script on a non-terminal stdin (no pty, no prompts).
const SCRIPT_SHELL_COMMAND = [
  "/bin/sh",
  "-c",
  "if command -v bash >/dev/null 2>&1; then exec bash -s; else exec /bin/sh -s; fi",
];

function termEnv() {
  const t = process.env.TERM;
  return !t || t === "xterm-ghostty" ? "xterm-256color" : t;
}

async function cmdBash(args) {
  const dash = args.indexOf("--");
  const o = parseVmOnly(dash < 0 ? args : args.slice(0, dash), BASH_USAGE);
  if (!o) {
    process.stdout.write(BASH_USAGE);
    return 0;
  }
  const command = dash < 0 ? SHELL_COMMAND : args.slice(dash + 1);
  if (command.length === 0) throw new UsageError("missing command after --", BASH_USAGE);
  // Resolved before any VM work, so a bad id fails fast (upstream).
  const resume = o.resume !== undefined ? resolveResume(o.resume) : null;
  let vm;
  if (resume) {
    const { VmCheckpoint } = require("./checkpoint.cjs");
    vm = await VmCheckpoint.load(resume).resume(vmOptions(o));
  } else {
    const { VM } = require("./vm.cjs");
    vm = await VM.create(vmOptions(o));
  }
  try {
    await startSsh(vm, o);
    await startIngress(vm, o);
  } catch (err) {
    await vm.close();
    throw err;
  }
  // Terminal gone or asked to stop: close the VM (and its session entry) first.
  const signals = { SIGHUP: 1, SIGTERM: 15 };
  const onSignal = (sig) => {
    vm.close().finally(() => process.exit(128 + signals[sig]));
  };
  for (const sig of Object.keys(signals)) process.on(sig, onSignal);
  try {
    // attach: raw mode on a TTY stdin, stdin → shell, output → our stdout,
    // terminal size now and on every resize.
    const proc = vm.shell({ command, env: o.env, cwd: o.cwd, attach: false });
    let detach;
    const detached = new Promise((resolve) => (detach = resolve));
    proc.attach(process.stdin, process.stdout, process.stderr, { onDetach: () => detach(DETACHED) });
    // 'gondolin snapshot' from another process consumes the VM: the shell
    // ends with it, which is no error here.
    const r = await Promise.race([
      proc.result.catch((err) => {
        if (vm._checkpointed) return CHECKPOINTED;
        throw err;
      }),
      detached,
    ]);
    if (r === DETACHED) {
      proc.result.catch(() => {}); // the shell dies with the VM
      process.stderr.write(DETACH_MESSAGE);
      return DETACH_EXIT;
    }
    if (r === CHECKPOINTED) {
      process.stderr.write("\n[gondolin] the VM was checkpointed ('gondolin snapshot'); the shell ended\n");
      return 0;
    }
    if (r.signal != null) process.stderr.write(`process exited due to signal ${r.signal}\n`);
    return r.exitCode;
  } finally {
    await vm.close();
    for (const sig of Object.keys(signals)) process.off(sig, onSignal);
  }
}

function formatAge(iso) {
  const ms = Date.now() - Date.parse(iso);
  if (!Number.isFinite(ms)) return "?";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

async function cmdList(args) {
  if (args.includes("-h") || args.includes("--help")) {
    process.stdout.write(LIST_USAGE);
    return 0;
  }
  const unknown = args.find((a) => a !== "--all");
  if (unknown !== undefined) throw new UsageError(`Unknown argument: ${unknown}`, LIST_USAGE);
  const { gcSessions, listSessions } = require("./sessions.cjs");
  // --all shows the stale entries too, so they are looked at, not removed.
  const showAll = args.includes("--all");
  if (!showAll) await gcSessions().catch(() => 0);
  const entries = await listSessions();
  const all = showAll ? entries : entries.filter((s) => s.alive);
  if (all.length === 0) {
    process.stdout.write("No sessions.\n");
    return 0;
  }
  const rows = [
    ["ID", "PID", "AGE", "ALIVE", "LABEL"],
    ...all.map((s) => [s.id, String(s.pid), formatAge(s.createdAt), s.alive ? "yes" : "no", s.label || ""]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) {
    process.stdout.write(`${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ")}\n`);
  }
  return 0;
}

async function cmdAttach(args) {
  const dash = args.indexOf("--");
  const before = dash < 0 ? args : args.slice(0, dash);
  const command = dash < 0 ? null : args.slice(dash + 1);
  if (before.includes("-h") || before.includes("--help")) {
    process.stdout.write(ATTACH_USAGE);
    return 0;
  }
  const positional = [];
  const env = [];
  let cwd;
  for (let i = 0; i < before.length; i++) {
    const a = before[i];
    if (a === "--cwd") cwd = takeValue(before, i++, a, ATTACH_USAGE);
    else if (a === "--env") env.push(parseEnv(takeValue(before, i++, a, ATTACH_USAGE), ATTACH_USAGE));
    else if (a.startsWith("-")) throw new UsageError(`Unknown argument: ${a}`, ATTACH_USAGE);
    else positional.push(a);
  }
  if (positional.length === 0) throw new UsageError("attach requires a session id", ATTACH_USAGE);
  if (positional.length > 1) throw new UsageError(`Unknown argument: ${positional[1]}`, ATTACH_USAGE);
  if (command && command.length === 0) throw new UsageError("missing command after --", ATTACH_USAGE);
  const { findSession, gcSessions, connectToSession } = require("./sessions.cjs");
  await gcSessions().catch(() => 0);
  const session = await findSession(positional[0]);
  if (!session || !session.alive) {
    throw new Error(`session not found or not running: ${positional[0]} (see 'gondolin list')`);
  }

  const interactive = !command;
  const tty = interactive && Boolean(process.stdin.isTTY);
  const stdin = process.stdin;
  return new Promise((resolve, reject) => {
    let done = false;
    let started = false;
    const onResize = () => conn.send({ type: "resize", id: 1, rows: process.stdout.rows, cols: process.stdout.columns });
    const onData = (d) => {
      const at = tty ? d.indexOf(0x1d) : -1;
      if (at < 0) return conn.send({ type: "stdin", id: 1, data: d.toString("base64") });
      // Ctrl-]: forward what came before it, leave the remote shell running.
      if (at > 0) conn.send({ type: "stdin", id: 1, data: d.subarray(0, at).toString("base64") });
      process.stderr.write(DETACH_MESSAGE);
      settle(() => resolve(DETACH_EXIT));
    };
    const onEnd = () => conn.send({ type: "stdin", id: 1, eof: true });
    const settle = (fn) => {
      if (done) return;
      done = true;
      if (interactive) {
        stdin.off("data", onData);
        stdin.off("end", onEnd);
        if (tty) {
          stdin.setRawMode(false);
          process.stdout.off("resize", onResize);
        }
        stdin.pause();
      }
      conn.close();
      fn();
    };
    const write = (out, data) => {
      // Stop reading the socket while our stdout is congested.
      if (!out.write(data)) {
        conn.socket.pause();
        out.once("drain", () => conn.socket.resume());
      }
    };
    const conn = connectToSession(session.socketPath, {
      onMessage: (m) => {
        if (done) return;
        if (m.type === "status" && !started) {
          started = true;
          conn.send({
            type: "exec",
            id: 1,
            argv: command || (tty ? SHELL_COMMAND : SCRIPT_SHELL_COMMAND),
            env: interactive ? [`TERM=${termEnv()}`, ...env] : env.length ? env : undefined,
            cwd,
            stdin: interactive,
            pty: tty,
            rows: tty ? process.stdout.rows : undefined,
            cols: tty ? process.stdout.columns : undefined,
          });
          if (interactive) {
            if (tty) {
              stdin.setRawMode(true);
              process.stdout.on("resize", onResize);
            }
            stdin.on("data", onData);
            stdin.once("end", onEnd);
            stdin.resume();
          }
        } else if (m.type === "output" && typeof m.data === "string") {
          write(m.stream === "stderr" ? process.stderr : process.stdout, Buffer.from(m.data, "base64"));
        } else if (m.type === "exit" && m.id === 1) {
          if (m.signal != null) process.stderr.write(`process exited due to signal ${m.signal}\n`);
          settle(() => resolve(m.exitCode));
        } else if (m.type === "error") {
          settle(() => reject(new Error(`error ${m.code}: ${m.message}`)));
        }
      },
      onClose: (err) =>
        settle(() => reject(new Error(`session connection closed${err && err.message ? `: ${err.message}` : ""}`))),
    });
  });
}

async function cmdBuild(args) {
  const o = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    switch (a) {
      case "-h":
      case "--help":
        process.stdout.write(BUILD_USAGE);
        return 0;
      case "--definition":
      case "--config":
        o.definition = path.resolve(takeValue(args, i++, a, BUILD_USAGE));
        break;
      case "--init-config":
        process.stdout.write(initConfig());
        return 0;
      case "--verify":
        return verifyImage(takeValue(args, i++, a, BUILD_USAGE));
      case "--output":
        o.output = path.resolve(takeValue(args, i++, a, BUILD_USAGE));
        break;
      case "--tag":
        o.tag = takeValue(args, i++, a, BUILD_USAGE);
        break;
      case "--from-oci":
        o.fromOci = takeValue(args, i++, a, BUILD_USAGE);
        break;
      case "--oci-pull-policy":
        o.ociPullPolicy = takeValue(args, i++, a, BUILD_USAGE);
        break;
      case "--verbose":
        o.verbose = true;
        break;
      case "--no-boot-snapshot":
        o.noBootSnapshot = true;
        break;
      case "-q":
      case "--quiet":
        o.quiet = true;
        break;
      default:
        throw new UsageError(`Unknown argument: ${a}`, BUILD_USAGE);
    }
  }
  const { buildImage } = require("./image.cjs");
  let image;
  try {
    image = await buildImage(o);
  } catch (err) {
    throw new Error(`Build failed: ${err.message}`);
  }
  const template = o.noBootSnapshot ? null : await prepareBootTemplate(image);
  if (o.quiet) {
    process.stdout.write(`${image.dir}\n`);
  } else {
    process.stdout.write(
      `Build successful!\n  Build ID: ${image.buildId}\n  Image directory: ${image.dir}\n` +
        (o.output ? `  Output directory: ${o.output}\n` : "") +
        (template ? `  Boot template: ${template}\n` : "") +
        (o.tag ? `  Tagged: ${o.tag}\n` : "") +
        `\nUse it: gondolin exec -- uname -a   (or GONDOLIN_GUEST_DIR=${o.output || image.dir})\n`,
    );
  }
  return 0;
}

/** `build --init-config`: the default definition plus the optional steps, to edit. */
function initConfig() {
  const { DEFAULT_DEFINITION } = require("./image.cjs");
  const def = JSON.parse(fs.readFileSync(DEFAULT_DEFINITION, "utf8"));
  const config = {
    ...def,
    postBuild: { copy: [{ src: "./my-file.conf", dest: "/etc/my-file.conf" }], commands: ["apt-get install -y --no-install-recommends jq"] },
    env: { EXAMPLE: "value" },
  };
  return `${JSON.stringify(config, null, 2)}\n`;
}

/** `build --verify DIR`: exit 0 when every asset matches the manifest's sha256. */
async function verifyImage(dir) {
  const { verifyAssets } = require("./image.cjs");
  const bad = await verifyAssets(dir, { details: true });
  if (bad.length === 0) {
    process.stdout.write(`${path.resolve(dir)}: every asset matches manifest.json\n`);
    return 0;
  }
  process.stderr.write(`${path.resolve(dir)}: ${bad.join(", ")} ${bad.length === 1 ? "does" : "do"} not match manifest.json\n`);
  return 1;
}

/**
 * Start and close one VM with the default settings on `image`: the first
 * such VM saves the boot template later VMs resume from. A failure is
 * reported, not fatal (VMs then boot cold and retry the template).
 */
async function prepareBootTemplate(image) {
  if (process.env.GONDOLIN_BOOT_SNAPSHOT === "0") return "skipped (GONDOLIN_BOOT_SNAPSHOT=0)";
  const { VM } = require("./vm.cjs");
  const started = Date.now();
  const vm = new VM({ sandbox: { imagePath: image.dir } });
  try {
    await vm.start();
    const from = vm.info.startedFrom;
    return from === "template"
      ? `already prepared (a VM started from it in ${Date.now() - started} ms)`
      : `prepared in ${Date.now() - started} ms`;
  } catch (err) {
    return `not prepared (${err.message}); VMs boot cold until one prepares it`;
  } finally {
    await vm.close();
  }
}

// --- snapshot / --resume (upstream cli.md §3, §6) ---------------------------

/** Upstream's stem rule: runs outside [a-zA-Z0-9._-] → "-", "-" trimmed at the ends. */
function sanitizeSnapshotName(name) {
  const safe = name.trim().replace(/[^a-zA-Z0-9._-]+/g, "-").replace(/^-+|-+$/g, "");
  return safe || "snapshot";
}

/** The checkpoint file `--resume VALUE` names (cli.md §3), checked before any VM work. */
function resolveResume(value) {
  if (value === "") throw new Error("--resume requires a non-empty checkpoint id or path");
  if (fs.existsSync(value)) return path.resolve(value);
  if (value.includes("/") || value.includes(path.sep)) throw new Error(`checkpoint not found: ${value}`);
  const { checkpointDir } = require("./checkpoint.cjs");
  const dir = checkpointDir();
  const id = value.endsWith(".qcow2") ? value.slice(0, -".qcow2".length) : value;
  let stems = [];
  try {
    stems = fs
      .readdirSync(dir)
      .filter((n) => n.endsWith(".qcow2"))
      .map((n) => n.slice(0, -".qcow2".length));
  } catch {
    // no checkpoint directory yet: nothing matches
  }
  if (stems.includes(id)) return path.join(dir, `${id}.qcow2`);
  const matches = stems.filter((s) => s.startsWith(id)).sort();
  if (matches.length === 0) throw new Error(`checkpoint not found: ${value}`);
  if (matches.length > 1) {
    throw new Error(
      `ambiguous checkpoint id '${value}' matches ${matches.length} snapshots:\n${matches.map((m) => `  ${m}`).join("\n")}`,
    );
  }
  return path.join(dir, `${matches[0]}.qcow2`);
}

async function cmdSnapshot(args) {
  if (args.includes("-h") || args.includes("--help")) {
    process.stdout.write(SNAPSHOT_USAGE);
    return 0;
  }
  const positional = [];
  let output;
  let name;
  let memory = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--output") output = takeValue(args, i++, a, SNAPSHOT_USAGE);
    else if (a === "--name") name = takeValue(args, i++, a, SNAPSHOT_USAGE);
    else if (a === "--memory") memory = true;
    else if (a.startsWith("-")) throw new UsageError(`Unknown argument: ${a}`, SNAPSHOT_USAGE);
    else positional.push(a);
  }
  if (name !== undefined && output !== undefined) {
    throw new UsageError("--name cannot be combined with --output", SNAPSHOT_USAGE);
  }
  if (positional.length === 0) throw new UsageError("snapshot requires a session id", SNAPSHOT_USAGE);
  if (positional.length > 1) throw new UsageError(`Unknown argument: ${positional[1]}`, SNAPSHOT_USAGE);
  const { checkpointDir } = require("./checkpoint.cjs");
  const defaultDir = checkpointDir();
  const target = output !== undefined
    ? path.resolve(output)
    : path.join(defaultDir, `${name !== undefined ? sanitizeSnapshotName(name) : require("node:crypto").randomUUID()}.qcow2`);
  const { findSession, gcSessions, connectToSession } = require("./sessions.cjs");
  await gcSessions().catch(() => 0);
  const session = await findSession(positional[0]);
  if (!session || !session.alive) {
    throw new Error(`session not found or not running: ${positional[0]} (see 'gondolin list')`);
  }
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const written = await new Promise((resolve, reject) => {
    let done = false;
    const settle = (fn) => {
      if (done) return;
      done = true;
      conn.close();
      fn();
    };
    const conn = connectToSession(session.socketPath, {
      onMessage: (m) => {
        if (m.type === "status") {
          conn.send({ type: "snapshot", id: 1, path: target, ...(memory ? { memory: true } : {}) });
        } else if (m.type === "snapshot_response" && m.id === 1) {
          settle(() => resolve(m.path || target));
        } else if (m.type === "error") {
          settle(() => reject(new Error(`error ${m.code}: ${m.message}`)));
        }
      },
      // Upstream: a connection that ends without a reply may still have
      // written the checkpoint; look for a loadable one for up to 2 s.
      onClose: () => settle(() => pollForCheckpoint(target, 2000).then(resolve, reject)),
    });
  });
  const stem = path.parse(written).name;
  const inDefault = path.dirname(written) === defaultDir && path.extname(written) === ".qcow2";
  process.stdout.write(
    `Snapshot created:\n  ID: ${stem}\n  PATH: ${written}\nResume with:\n  gondolin bash --resume ${inDefault ? stem : written}\n`,
  );
  return 0;
}

async function pollForCheckpoint(file, ms) {
  const { VmCheckpoint } = require("./checkpoint.cjs");
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return VmCheckpoint.load(file).path;
    } catch (err) {
      if (Date.now() >= deadline) throw new Error(`session connection closed before the snapshot was confirmed: ${err.message}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main(argv) {
  const [command, ...args] = argv;
  switch (command) {
    case undefined:
      process.stderr.write(USAGE);
      return 1;
    case "help":
    case "-h":
    case "--help":
      process.stdout.write(USAGE);
      return 0;
    case "-V":
    case "--version":
      process.stdout.write(`gondolin ${require("../package.json").version}\n`);
      return 0;
    case "exec":
      return cmdExec(args);
    case "build":
      return cmdBuild(args);
    case "bash":
      return cmdBash(args);
    case "list":
      return cmdList(args);
    case "attach":
      return cmdAttach(args);
    case "snapshot":
      return cmdSnapshot(args);
    case "image":
      return require("./cli-image.cjs").cmdImage(args, UsageError);
    case "ws-server":
      return require("./cli-remote.cjs").cmdWsServer(args, UsageError);
    default:
      process.stderr.write(`Unknown command: ${command}\n${USAGE}`);
      return 1;
  }
}

function render(err) {
  if (err instanceof UsageError) {
    process.stderr.write(`gondolin: ${err.message}\n\n${err.usage}`);
    return 2;
  }
  process.stderr.write(`Error: ${err && err.message ? err.message : String(err)}\n`);
  return 1;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.exitCode = render(err);
    },
  );
}

module.exports = { main, resolveResume, sanitizeSnapshotName };
