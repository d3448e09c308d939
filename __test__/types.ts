// Compiled by `make typecheck` (tsc --noEmit): the public types must accept
// the README's usage and reject misuse.
import { VM, type ExecResult, type VMOptions, buildImage, ErrorCodes, type GondolinError, type GondolinErrorCode } from "@gondolin/native";

async function usage(): Promise<void> {
  const options: VMOptions = { memory: "1G", cpus: 2, env: { A: "1" }, rootfs: { mode: "cow" } };
  const vm = await VM.create(options);
  const r: ExecResult = await vm.exec("echo hi", { env: ["B=2"], cwd: "/tmp" });
  const code: number = r.exitCode;
  const out: string = r.stdout;
  const bytes: Buffer = r.stdoutBuffer;
  const lines: string[] = r.lines();
  const parsed = r.json<{ a: number }>();
  void [code, out, bytes, lines, parsed.a, r.ok, r.signal];

  const proc = vm.exec(["cat"], { stdin: true, stdout: "pipe", signal: AbortSignal.timeout(1000) });
  proc.write("data");
  proc.end();
  for await (const chunk of proc) void (chunk satisfies string);
  const killed: boolean = proc.kill("SIGKILL");
  void killed;
  const info = vm.info;
  if (info) void (info.bootMs satisfies number);
  const text: string = await vm.fs.readFile("/etc/hostname", { encoding: "utf8" });
  const buf: Buffer = await vm.fs.readFile("/etc/hostname");
  await vm.fs.writeFile("/tmp/x", Buffer.from(text));
  void buf;
  await vm.close();
  const img = await buildImage({ quiet: true });
  const fromOci: string | undefined = (await buildImage({ quiet: true, fromOci: "oci-layout:/tmp/layout:slim" })).buildId;
  void fromOci;
  void (img.buildId satisfies string);

  // @ts-expect-error rootfs mode is a closed set
  new VM({ rootfs: { mode: "rw" } });
  // @ts-expect-error stdout modes are a closed set
  vm.exec("x", { stdout: "file" });
}
void usage;

// --- Sessions (registry + attach) -------------------------------------------
import { listSessions, findSession, gcSessions, type SessionEntry } from "@gondolin/native";

async function sessionsUsage(): Promise<void> {
  const all: SessionEntry[] = await listSessions();
  for (const s of all) void [s.id satisfies string, s.pid satisfies number, s.alive satisfies boolean, s.label];
  const one = await findSession("abcd");
  if (one) void (one.socketPath satisfies string);
  const removed: number = await gcSessions();
  void removed;
  const labelled = await VM.create({ sessionLabel: "my job" });
  await labelled.close();
  // @ts-expect-error findSession takes a string id or prefix
  await findSession(42);
}
void sessionsUsage;

import {
  MemoryProvider,
  RealFSProvider,
  ReadonlyProvider,
  ShadowProvider,
  createShadowPathPredicate,
  type VirtualProvider,
  type VfsHookContext,
} from "@gondolin/native";

async function vfsUsage(custom: VirtualProvider): Promise<void> {
  const mem = new MemoryProvider();
  await mem.writeFile("/a.txt", "hi");
  const text = await mem.readFile("/a.txt", "utf8");
  void text;
  mem.setReadOnly();
  const real = new RealFSProvider("./project");
  void (real.rootPath satisfies string);
  const vm = await VM.create({
    vfs: {
      fuseMount: "/data",
      mounts: {
        "/workspace": new ShadowProvider(real, { shouldShadow: createShadowPathPredicate([".env"]), writeMode: "tmpfs" }),
        "/docs": new ReadonlyProvider(new RealFSProvider("./docs")),
        "/custom": custom,
      },
      hooks: { before: (ctx: VfsHookContext) => void ctx.op, after: async () => {} },
    },
  });
  await vm.close();
  await VM.create({ vfs: null });
  // @ts-expect-error writeMode is "deny" or "tmpfs"
  new ShadowProvider(mem, { shouldShadow: () => true, writeMode: "hide" });
}
void vfsUsage;

