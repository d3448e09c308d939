"use strict";
// `gondolin ws-server` (our extension, after upstream's documented command):
// serve VMs to remote clients over docs/remote-protocol.md.

const fs = require("node:fs");
const net = require("node:net");

const WS_SERVER_USAGE = `Usage: gondolin ws-server [options]

Serve VMs over WebSocket (protocol v1, docs/remote-protocol.md) to
VM.create({ remote: { url, token } }), 'gondolin exec --remote URL' and
'gondolin bash --remote URL'.

Options:
  --host HOST            address to listen on (default 127.0.0.1)
  --port PORT            port (default 8080; 0 picks a free one)
  --token-file PATH      file holding the bearer token clients must send
                         (required unless --insecure-no-auth)
  --insecure-no-auth     accept clients without a token; only on a loopback host
  --tls-cert PATH        PEM certificate chain: serve wss:// (with --tls-key)
  --tls-key PATH         PEM private key
  --image SELECTOR       default guest image (a directory, a build id or NAME[:TAG])
  --kernel PATH          guest kernel instead of the image's
  --initrd PATH          guest initrd instead of the image's
  --rootfs PATH          guest root filesystem instead of the image's
  --memory SIZE          default guest memory per VM (default 1G)
  --cpus N               default virtual CPUs per VM (default 2)
  --max-vms N            most VMs at once; further creates get a clear error
                         (default: 4 per host CPU, at least 8)
  --max-memory SIZE      most guest memory summed over VMs, e.g. 16G
                         (default: 3/4 of the host's RAM)
  --allow-internal-egress
                         let clients' VMs reach this machine's internal network
                         (allowedInternalHosts, blockInternalRanges: false,
                         mapped TCP, dns.mode trusted/open, dns.trustedServers);
                         refused by default
  --detach-ttl-ms MS     how long a detached VM waits for a reattach (default 600000)
  --drain-grace-ms MS    on SIGTERM: how long running VMs may finish before
                         they are closed (default 30000); then exit 0

Connection limits (the transport's; defaults suit most servers):
  --max-connections N    open WebSocket connections at once; more get 503 (default 256)
  --max-http-per-ip N    connections not yet upgraded from one address (IPv6:
                         one /64) at once; more are closed (default 32)
  --http-head-timeout-ms MS
                         TLS handshake, then the request head, each within this (default 10000)
  --http-deadline-ms MS  a connection not upgraded within this is closed (default 30000)
  --write-timeout-ms MS  a client that reads nothing for this long while messages
                         wait is disconnected (1008) (default 30000)

On start it prints 'gondolin ws-server listening on ws://HOST:PORT' to stdout.
/healthz, /readyz and /metrics need no token.

Clients may set only env, memory, cpus (at most the host's CPUs), rootfs
(size at most 16G), an image by NAME[:TAG] or build id, HTTP and DNS policy
(bodies at most 64 MiB), tmpfs, vfs mounts served by the client, and
startTimeoutMs (at most 300000; the server always bounds a boot). Host
paths and raw QEMU arguments (qemuPath, accel, machineType, cpu, append)
are refused; see docs/remote-protocol.md.
`;

function isLoopback(host) {
  if (host === "localhost") return true;
  if (net.isIPv4(host)) return host.startsWith("127.");
  return host === "::1";
}