// Network: policy, secrets, DNS, egress events.
import { createHttpHooks, HttpRequestBlockedError, type EgressEvent } from "@gondolin/native";
const policy = createHttpHooks({
  allowedHosts: ["api.example.com", "*.github.com"],
  allowedInternalHosts: ["10.0.0.5"],
  secrets: { TOKEN: { hosts: ["api.example.com"], value: "t" } },
  replaceSecretsInQuery: false,
  isIpAllowed: (info) => info.family === 4,
  onRequest: (req) => (new URL(req.url).pathname === "/x" ? new Response("no", { status: 403 }) : undefined),
  onResponse: async (resp) => new Response(await resp.text(), { status: resp.status }),
});
policy.secretManager.updateSecret("TOKEN", { value: "u" });
const netVm = new VM({
  httpHooks: policy.httpHooks,
  env: policy.env,
  dns: { mode: "synthetic", syntheticHostMapping: "per-host" },
  allowWebSockets: false,
  onEgress: (e: EgressEvent) => void e.decision,
});
void netVm;
void new HttpRequestBlockedError("no", 451, "Unavailable For Legal Reasons").status;
void new VM({ fetch: (req: Request) => fetch(req) });

// Upstream 0.13 placeholders; the callable httpHooks composed with one's own.
import { makePlaceholderFunc, PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC, type SecretPlaceholderMode } from "@gondolin/native";
async function composeUsage(): Promise<void> {
  const mode: SecretPlaceholderMode = "unique";
  const made = createHttpHooks({
    secretPlaceholderMode: mode,
    secrets: {
      A: { hosts: ["a.test"], value: "v", placeholder: "fixed-placeholder-000001" },
      B: { hosts: ["a.test"], value: "w", placeholder: makePlaceholderFunc({ prefix: "AKIA", alphabet: PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC, length: 28 }) },
    },
    onRequestHead: (req) => void req.headers.set("x-audit", "1"),
  });
  const ok: boolean = await made.httpHooks.isIpAllowed({ hostname: "a.test", ip: "1.2.3.4", family: 4, port: 443, protocol: "https" });
  const out: Request | Response = await made.httpHooks.onRequest(new Request("https://a.test/"));
  void ok;
  void out;
  // The seeds' `(req, res) => res` order type-checks (it keeps the response).
  new VM({ httpHooks: { ...made.httpHooks, onResponse: (req, res) => res }, env: made.env });
  // @ts-expect-error secretPlaceholderMode is "shared" or "unique"
  createHttpHooks({ secretPlaceholderMode: "random" });
  // @ts-expect-error unknown createHttpHooks keys are refused
  createHttpHooks({ alowedHosts: [] });
}
void composeUsage;

// Upstream 0.13 options; plain-object providers; unknown keys.
import {
  DEFAULT_GUEST_TMPFS,
  VirtualProvider as VirtualProviderBase,
  type DebugComponent,
  type GuestTmpfsMounts,
} from "@gondolin/native";

async function optionsUsage(): Promise<void> {
  // A plain object with only the methods it needs is a provider.
  const plain: VirtualProvider = {
    readonly: true,
    supportsSymlinks: false,
    statSync: () => ({}) as import("node:fs").Stats,
    readdirSync: () => ["a.txt"],
  };
  class Mine extends VirtualProviderBase {
    readdirSync(): string[] {
      return [];
    }
  }
  const tmpfs: GuestTmpfsMounts = { ...DEFAULT_GUEST_TMPFS, "/tmp": { size: "64m", mode: "1777" }, "/scratch": { size: 1 << 20 } };
  const vm = await VM.create({
    autoStart: false,
    tmpfs,
    vfs: { mounts: { "/data": new MemoryProvider(), "/plain": plain, "/mine": new Mine() } },
    sandbox: { rootOverlay: true, debug: ["*"], debugLog: (c: DebugComponent, m: string) => void [c, m] },
    debugLog: null,
  });
  const pid: number | null = vm.getHostPid();
  void pid;
  vm.setDebugLog((component, message) => void [component satisfies DebugComponent, message]);
  vm.setDebugLog(null);
  await vm.close();
  // @ts-expect-error unknown keys are refused (JS users get an invalid_option error)
  new VM({ memroy: "1G" });
  // @ts-expect-error debug components are a closed set
  new VM({ sandbox: { debug: ["nett"] } });
}
void optionsUsage;

import { type VfsHooks } from "@gondolin/native";

/** The seeds' VFS spellings: ReadonlyProvider(path), content hooks. */
async function vfsParityUsage(): Promise<void> {
  const hooks: VfsHooks = {
    onRead: (path: string, data: Buffer) => (path.endsWith(".txt") ? data : undefined),
    onWrite: async (_path, data, info: { offset: number }) => (info.offset === 0 ? data.toString() : data),
  };
  const vm = await VM.create({
    autoStart: false,
    vfs: { mounts: { "/ro": new ReadonlyProvider("/host/dir") }, hooks },
  });
  await vm.close();
  // @ts-expect-error hooks have a closed set of keys
  const bad: VfsHooks = { onread: () => undefined };
  void bad;
}
void vfsParityUsage;

// Error codes: a closed union, the same list at run time.
async function errorCodes(): Promise<void> {
  try {
    await (await VM.create({})).exec("true");
  } catch (e) {
    const err = e as GondolinError;
    const code: GondolinErrorCode = err.code;
    if (code === "vm_closed" || code === "invalid_option") void err.message;
    // @ts-expect-error not a GondolinErrorCode (one name per mistake: invalid_option)
    if (code === "invalid_argument") void 0;
    void err.cause?.code;
  }
  const all: readonly GondolinErrorCode[] = ErrorCodes;
  void all;
}
void errorCodes;

// --- Checkpoints and boot templates ----------------------------------------
import { VmCheckpoint, type VmCheckpointData } from "@gondolin/native";

async function checkpoints(): Promise<void> {
  const vm = await VM.create({ sandbox: { bootSnapshot: false } });
  const cp: VmCheckpoint = await vm.checkpoint("/tmp/a.qcow2", { memory: true });
  const data: VmCheckpointData = cp.toJSON();
  void (data.memory?.machine.cpus satisfies number | undefined);
  const again: VM = await VmCheckpoint.load(cp.path).resume({ env: { A: "1" } });
  void (again.info?.startedFrom satisfies "boot" | "template" | "checkpoint" | undefined);
  cp.delete();
  // @ts-expect-error memory is a boolean
  await vm.checkpoint("/tmp/b.qcow2", { memory: "yes" });
}
void checkpoints;

// --- Ingress ----------------------------------------------------------------
import {
  IngressRequestBlockedError,
  GondolinListeners,
  parseListenersFile,
  serializeListenersFile,
} from "@gondolin/native";
import type { IngressAccess, EnableIngressOptions, IngressRoute, IngressGatewayHooks } from "@gondolin/native";

async function ingress(): Promise<void> {
  const vm = await VM.create();
  const hooks: IngressGatewayHooks = {
    isAllowed: (info) => info.clientIp === "127.0.0.1" && info.route.port > 0,
    onRequest: (req) => {
      if (req.path === "/x") throw new IngressRequestBlockedError("no", 451, "Unavailable", "nope\n");
      return { backendTarget: req.backendTarget, headers: { "x-a": "1", "x-b": null } };
    },
    onResponse: async (resp) => ({ statusCode: resp.statusCode, body: resp.body, headers: { "x-c": ["1", "2"] } }),
  };
  const options: EnableIngressOptions = { listenPort: 0, allowWebSockets: true, hooks, upstreamHeaderTimeoutMs: 10_000 };
  const access: IngressAccess = await vm.enableIngress(options);
  void (access.url satisfies string);
  const routes: IngressRoute[] = vm.getIngressRoutes();
  vm.setIngressRoutes([...routes, { prefix: "/api", port: 8080, stripPrefix: false }]);
  void (vm.getIngressReloadError() satisfies Error | null);
  const text: string = serializeListenersFile(parseListenersFile("/ :8080\n"));
  const l = new GondolinListeners(new MemoryProvider());
  l.on("reloadError", (e: unknown) => void e);
  void text;
  await access.close();
  // @ts-expect-error listenPort is a number
  await vm.enableIngress({ listenPort: "8080" });
}
void ingress;

// --- SSH into the guest -----------------------------------------------------
import type { SshAccess, EnableSshOptions } from "@gondolin/native";

async function sshIn(): Promise<void> {
  const vm = await VM.create();
  const options: EnableSshOptions = { user: "root", listenHost: "127.0.0.1", listenPort: 0 };
  const access: SshAccess = await vm.enableSsh(options);
  void (access.command satisfies string);
  void (access.port satisfies number);
  await access.close();
  // @ts-expect-error listenPort is a number
  await vm.enableSsh({ listenPort: "22" });
}
void sshIn;

// --- Local image store --------------------------------------------------------
import {
  resolveImageSelector,
  listImageRefs,
  tagImage,
  removeImage,
  importImageFromDirectory,
  getImageObjectDirectory,
  type LocalImageRef,
  type ResolvedImage,
} from "@gondolin/native";