function parseWsServerArgs(args, UsageError) {
  const o = { host: "127.0.0.1", port: 8080, drainGraceMs: 30000 };
  const need = (i, flag) => {
    const v = args[i + 1];
    if (v === undefined) throw new UsageError(`${flag} requires an argument`, WS_SERVER_USAGE);
    return v;
  };
  const int = (v, flag, min, max) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new UsageError(`${flag} must be an integer from ${min} to ${max} (got ${v})`, WS_SERVER_USAGE);
    }
    return n;
  };
  const keys = {
    "--host": "host",
    "--token-file": "tokenFile",
    "--tls-cert": "tlsCert",
    "--tls-key": "tlsKey",
    "--image": "image",
    "--kernel": "kernel",
    "--initrd": "initrd",
    "--rootfs": "rootfs",
    "--memory": "memory",
    "--max-memory": "maxMemory",
  };
  // [option key, min, max]; the transport's limits are 32-bit and its timeouts 100 ms..1 h.
  const U32 = 2 ** 32 - 1;
  const HOUR_MS = 3600000;
  const ints = {
    "--port": ["port", 0, 65535],
    "--cpus": ["cpus", 1, 255],
    "--max-vms": ["maxVms", 1, U32],
    "--detach-ttl-ms": ["detachTtlMs", 0, 2 ** 31 - 1],
    "--drain-grace-ms": ["drainGraceMs", 0, 2 ** 31 - 1],
    "--max-connections": ["maxConnections", 1, U32],
    "--max-http-per-ip": ["maxHttpPerIp", 1, U32],
    "--http-head-timeout-ms": ["httpHeadTimeoutMs", 100, HOUR_MS],
    "--http-deadline-ms": ["httpDeadlineMs", 100, HOUR_MS],
    "--write-timeout-ms": ["writeTimeoutMs", 100, HOUR_MS],
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "-h" || a === "--help") return null;
    if (a === "--insecure-no-auth") o.insecure = true;
    else if (a === "--allow-internal-egress") o.allowInternalEgress = true;
    else if (keys[a]) o[keys[a]] = need(i++, a);
    else if (ints[a]) o[ints[a][0]] = int(need(i++, a), a, ints[a][1], ints[a][2]);
    else throw new UsageError(`Unknown argument: ${a}`, WS_SERVER_USAGE);
  }
  if (!o.tokenFile && !o.insecure) {
    throw new UsageError("--token-file is required (or --insecure-no-auth, allowed only on a loopback --host)", WS_SERVER_USAGE);
  }
  if (o.tokenFile && o.insecure) throw new UsageError("--token-file and --insecure-no-auth exclude each other", WS_SERVER_USAGE);
  if (o.insecure && !isLoopback(o.host)) {
    throw new UsageError(`--insecure-no-auth is allowed only on a loopback --host (got ${o.host}); give --token-file`, WS_SERVER_USAGE);
  }
  if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) throw new UsageError("--tls-cert and --tls-key go together", WS_SERVER_USAGE);
  return o;
}

function readToken(file) {
  const token = fs.readFileSync(file, "utf8").trim();
  if (token.length < 16) throw new Error(`the token in ${file} is shorter than 16 characters; use a random one (e.g. openssl rand -hex 32)`);
  return token;
}

async function cmdWsServer(args, UsageError) {
  const o = parseWsServerArgs(args, UsageError);
  if (!o) {
    process.stdout.write(WS_SERVER_USAGE);
    return 0;
  }
  const { RemoteServerCore } = require("./remote-server.cjs");
  const core = new RemoteServerCore({
    image: o.image,
    kernel: o.kernel,
    initrd: o.initrd,
    rootfs: o.rootfs,
    memory: o.memory,
    cpus: o.cpus,
    maxVms: o.maxVms,
    maxMemory: o.maxMemory,
    detachTtlMs: o.detachTtlMs,
    allowInternalEgress: Boolean(o.allowInternalEgress),
    log: (line) => process.stderr.write(`[ws-server] ${line}\n`),
  });
  const server = await core.listen({
    host: o.host,
    port: o.port,
    token: o.tokenFile ? readToken(o.tokenFile) : undefined,
    tlsCert: o.tlsCert ? fs.readFileSync(o.tlsCert, "utf8") : undefined,
    tlsKey: o.tlsKey ? fs.readFileSync(o.tlsKey, "utf8") : undefined,
    maxConnections: o.maxConnections,
    maxHttpPerIp: o.maxHttpPerIp,
    httpHeadTimeoutMs: o.httpHeadTimeoutMs,
    httpDeadlineMs: o.httpDeadlineMs,
    writeTimeoutMs: o.writeTimeoutMs,
  });
  const scheme = o.tlsCert ? "wss" : "ws";
  const host = o.host.includes(":") ? `[${o.host}]` : o.host;
  process.stdout.write(`gondolin ws-server listening on ${scheme}://${host}:${server.port}\n`);
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (sig) => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`[ws-server] ${sig}: draining (no new VMs; ${o.drainGraceMs} ms grace for ${core.entries.size} running)\n`);
      core.drain(o.drainGraceMs).then(
        () => {
          process.stderr.write("[ws-server] drained\n");
          resolve(0);
          setTimeout(() => process.exit(0), 50);
        },
        (err) => {
          process.stderr.write(`[ws-server] drain failed: ${err.message}\n`);
          resolve(1);
        },
      );
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
  });
}

module.exports = { cmdWsServer, parseWsServerArgs, isLoopback, WS_SERVER_USAGE };