function imageStore(): void {
  const r: ResolvedImage = resolveImageSelector("debian-base:latest", "x86_64");
  void (r.source satisfies "path" | "build-id" | "ref");
  const refs: LocalImageRef[] = listImageRefs();
  void refs[0]?.targets.x86_64;
  const tagged = tagImage(r.assetDir, "mine:v1");
  void (tagged.reference satisfies string);
  void (removeImage("mine:v1").removedBuildId satisfies string | null);
  void (importImageFromDirectory("/tmp/img").created satisfies boolean);
  void (getImageObjectDirectory("0".repeat(32)) satisfies string);
  // @ts-expect-error arch is a closed set
  resolveImageSelector("x", "arm64");
}
void imageStore;

// --- SSH egress (ssh) ---
import { getInfoFromSshExecRequest, type SshOptions, type SshExecRequest, type GitSshExecInfo } from "@gondolin/native";

async function sshEgress(): Promise<void> {
  const ssh: SshOptions = {
    allowedHosts: ["github.com", "[git.corp]:2222"],
    credentials: { "git.corp:2222": { username: "git", privateKey: Buffer.from("..."), passphrase: "pw" } },
    agent: process.env.SSH_AUTH_SOCK,
    knownHostsFile: ["/home/me/.ssh/known_hosts"],
    execPolicy: async (req: SshExecRequest) => {
      const git: GitSshExecInfo | null = getInfoFromSshExecRequest(req);
      if (!git) return { allow: false, exitCode: 2, message: `not git: ${req.command} from ${req.src.ip}:${req.src.port}` };
      return git.service === "git-receive-pack" ? { allow: false } : { allow: true };
    },
    maxUpstreamConnectionsPerTcpSession: 4,
    upstreamReadyTimeoutMs: 15_000,
    upstreams: { "git.corp:2222": "127.0.0.1:2222" },
  };
  const vm = await VM.create({ ssh, dns: { syntheticHostMapping: "per-host" }, onEgress: (e) => void (e.protocol === "ssh") });
  await vm.close();
  await VM.create({ sandbox: { ssh: { allowedHosts: ["h"], hostVerifier: (host: string, key: Buffer, port: number) => key.length > 0 && host !== "" && port > 0 } } });
  // @ts-expect-error allowedHosts is required
  await VM.create({ ssh: { agent: "/tmp/agent.sock" } });
  // @ts-expect-error a denial's exitCode is a number
  const bad: SshOptions = { allowedHosts: [], execPolicy: () => ({ allow: false, exitCode: "1" }) };
  void bad;
}
void sshEgress;
// --- end SSH egress ---

// Images over OCI registries (our extension).
import { pullImage, pushImage, type ImageTransferProgress, type PulledImage, type PushedImage } from "@gondolin/native";
async function ociImages(): Promise<void> {
  const onProgress = (p: ImageTransferProgress): void => {
    const eta: number | null = p.eta;
    void [p.phase, p.done, p.total, p.rate, eta];
  };
  const pushed: PushedImage = await pushImage("debian-base:latest", "127.0.0.1:5000/gondolin/debian-base:v1", {}, onProgress);
  const pulled: PulledImage = await pullImage(pushed.reference, { tag: "mine:v1", insecure: false, dockerConfig: "/x/config.json" }, onProgress);
  const dir: string = pulled.assetDir;
  const created: boolean = pulled.created;
  const tag: string | null = pulled.tag;
  await pullImage("127.0.0.1:5000/gondolin/debian-base:v1", { tag: false, arch: "x86_64" });
  void [dir, created, tag, pushed.uploadedBytes, pulled.image.rootfs];
}
void ociImages;

// ---- remote VMs (our extension) ----
import { RemoteVM } from "@gondolin/native";
async function remoteUsage(): Promise<void> {
  const vm = await VM.create({ remote: { url: "ws://127.0.0.1:8080", token: "t" }, memory: "512M" });
  if (vm instanceof RemoteVM) {
    const token: string = await vm.detach();
    const again = await VM.create({ remote: { url: "ws://127.0.0.1:8080", tokenFile: "/run/token", attach: token } });
    await again.close();
  }
  const local = await VM.create({ remote: false });
  void local;
  // @ts-expect-error remote is an object or false
  await VM.create({ remote: "ws://x" });
}
void remoteUsage;
