// Public types of @gondolin/native. Hand-written; kept in step with js/ by
// __test__/types.ts (type-checked) and __test__/api.test.mjs (export names).

/// <reference types="node" />
import type { Readable } from "node:stream";
import type { EventEmitter } from "node:events";

/**
 * The `code` of every error the API throws or rejects with (filesystem
 * errors excepted: they carry Node's errno names, `ENOENT`, as upstream).
 * One name per kind of mistake, stable across releases. Mirrors the core's
 * `ErrorCode` enum (src/error.rs); the same list at run time: `ErrorCodes`.
 */
export type GondolinErrorCode =
  /** An option or argument is unknown, of the wrong type or out of range (raised when the VM is constructed, before any boot). */
  | "invalid_option"
  /** The call is not available on this object as it is (reading output of an exec whose stdout is not piped, attaching twice, a synchronous VFS call on a provider stack with JS providers). */
  | "invalid_state"
  /** The VM was created with `autoStart: false` and used before `start()`. */
  | "vm_not_started"
  /** The VM was closed (by `close()`) before or while the call ran. */
  | "vm_closed"
  /** QEMU exited on its own while the VM was running. */
  | "vm_exited"
  /** The guest was not ready within `startTimeoutMs`. */
  | "vm_start_timeout"
  /** QEMU or the guest failed while booting. */
  | "vm_boot_failed"
  /** The QEMU binary is not installed (or `sandbox.qemuPath` is wrong). */
  | "qemu_not_found"
  /** `qemu-img` is missing (needed for rootfs mode "cow"). */
  | "qemu_img_not_found"
  /** The copy-on-write root overlay could not be created. */
  | "overlay_failed"
  /** A guest image file (kernel, initrd, rootfs) is missing. */
  | "missing_asset"
  /** Starting QEMU failed at the OS level. */
  | "spawn_failed"
  /** The guest image speaks another protocol version than the host. */
  | "protocol_mismatch"
  /** The guest broke the control protocol; the host stopped trusting it. */
  | "protocol_error"
  /** The control connection to the guest closed. */
  | "connection_closed"
  /** The guest could not mount the host-served filesystem. */
  | "vfs_error"
  /** The guest refused an exec request as malformed. */
  | "invalid_request"
  /** The guest could not start the process. */
  | "exec_failed"
  /** The exec was aborted through its `signal`. */
  | "exec_aborted"
  /** Stdin was written or ended but the exec was started without `stdin`. */
  | "stdin_disabled"
  /** The process already exited. */
  | "exec_exited"
  /** Too many execs are in flight on this VM. */
  | "queue_full"
  /** A real secret value was about to leave for a host not allowed for it. */
  | "secret_refused"
  /** The MITM certificate authority could not be created or loaded. */
  | "mitm_ca_failed"
  /** An image build needs a host tool that is not installed. */
  | "missing_tool"
  /** An image build needs root. */
  | "needs_root"
  /** An image definition is invalid. */
  | "invalid_definition"
  /** A static guest binary is missing (build the guest first). */
  | "missing_guest_binary"
  /** An image directory is not a valid image. */
  | "invalid_image"
  /** An image build step failed. */
  | "build_failed"
  /** Writing a checkpoint failed (QEMU could not save the guest, the disk could not be rebased or the file could not be written). */
  | "checkpoint_failed"
  /** A checkpoint or boot-template file is not one we can resume from (no trailer, unknown version, truncated or damaged). */
  | "invalid_checkpoint"
  /** A remote server refused the bearer token (HTTP 401 on the WebSocket upgrade); nothing was created there. */
  | "remote_unauthorized"
  /** A remote server is draining or at its connection limit (HTTP 503); the message carries its reason. */
  | "remote_unavailable"
  /** The native addon for this platform could not be loaded (raised by the JS loader; listed here so the list is whole). */
  | "native_missing"
  /** Any other host I/O failure (an exec's output stream failing included); `cause` holds the underlying error. */
  | "io_error";

/** Every `GondolinErrorCode`, in declaration order. */
export declare const ErrorCodes: readonly GondolinErrorCode[];

/**
 * An error from the API: a plain `Error` (a `TypeError` for option checks
 * done in JS) with a real `code` property.
 */
export interface GondolinError extends Error {
  code: GondolinErrorCode;
  /**
   * The underlying failure, when there is one: for OS errors an `Error` with
   * Node's errno name as `code` (`ENOENT`) and a negative `errno`.
   */
  cause?: Error & { code?: string; errno?: number };
}

export type EnvInput = string[] | Record<string, string>;
export type RootfsMode = "readonly" | "memory" | "cow";

export interface VmRootfsOptions {
  /** default: the image manifest's runtimeDefaults.rootfsMode, else "cow" */
  mode?: RootfsMode;
  /**
   * Grow the root disk to this size (QEMU size syntax with a unit: "8G",
   * "10240M", "1T"; at most 16T) and the guest's ext4 with it, online, right
   * after start (QMP block_resize + resize2fs: ~0.1–0.5 s under TCG). Not
   * below the image's size, not with mode "readonly" (`invalid_option`).
   * Default: the image's size (about 1.2 GB, ~0.5 GB free). Upstream sets
   * the size at build time (`rootfs.sizeMb`); this is per VM.
   */
  size?: string;
}

/** Low-level backend options (`VMOptions.sandbox`). */
export interface SandboxOptions {
  /**
   * Guest image selector: a directory holding manifest.json, a build id, or
   * a `name[:tag]` ref in the local store (see "Local image store"). Default:
   * $GONDOLIN_DEFAULT_IMAGE, else debian-base:latest, built on first use.
   */
  imagePath?: string;
  /** default: "1G" */
  memory?: string;
  /** default: 2 */
  cpus?: number;
  /** QEMU binary; default qemu-system-<host arch> */
  qemuPath?: string;
  /** "kvm" | "hvf" | "tcg" | any QEMU -accel value; default: detected ($GONDOLIN_ACCEL overrides) */
  accel?: string;
  /** QEMU -machine; default "q35" */
  machineType?: string;
  /** QEMU -cpu; default "host" with KVM/HVF, "max" with TCG ($GONDOLIN_CPU overrides) */
  cpu?: string;
  /** Replaces the image's base kernel command line. */
  append?: string;
  /**
   * Debug components: true = all, or a list ("net", "exec", "vfs", "protocol",
   * "vm", "*"; aliases "fs", "network", "sandbox"). Default: $GONDOLIN_DEBUG.
   * "vm" also echoes the guest console and QEMU's stderr to stderr.
   */
  debug?: DebugConfig;
  /** Same as VMOptions.debugLog (VMOptions wins). */
  debugLog?: DebugLogFn | null;
  /** true: writable root whose changes are discarded (rootfs.mode "cow"); false: rootfs.mode "readonly". */
  rootOverlay?: boolean;
  /** Same as VMOptions.tmpfs (this one wins). */
  tmpfs?: GuestTmpfsMounts;
  /** Provider exposed at the FUSE root (alternative to VMOptions.vfs). */
  vfsProvider?: VirtualProvider;
  /** false: no network device at all. Default: true. */
  netEnabled?: boolean;
  httpHooks?: HttpHooks;
  dns?: DnsOptions;
  /** Same as VMOptions.tcp (this one wins). */
  tcp?: TcpOptions;
  /** Same as VMOptions.ssh (this one wins). */
  ssh?: SshOptions;
  allowWebSockets?: boolean;
  maxHttpBodyBytes?: number;
  /**
   * Start from a boot template instead of booting (our extension). The first
   * VM of a given image + memory + cpus + machine + accelerator saves a memory
   * snapshot right after its guest is ready, before any user work, under
   * `$GONDOLIN_TEMPLATE_DIR` (default `~/.cache/gondolin/templates`); later
   * VMs with the same settings resume from it (`info.startedFrom` is then
   * "template"). Per-VM settings (env, VFS mounts, httpHooks, secrets) are
   * applied after the resume. A damaged template falls back to a cold boot.
   * Default: true, unless `GONDOLIN_BOOT_SNAPSHOT=0`; false = always boot.
   */
  bootSnapshot?: boolean;
}

/** Where the guest sees host-served files. */
export interface VmVfsOptions {
  /** Absolute guest path -> provider. Each non-"/" key is bind-mounted at that path before any exec. */
  mounts?: Record<string, VirtualProvider>;
  hooks?: VfsHooks;
  /**
   * Where the provider root is mounted in the guest; default "/data", or
   * "/run/gondolin/vfs" when a mount lies at or under /data. Must not
   * collide with a mount.
   */
  fuseMount?: string;
}

/** The operation a `vfs.hooks` hook or a shadow predicate is asked about (upstream's `ctx.op` names). */
export type VfsHookOp = "stat" | "lstat" | "readdir" | "open" | "read" | "write" | "fstat" | "release" | "truncate" | "chmod" | "chown" | "utimes" | "mkdir" | "rmdir" | "unlink" | "rename" | "link" | "symlink" | "readlink" | "realpath" | "statfs" | "access";

export interface VfsHookContext {
  op: VfsHookOp;
  path?: string;
  oldPath?: string;
  newPath?: string;
  flags?: string | number;
  mode?: number;
  fh?: number;
  offset?: number;
  length?: number;
  size?: number;
  /** On "after": bytes read/written, entries listed, else 0. */
  result?: unknown;
}

/** What a content hook may return: new bytes, or nothing to keep the chunk. */
export type VfsContentHookResult = Buffer | Uint8Array | string | void | null | undefined;

/**
 * Unknown keys are refused when the VM is created (naming the nearest one).
 * Paths are guest paths relative to the FUSE root (a mount's key included).
 */
export interface VfsHooks {
  /** Throwing aborts the operation (errno from err.code, else EIO). */
  before?: (context: VfsHookContext) => void | Promise<void>;
  after?: (context: VfsHookContext) => void | Promise<void>;
  /**
   * Called once per read request the host serves, with that chunk of the
   * file (`data`, read at `info.offset`; at most 1 MiB), never the whole
   * file: a `cat` of a large file calls it several times. Returned bytes
   * replace the chunk (cut to the requested length); a shorter result
   * looks like end of file to that read. `stat` still reports the stored
   * size, so keep replacements the same length. The guest keeps no file
   * data across opens while this hook exists; reads within one open may be
   * answered from its page cache. Throwing fails the read (errno from
   * err.code, else EIO).
   */
  onRead?: (path: string, data: Buffer, info: { offset: number }) => VfsContentHookResult | Promise<VfsContentHookResult>;
  /**
   * Called once per write request, with the chunk the guest writes at
   * `info.offset` (the kernel may split or merge the guest's writes).
   * Returned bytes are written at that offset instead; the guest is told
   * its whole chunk was written. Throwing fails the write.
   */
  onWrite?: (path: string, data: Buffer, info: { offset: number }) => VfsContentHookResult | Promise<VfsContentHookResult>;
}

export interface VfsStatfs {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  frsize: number;
  namelen: number;
}

export interface VirtualFileHandle {
  read(buffer: Buffer, offset: number, length: number, position?: number | null): Promise<{ bytesRead: number; buffer: Buffer }>;
  readSync?(buffer: Buffer, offset: number, length: number, position?: number | null): number;
  write(buffer: Buffer, offset: number, length: number, position?: number | null): Promise<{ bytesWritten: number; buffer: Buffer }>;
  writeSync?(buffer: Buffer, offset: number, length: number, position?: number | null): number;
  readFile?(options?: { encoding?: BufferEncoding } | BufferEncoding): Promise<Buffer | string>;
  writeFile?(data: Buffer | string, options?: { encoding?: BufferEncoding }): Promise<void>;
  stat(options?: object): Promise<import("node:fs").Stats>;
  truncate(len?: number): Promise<void>;
  close(): Promise<void>;
  path?: string;
  flags?: string;
  mode?: number;
  position?: number;
  closed?: boolean;
}

type Stats = import("node:fs").Stats;
type Dirent = { name: string; isDirectory(): boolean; isFile(): boolean; isSymbolicLink(): boolean };

/**
 * A filesystem served to the guest. Paths are absolute POSIX paths rooted at
 * the mount. Errors are Node ErrnoExceptions (`code`, `errno`, `syscall`, `path`).
 * Each method may be async or have only its `...Sync` form.
 */
export interface VirtualProvider {
  readonly readonly: boolean;
  readonly supportsSymlinks: boolean;
  open?(path: string, flags: string, mode?: number): Promise<VirtualFileHandle>;
  openSync?(path: string, flags: string, mode?: number): VirtualFileHandle;
  stat?(path: string, options?: object): Promise<Stats>;
  statSync?(path: string, options?: object): Stats;
  lstat?(path: string, options?: object): Promise<Stats>;
  lstatSync?(path: string, options?: object): Stats;
  readdir?(path: string, options?: object): Promise<Array<string | Dirent>>;
  readdirSync?(path: string, options?: object): Array<string | Dirent>;
  mkdir?(path: string, options?: object): Promise<void | string>;
  mkdirSync?(path: string, options?: object): void | string;
  rmdir?(path: string): Promise<void>;
  rmdirSync?(path: string): void;
  unlink?(path: string): Promise<void>;
  unlinkSync?(path: string): void;
  rename?(oldPath: string, newPath: string): Promise<void>;
  renameSync?(oldPath: string, newPath: string): void;
  link?(existingPath: string, newPath: string): Promise<void>;
  linkSync?(existingPath: string, newPath: string): void;
  readFile?(path: string, options?: object | BufferEncoding): Promise<Buffer | string>;
  readFileSync?(path: string, options?: object | BufferEncoding): Buffer | string;
  writeFile?(path: string, data: Buffer | string, options?: object): Promise<void>;
  writeFileSync?(path: string, data: Buffer | string, options?: object): void;
  appendFile?(path: string, data: Buffer | string, options?: object): Promise<void>;
  exists?(path: string): Promise<boolean>;
  existsSync?(path: string): boolean;
  copyFile?(src: string, dest: string, mode?: number): Promise<void>;
  realpath?(path: string, options?: object): Promise<string>;
  realpathSync?(path: string, options?: object): string;
  access?(path: string, mode?: number): Promise<void>;
  accessSync?(path: string, mode?: number): void;
  readlink?(path: string, options?: object): Promise<string>;
  readlinkSync?(path: string, options?: object): string;
  symlink?(target: string, path: string, type?: string): Promise<void>;
  symlinkSync?(target: string, path: string, type?: string): void;
  statfs?(path: string): Promise<VfsStatfs>;
  close?(): Promise<void> | void;
}

/** Built-in providers: Rust implementations, with every method (async and Sync). */
declare class NativeBackedProvider implements VirtualProvider {
  readonly readonly: boolean;
  readonly supportsSymlinks: boolean;
  readonly supportsWatch: boolean;
  open(path: string, flags?: string, mode?: number): Promise<VirtualFileHandle>;
  openSync(path: string, flags?: string, mode?: number): VirtualFileHandle;
  stat(path: string): Promise<Stats>;
  statSync(path: string): Stats;
  lstat(path: string): Promise<Stats>;
  lstatSync(path: string): Stats;
  readdir(path: string, options?: { withFileTypes?: boolean }): Promise<Array<string | Dirent>>;
  readdirSync(path: string, options?: { withFileTypes?: boolean }): Array<string | Dirent>;
  mkdir(path: string, options?: { recursive?: boolean; mode?: number }): Promise<void | string>;
  mkdirSync(path: string, options?: { recursive?: boolean; mode?: number }): void | string;
  rmdir(path: string): Promise<void>;
  rmdirSync(path: string): void;
  unlink(path: string): Promise<void>;
  unlinkSync(path: string): void;
  rename(oldPath: string, newPath: string): Promise<void>;
  renameSync(oldPath: string, newPath: string): void;
  link(existingPath: string, newPath: string): Promise<void>;
  linkSync(existingPath: string, newPath: string): void;
  symlink(target: string, path: string): Promise<void>;
  symlinkSync(target: string, path: string): void;
  readlink(path: string): Promise<string>;
  readlinkSync(path: string): string;
  realpath(path: string): Promise<string>;
  realpathSync(path: string): string;
  access(path: string, mode?: number): Promise<void>;
  accessSync(path: string, mode?: number): void;
  statfs(path: string): Promise<VfsStatfs>;
  truncate(path: string, len?: number): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  utimes(path: string, atime: Date | number, mtime: Date | number): Promise<void>;
  exists(path: string): Promise<boolean>;
  existsSync(path: string): boolean;
  readFile(path: string, options?: { encoding?: BufferEncoding } | BufferEncoding): Promise<Buffer | string>;
  readFileSync(path: string, options?: { encoding?: BufferEncoding } | BufferEncoding): Buffer | string;
  writeFile(path: string, data: Buffer | Uint8Array | string, options?: { encoding?: BufferEncoding; mode?: number; flag?: string }): Promise<void>;
  writeFileSync(path: string, data: Buffer | Uint8Array | string, options?: { encoding?: BufferEncoding; mode?: number; flag?: string }): void;
  appendFile(path: string, data: Buffer | Uint8Array | string, options?: object | BufferEncoding): Promise<void>;
  appendFileSync(path: string, data: Buffer | Uint8Array | string, options?: object | BufferEncoding): void;
  copyFile(src: string, dest: string): Promise<void>;
  copyFileSync(src: string, dest: string): void;
  close(): Promise<void>;
}

export interface MemoryProviderOptions {
  /** Most bytes of file contents the tree holds, in all (default 1 GiB = 1073741824). Our extension. */
  capacityBytes?: number;
}

/**
 * Files held in the host's memory. At most `capacityBytes` (default 1 GiB)
 * of file contents in all (our bound, not upstream's): a write or truncate
 * past it fails ENOSPC. Bad options throw `invalid_option`.
 */
export declare class MemoryProvider extends NativeBackedProvider {
  constructor(options?: MemoryProviderOptions);
  /** After this, every mutation fails with EROFS. */
  setReadOnly(): void;
}

export interface RealFSProviderOptions {
  /**
   * Let the guest change the owner/group of host files (our extension).
   * Default false: an ownership change fails with EPERM (setting the
   * current owner succeeds, so `cp -p` and `tar` work).
   */
  allowChown?: boolean;
}

export declare class RealFSProvider extends NativeBackedProvider {
  /**
   * rootPath = realpath(resolve(rootPath)); "" throws. Symlinks cannot escape it.
   * setuid/setgid (and sticky on files) are never applied to host files.
   */
  constructor(rootPath: string, options?: RealFSProviderOptions);
  readonly rootPath: string;
}

export declare class ReadonlyProvider extends NativeBackedProvider {
  /** `backend` as a host directory path is short for `new RealFSProvider(path)`. */
  constructor(backend: VirtualProvider | string);
  readonly backend: VirtualProvider;
}

export type ShadowWriteMode = "deny" | "tmpfs";
export type ShadowContext = { op: VfsHookOp; path: string; flags?: string; oldPath?: string; newPath?: string };
export type ShadowPredicate = (ctx: ShadowContext) => boolean | Promise<boolean>;
export interface ShadowProviderOptions {
  shouldShadow: ShadowPredicate;
  /** default "deny" */
  writeMode?: ShadowWriteMode;
  /** Upper layer for "tmpfs" mode; default a new MemoryProvider. */
  tmpfs?: VirtualProvider;
  /** default true: also checks backend.realpath(path) against the predicate */
  denySymlinkBypass?: boolean;
  /** default EACCES */
  denyWriteErrno?: number;
}

export declare class ShadowProvider extends NativeBackedProvider {
  constructor(backend: VirtualProvider, options: ShadowProviderOptions);
  readonly backend: VirtualProvider;
}

/** Exact path or descendants; "x" means "/x"; "/" is ignored; no globs. Runs natively. */
export declare function createShadowPathPredicate(shadowPaths: string[]): ShadowPredicate;

/**
 * Base for user providers: capability flags default to false. A class of its
 * own name would merge with the VirtualProvider interface and make every
 * plain-object provider declare its members, so the value is typed here.
 */
export interface VirtualProviderBase {
  readonly readonly: boolean;
  readonly supportsSymlinks: boolean;
  readonly supportsWatch: boolean;
}
export interface VirtualProviderConstructor {
  new (): VirtualProviderBase;
  readonly prototype: VirtualProviderBase;
}
export declare const VirtualProvider: VirtualProviderConstructor;
export declare const VirtualProviderClass: VirtualProviderConstructor;

/** Read-only provider base: implement the four abstract methods; writes fail with EROFS. */
export declare abstract class ReadonlyVirtualProvider extends VirtualProvider implements VirtualProvider {
  protected abstract openReadonlySync(entryPath: string, flags: string, mode?: number): VirtualFileHandle;
  abstract statSync(entryPath: string, options?: object): Stats;
  abstract lstatSync(entryPath: string, options?: object): Stats;
  abstract readdirSync(entryPath: string, options?: object): Array<string | Dirent>;
  openSync(path: string, flags?: string, mode?: number): VirtualFileHandle;
  open(path: string, flags?: string, mode?: number): Promise<VirtualFileHandle>;
  stat(path: string): Promise<Stats>;
  lstat(path: string): Promise<Stats>;
  readdir(path: string): Promise<Array<string | Dirent>>;
}

export declare const MAX_RPC_DATA: number;
export declare const ERRNO: typeof import("node:os").constants.errno;
export declare function normalizeVfsPath(inputPath: string): string;
export declare function isWriteFlag(flags: string): boolean;
export declare class VirtualDirent {
  readonly name: string;
  constructor(name: string);
  isDirectory(): boolean;
  isFile(): boolean;
  isSymbolicLink(): boolean;
}
export declare function createVirtualDirStats(): Stats;
export declare function formatVirtualEntries(entries: string[], withTypes: boolean): string[] | VirtualDirent[];

/** One guest scratch tmpfs. */
export interface GuestTmpfsMountOptions {
  /** Bytes, a k/m/g suffixed size, or a % of guest memory; default: half the guest memory. */
  size?: string | number;
  /** Octal mode of the mount root; default "1777". */
  mode?: string;
}
/** Guest path -> options. Replaces the built-in set; {} keeps those paths on the root disk. */
export type GuestTmpfsMounts = Record<string, GuestTmpfsMountOptions>;
/** The built-in scratch mounts (/tmp, /root 0700, /var/tmp, /var/cache, /var/log). */
export declare const DEFAULT_GUEST_TMPFS: Readonly<GuestTmpfsMounts>;

export type DebugFlag = "net" | "exec" | "vfs" | "protocol" | "vm";
export type DebugConfig = boolean | ReadonlyArray<DebugFlag | "*" | "all" | "fs" | "network" | "sandbox">;
export type DebugComponent = DebugFlag | "qemu" | "error";
export type DebugLogFn = (component: DebugComponent, message: string) => void;

/**
 * Every key is checked when the VM is constructed: an unknown key (or a bad
 * value) throws an error with code "invalid_option" naming the nearest valid key.
 */
/**
 * Where a remote VM runs (our extension; docs/remote-protocol.md): a
 * `gondolin ws-server`. The VM object behaves as a local one (exec, shell,
 * fs, close); httpHooks, fetch, onEgress, vfs.hooks and VFS providers
 * run in this process and are called across the connection.
 */
export interface RemoteOptions {
  /** `ws://host:port` or `wss://host:port` (default `$GONDOLIN_REMOTE`). */
  url?: string;
  /** Bearer token (default: `tokenFile`'s content, else `$GONDOLIN_REMOTE_TOKEN`). */
  token?: string;
  /** File holding the token (read once, trimmed). */
  tokenFile?: string;
  /** A token from `vm.detach()`: reattach to that VM instead of creating one. */
  attach?: string;
  /** Extra PEM CA certificate(s) trusted for `wss://` (besides the system's roots). */
  ca?: string;
  /** A file holding `ca` (default: `$GONDOLIN_REMOTE_CA`, a path). */
  caFile?: string;
}

export interface VMOptions {
  /**
   * Our extension: run the VM on a `gondolin ws-server` (only through
   * `VM.create`; `new VM` refuses it). Unset: `$GONDOLIN_REMOTE` decides
   * (with `$GONDOLIN_REMOTE_TOKEN`); `false`: always this machine.
   * Refused on a remote VM, each with a message naming it: a RealFSProvider
   * mount (its path would be the server's disk), createHttpHooks secrets,
   * ssh, and any non-JSON option other than httpHooks, fetch, onEgress,
   * vfs.hooks and VFS providers (those run in this process). The server
   * takes only an allowlist of options (docs/remote-protocol.md, "What a
   * client may set"): raw QEMU and host-path options (sandbox.qemuPath,
   * accel, machineType, cpu, append, rootOverlay) and an imagePath that is
   * a path are refused ("invalid_option", naming the option); imagePath
   * must be NAME[:TAG] or a build id in the server's store. The server
   * clamps cpus (its CPU count), rootfs.size (16G), HTTP body limits
   * (64 MiB) and startTimeoutMs (300000; 0 / unset also get 300000).
   * Egress that reaches internal addresses (allowedInternalHosts,
   * blockInternalRanges: false, tcp.hosts, dns.mode "trusted" / "open",
   * dns.trustedServers) is refused unless the server runs with
   * --allow-internal-egress. The server's `--max-vms` / `--max-memory`
   * refusal has code "queue_full"; a refused token "remote_unauthorized",
   * a draining or full server at connect "remote_unavailable", an
   * unreachable one "io_error"; a connection lost later fails calls with
   * "connection_closed" / "vm_closed".
   */
  remote?: RemoteOptions | false;
  sandbox?: SandboxOptions;
  rootfs?: VmRootfsOptions;
  /**
   * default true: the first exec / guest vm.fs call boots the VM (as
   * upstream, VM.create() never boots). false: no implicit boot; such a
   * call before start() rejects with code "vm_not_started" (upstream 0.13).
   */
  autoStart?: boolean;
  /** Guest scratch tmpfs mounts; default DEFAULT_GUEST_TMPFS. */
  tmpfs?: GuestTmpfsMounts;
  /** Sink for debug lines; default console.log("[component] message"); null = silent. */
  debugLog?: DebugLogFn | null;
  /** Default environment of every exec (per-exec env wins per key). */
  env?: EnvInput;
  /** default: "1G" (QEMU size syntax); at least 128M */
  memory?: string;
  /** default: 2 */
  cpus?: number;
  /** default: 120000 ($GONDOLIN_START_TIMEOUT_MS); <= 0 disables */
  startTimeoutMs?: number;
  /** Shown by `gondolin list`; default: process.argv.join(" ") */
  sessionLabel?: string;
  /**
   * Host-served filesystem. Default: an empty MemoryProvider at /data plus
   * /etc/gondolin. null: no VFS at all.
   */
  vfs?: VmVfsOptions | null;
  /**
   * Egress policy, usually `createHttpHooks(...).httpHooks`. Without it every
   * host is allowed but internal address ranges (loopback, RFC 1918,
   * link-local/metadata, CGNAT) stay blocked — upstream allows those too.
   */
  httpHooks?: HttpHooks;
  dns?: DnsOptions;
  /** Host-mapped raw TCP egress (see TcpOptions). */
  tcp?: TcpOptions;
  /** SSH egress proxy for the guest's ssh/git (see SshOptions). */
  ssh?: SshOptions;
  /**
   * Upstream client for HTTP(S) egress instead of the built-in one (it gets
   * the policy-checked request with secrets filled in; redirects stay
   * manual and are followed by the host). The built-in client's
   * connect-time address check does not apply to a custom fetch.
   */
  fetch?: (request: Request) => Promise<Response>;
  /** default: true — egress WebSocket upgrades */
  allowWebSockets?: boolean;
  /** default: 64 MiB — larger request bodies get 413 */
  maxHttpBodyBytes?: number;
  /** default: 64 MiB — responses buffered for onResponse beyond this get 502 */
  maxHttpResponseBodyBytes?: number;
  /** Audit trail: one event per HTTP(S) request, mapped TCP flow, SSH exec or refused flow. */
  onEgress?: (event: EgressEvent) => void;
}

export type DnsMode = "open" | "trusted" | "synthetic";
export type SyntheticDnsHostMappingMode = "single" | "per-host";
export interface DnsOptions {
  /** default: "synthetic" */
  mode?: DnsMode;
  /** IPv4 only; default: the host's resolv.conf IPv4 servers */
  trustedServers?: string[];
  /** default: "192.0.2.1" */
  syntheticIPv4?: string;
  /** default: "2001:db8::1" */
  syntheticIPv6?: string;
  /** default: 60 */
  syntheticTtlSeconds?: number;
  /** default: "single", or "per-host" when `tcp.hosts` maps anything or `ssh.allowedHosts` allows any host */
  syntheticHostMapping?: SyntheticDnsHostMappingMode;
}

// --- mapped TCP (tcp.hosts) ---
/**
 * Host-mapped raw TCP egress (upstream's TcpOptions). The guest connects to
 * a name; the host connects to the mapped upstream and copies bytes both
 * ways (half-close honoured), before any protocol sniffing, so protocols
 * whose server speaks first (MySQL, SSH, SMTP) work. Mapped flows bypass
 * HTTP hooks, the allowlist and secrets; unmapped names and ports are
 * refused as before.
 *
 * Keys: `"HOST"`, `"HOST:PORT"` or `"[IPv6]:PORT"`, lowercased, trailing dots
 * stripped; `HOST:PORT` wins over `HOST` (which maps every port). Values:
 * `"UPSTREAM_HOST:PORT"`, the port explicit, the host a name (resolved on
 * the host) or an IP literal. Needs `dns.mode` "synthetic" (the default)
 * with `syntheticHostMapping` "per-host" (turned on when unset).
 *
 * Errors (`invalid_option`, at construction, upstream's messages):
 * `tcp.hosts key must not be empty`, `tcp.hosts key has invalid bracket
 * syntax: X`, `tcp.hosts key has invalid port: X`, `tcp.hosts key port must
 * be in range 1..65535: X`, `tcp.hosts value requires an explicit :PORT: X`,
 * `tcp.hosts key does not support wildcard '*': X`, `duplicate tcp.hosts
 * mapping for K`, `tcp host mapping requires dns mode 'synthetic'`,
 * `tcp host mapping requires dns syntheticHostMapping='per-host'`.
 *
 * Limits (ours): 128 mapped flows per VM (more are reset and recorded
 * `reason: "too-many-mapped-flows"`), a 10 s upstream connect (then the guest
 * flow is reset), 64 KiB buffered each way. Each flow is one EgressEvent:
 * `protocol: "tcp"`, `host: "name:port"` as the guest dialled it, `bytes` =
 * bytes sent to the guest; a failed upstream connect is `decision: "deny"`
 * with `reason: "upstream connect failed: ..."`.
 */
export interface TcpOptions {
  /** "HOST" | "HOST:PORT" | "[IPv6]:PORT" -> "UPSTREAM_HOST:UPSTREAM_PORT" */
  hosts: Record<string, string>;
}
// --- end mapped TCP ---

// --- SSH egress (ssh) ---
/** A host-side private key for SSH egress (upstream's SshCredential). */
export interface SshCredential {
  /** Upstream login name. Default: "git". */
  username?: string;
  /** OpenSSH or PEM private key (ed25519, ECDSA, RSA). Read at construction. */
  privateKey: string | Buffer;
  passphrase?: string | Buffer;
}

/** What `execPolicy` is asked about: one guest `exec` request. */
export interface SshExecRequest {
  /** The guest's name for the upstream (lowercase). */
  hostname: string;
  /** The port the guest dialled. */
  port: number;
  /** The user name the guest's ssh client logged in with (not checked). */
  guestUsername: string;
  /** The command exactly as the guest's client sent it. */
  command: string;
  /** The guest's end of the connection. */
  src: { ip: string; port: number };
}

/** Deny: `message` plus a newline goes to the guest's stderr; exit status `exitCode` (default 1). */
export type SshExecDecision = { allow: true } | { allow: false; exitCode?: number; message?: string };
export type SshExecPolicy = (request: SshExecRequest) => SshExecDecision | Promise<SshExecDecision>;

/**
 * SSH egress proxy (upstream's SshOptions). The guest's `ssh`/`git` connect
 * to an allowed `host:port` by name; the host terminates that SSH session
 * itself (ident `SSH-2.0-gondolin-ssh-proxy`, a host key made per VM,
 * every guest authentication accepted: the guest holds no secret), runs
 * each `exec` request past `execPolicy`, then opens its own connection to
 * the real upstream, checks the upstream's host key (known_hosts or
 * `hostVerifier`; unknown keys are refused), authenticates with
 * `credentials` or the ssh-agent, and pipes stdin, stdout, stderr, exit
 * status and EOF. The private key and the agent never reach the guest.
 * Shells get `gondolin ssh proxy: interactive shells are not supported`
 * (exit 1); subsystems (sftp) are refused; upstream failures give
 * `gondolin ssh proxy error: <why>` on stderr and exit 255.
 *
 * Needs `dns.mode` "synthetic" (the default) with `syntheticHostMapping`
 * "per-host" (turned on when unset). Errors (`invalid_option`, at
 * construction, upstream's messages): `ssh egress requires dns mode
 * 'synthetic'`, `ssh egress requires dns syntheticHostMapping='per-host'`,
 * `ssh egress requires at least one credential or ssh agent (direct ssh is
 * not supported)`, `ssh egress requires ssh.hostVerifier to validate
 * upstream host keys (failed to load known_hosts: no OpenSSH known_hosts
 * files found (tried ...))`; ours: `ssh.credentials["K"]: cannot read the
 * private key: ...`, `ssh.<limit> must be an integer > 0`.
 *
 * Default exec policy (ours; upstream runs every command when no
 * `execPolicy` is given): only `git-upload-pack`, `git-receive-pack` and
 * `git-upload-archive` on a plain `org/repo` path (see
 * getInfoFromSshExecRequest), others exit 1 with a message. Pass
 * `execPolicy: () => ({ allow: true })` for upstream's behaviour.
 *
 * Each exec is one EgressEvent: `protocol: "ssh"`, `host: "name:port"`,
 * `method: "exec"`, `url` = the command (first 256 bytes), `bytes` = stdout
 * bytes sent to the guest; a refused exec or upstream failure is
 * `decision: "deny"` with the reason; an SSH flow to a host not allowed is
 * reset and recorded `reason: "policy-deny"`. Limits: 32 guest SSH
 * connections per VM (more are reset, `reason: "too-many-ssh-flows"`), 8
 * channels per connection, 30 s for the guest's identification line,
 * 10 min guest idle,
 * `execPolicy`/`hostVerifier` calls bounded to 30 s.
 */
export interface SshOptions {
  /** "pattern", "pattern:PORT" or "[pattern]:PORT" ('*' wildcards); default port 22. Empty = SSH egress off. */
  allowedHosts: string[];
  /** Key: host pattern[:PORT] as in allowedHosts. */
  credentials?: Record<string, SshCredential>;
  /** ssh-agent socket path (e.g. process.env.SSH_AUTH_SOCK); used when no credential matches. Login name: the guest's, else "git". */
  agent?: string;
  /** default: ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts (hashed entries, [host]:port, wildcards, @revoked understood) */
  knownHostsFile?: string | string[];
  /** Allow or deny each exec (see the default above). */
  execPolicy?: SshExecPolicy;
  /** default: 4 (integer > 0) */
  maxUpstreamConnectionsPerTcpSession?: number;
  /** default: 64 (integer > 0), per VM */
  maxUpstreamConnectionsTotal?: number;
  /** default: 15000 ms (integer > 0): connect + host key + auth + exec */
  upstreamReadyTimeoutMs?: number;
  /** default: 10000 ms (integer >= 0; 0 = off) */
  upstreamKeepaliveIntervalMs?: number;
  /** default: 3 */
  upstreamKeepaliveCountMax?: number;
  /** Guest-facing host key (OpenSSH/PEM private key). Default: an ed25519 key made per VM on first use (upstream: RSA-3072). */
  hostKey?: string | Buffer;
  /** Replaces known_hosts: `key` is the upstream's public key in SSH wire form. */
  hostVerifier?: (hostname: string, key: Buffer, port: number) => boolean | Promise<boolean>;
  /**
   * Our extension: where the host dials for a guest name, `"HOST"` or
   * `"HOST:PORT"` → `"UPSTREAM_HOST:PORT"` (e.g. a test sshd on
   * 127.0.0.1). Host keys are still checked against the guest's name and port.
   */
  upstreams?: Record<string, string>;
}

export interface GitSshExecInfo {
  /** e.g. "git-upload-pack" */
  service: string;
  /** e.g. "org/repo.git" (leading "~/", "/" and trailing "/" removed) */
  repo: string;
}
/**
 * Upstream's git-over-SSH parser: `{ service, repo }` when the command is
 * exactly `git-<service> <repo>` (optionally a path to the service; shell
 * quotes and escapes understood) with a conservative `org/repo` path (no
 * `..`, no leading `-`, no shell metacharacters); otherwise null.
 */
export declare function getInfoFromSshExecRequest(req: SshExecRequest): GitSshExecInfo | null;
// --- end SSH egress ---

export interface HttpIpAllowInfo {
  hostname: string;
  ip: string;
  family: 4 | 6;
  port: number;
  protocol: "http" | "https";
}

/**
 * Egress hooks. Usually made by createHttpHooks (whose allowlist, internal
 * ranges and secrets run natively); a plain object with these members works
 * too. Hooks that see bodies get them buffered (up to maxHttpBodyBytes /
 * maxHttpResponseBodyBytes); a hook that throws fails only its request
 * (HttpRequestBlockedError → its status, anything else → 502).
 */
export interface HttpHooks {
  /** Head-only view (no body). */
  isRequestAllowed?: (request: Request) => Promise<boolean> | boolean;
  /** Each resolved address, after the built-in internal-range check. */
  isIpAllowed?: (info: HttpIpAllowInfo) => Promise<boolean> | boolean;
  /**
   * The request head only (`request.body` is null), before the body is read:
   * rewrite the head (return a Request or edit this one in place; the body
   * streams on as the guest sent it), answer (return a Response), or keep.
   * Runs before onRequest. (Upstream had this hook from 0.3 to 0.7.)
   */
  onRequestHead?: (request: Request) => Promise<Request | Response | void> | Request | Response | void;
  /** Rewrite (return a Request or edit this one in place), answer (return a Response), or keep. */
  onRequest?: (request: Request) => Promise<Request | Response | void> | Request | Response | void;
  /**
   * Replace the response (return a Response) or keep it (return nothing, or
   * the `request` argument: `(req, res) => res` written in the opposite
   * order hands back the Request, and keeps the response).
   */
  onResponse?: (response: Response, request: Request) => Promise<Response | Request | void> | Response | Request | void;
}

export declare class HttpRequestBlockedError extends Error {
  status: number;
  statusText: string;
  /** "secret_refused" when the request carried a secret for a host not allowed for it (our extension). */
  code?: "secret_refused";
  constructor(message?: string, status?: number, statusText?: string);
}

export interface SecretDefinition {
  hosts: string[];
  value: string;
  /**
   * What the guest sees instead of the value: a string (at least 16 visible
   * ASCII characters, distinct from the other placeholders), or a function
   * called once with the secret's name (see makePlaceholderFunc). Default:
   * per secretPlaceholderMode.
   */
  placeholder?: string | ((name: string) => string);
}

/**
 * "shared" (default): `<marker>.<NAME>`, one random marker
 * (`GONDOLIN_SECRET_` + 48 hex) per createHttpHooks call.
 * "unique": `GONDOLIN_SECRET_` + 48 random hex per secret (use it when the
 * guest gets only some placeholders: in shared mode one placeholder and a
 * secret's name make that secret's placeholder).
 */
export type SecretPlaceholderMode = "shared" | "unique";

export interface MakePlaceholderOptions {
  /** default: "" */
  prefix?: string;
  /** default: PLACEHOLDER_ALPHABET_ALPHANUMERIC; distinct visible ASCII characters */
  alphabet?: string;
  /** random characters; default 32. length × log2(alphabet size) must be at least 128 bits */
  length?: number;
}
/** A placeholder generator: `prefix` + `length` characters drawn uniformly (crypto RNG) from `alphabet`. */
export declare function makePlaceholderFunc(options?: MakePlaceholderOptions): (name: string) => string;
/** "0123456789abcdef" */
export declare const PLACEHOLDER_ALPHABET_HEX: string;
/** A-Z a-z 0-9 */
export declare const PLACEHOLDER_ALPHABET_ALPHANUMERIC: string;
/** A-Z 0-9 */
export declare const PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC: string;
/** A-Z a-z 0-9 - _ */
export declare const PLACEHOLDER_ALPHABET_BASE64URL: string;

export interface CreateHttpHooksOptions {
  /**
   * undefined = every host; [] = none. Globs: `*` matches any run of
   * characters. Regex-looking patterns (`.*`, `^…$`, `(a|b)`, `\.`) are
   * refused (code "invalid_option"), in every host list.
   */
  allowedHosts?: string[];
  /** May resolve to internal addresses; implicitly allowed. */
  allowedInternalHosts?: string[];
  /** key = guest environment variable name */
  secrets?: Record<string, SecretDefinition>;
  /** default: false */
  replaceSecretsInQuery?: boolean;
  /** default: true */
  blockInternalRanges?: boolean;
  /** default: "shared" */
  secretPlaceholderMode?: SecretPlaceholderMode;
  isRequestAllowed?: HttpHooks["isRequestAllowed"];
  /** Consulted only after the allowlist and internal checks pass. */
  isIpAllowed?: HttpHooks["isIpAllowed"];
  onRequestHead?: HttpHooks["onRequestHead"];
  onRequest?: HttpHooks["onRequest"];
  onResponse?: HttpHooks["onResponse"];
}

export interface UpdateSecretOptions {
  value?: string;
  hosts?: string[];
}
export interface SecretManagerEntry {
  name: string;
  placeholder: string;
  hosts: string[];
  deleted: boolean;
}
export interface SecretManager {
  listSecrets(): SecretManagerEntry[];
  updateSecret(name: string, options: UpdateSecretOptions): void;
  deleteSecret(name: string): void;
}
/**
 * createHttpHooks' hooks, callable directly (the built-in rules run in the
 * native code the VM uses). Compose them (`{ ...httpHooks, onResponse }`):
 * the VM still runs the built-in rules natively and calls JS only for the
 * members you added or replaced.
 */
export interface CreatedHttpHooks extends HttpHooks {
  /** The user's isRequestAllowed, or true. */
  isRequestAllowed: (request: Request) => Promise<boolean>;
  /** allowedHosts, then internal ranges (unless allowedInternalHosts), then the user's isIpAllowed. */
  isIpAllowed: (info: HttpIpAllowInfo) => Promise<boolean>;
  /**
   * The user's onRequest, then secrets filled in for the request's host.
   * Resolves to the request (edited in place) when the user hook returns
   * nothing; a Response short-circuits; a wrong return type rejects with a
   * TypeError; a secret headed elsewhere rejects with HttpRequestBlockedError.
   */
  onRequest: (request: Request) => Promise<Request | Response>;
}

export interface CreateHttpHooksResult {
  httpHooks: CreatedHttpHooks;
  /** { NAME: placeholder } — pass as VMOptions.env */
  env: Record<string, string>;
  allowedHosts: string[];
  secretManager: SecretManager;
}
export declare function createHttpHooks(options?: CreateHttpHooksOptions): CreateHttpHooksResult;

export interface EgressEvent {
  protocol: "http" | "https" | "tcp" | "ssh";
  host: string;
  method?: string;
  /** As the guest sent it: placeholders, never secret values. */
  url?: string;
  decision: "allow" | "deny";
  reason?: string;
  status?: number;
  /** Response body bytes delivered to the guest (mapped TCP: every byte sent to the guest; SSH: the exec's stdout bytes). */
  bytes: number;
}

export type ExecOutputMode = "buffer" | "pipe" | "inherit" | "ignore" | NodeJS.WritableStream;

export interface ExecOptions {
  /** String form only: extra positional parameters ($1, $2, ...). */
  argv?: string[];
  env?: EnvInput;
  /** Absolute guest path. */
  cwd?: string;
  /** true = write()/end() by hand; or data/stream fed then closed. */
  stdin?: boolean | string | Buffer | Readable | AsyncIterable<Buffer | Uint8Array | string>;
  pty?: boolean;
  /** default: "utf-8" */
  encoding?: BufferEncoding;
  /** Aborting kills the guest process and rejects with "exec aborted". */
  signal?: AbortSignal;
  /** default: "buffer" ("ignore" when buffer: false) */
  stdout?: ExecOutputMode;
  stderr?: ExecOutputMode;
  /** Output credit per stream; default 262144, clamped to [4096, 16 MiB]. */
  windowBytes?: number;
  /** default true; false makes unspecified stdout/stderr "ignore". */
  buffer?: boolean;
}

export declare class ExecResult {
  readonly id: number;
  /** 128+N when killed by signal N */
  readonly exitCode: number;
  readonly signal?: number;
  get stdout(): string;
  get stderr(): string;
  get stdoutBuffer(): Buffer;
  get stderrBuffer(): Buffer;
  get ok(): boolean;
  json<T = unknown>(): T;
  lines(): string[];
  toString(): string;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: Buffer;
  text: string;
}

export declare class ExecProcess implements PromiseLike<ExecResult>, AsyncIterable<string> {
  get id(): number;
  get result(): Promise<ExecResult>;
  then<R1 = ExecResult, R2 = never>(
    onfulfilled?: ((value: ExecResult) => R1 | PromiseLike<R1>) | null,
    onrejected?: ((reason: unknown) => R2 | PromiseLike<R2>) | null,
  ): Promise<R1 | R2>;
  catch<R = never>(onrejected?: ((reason: unknown) => R | PromiseLike<R>) | null): Promise<ExecResult | R>;
  finally(onfinally?: (() => void) | null): Promise<ExecResult>;
  write(data: string | Buffer): void;
  end(): void;
  resize(rows: number, cols: number): void;
  /** Signal the guest process group (default SIGTERM). Returns false if it already exited. */
  kill(signal?: NodeJS.Signals | number): boolean;
  [Symbol.asyncIterator](): AsyncIterator<string>;
  output(): AsyncIterable<OutputChunk>;
  lines(): AsyncIterable<string>;
  get stdout(): Readable | null;
  get stderr(): Readable | null;
  attach(stdin: NodeJS.ReadStream, stdout: NodeJS.WriteStream, stderr?: NodeJS.WriteStream): void;
}

export interface ShellOptions {
  /** default: ["/bin/bash", "-i"] */
  command?: string | string[];
  env?: EnvInput;
  cwd?: string;
  signal?: AbortSignal;
  /** default: process.stdin.isTTY */
  attach?: boolean;
}

export interface VmInfo {
  accel: string;
  bootMs: number;
  qemuPid?: number;
  tempDir: string;
  /**
   * Set when the boot ran past the slow-boot mark (30 s, GONDOLIN_SLOW_BOOT_MS):
   * what the host waited for, the console tail, QEMU's run state, which
   * virtio ports the guest opened and each vCPU's registers (our extension;
   * the same text ends a vm_start_timeout message).
   */
  slowBootReport?: string;
  /**
   * How this VM started (our extension): "boot" = a cold kernel boot,
   * "template" = resumed from a boot template (`sandbox.bootSnapshot`),
   * "checkpoint" = resumed from a `VmCheckpoint`.
   */
  startedFrom: "boot" | "template" | "checkpoint";
}

export interface VmFsOptions {
  /** Base for relative paths (absolute guest path). */
  cwd?: string;
  signal?: AbortSignal;
}

/**
 * Host-side file helpers for any guest path. Each call is one short guest
 * process, so calls run beside long-running execs (upstream queues them).
 * Errors carry a Node-style `code` (ENOENT, EACCES, EISDIR, ...).
 */
export interface VmFs {
  access(filePath: string, options?: VmFsOptions & { mode?: number }): Promise<void>;
  mkdir(dirPath: string, options?: VmFsOptions & { recursive?: boolean; mode?: number }): Promise<void>;
  listDir(dirPath: string, options?: VmFsOptions): Promise<string[]>;
  stat(filePath: string, options?: VmFsOptions): Promise<import("node:fs").Stats>;
  rename(oldPath: string, newPath: string, options?: VmFsOptions): Promise<void>;
  readFileStream(filePath: string, options?: VmFsOptions & { chunkSize?: number; highWaterMark?: number }): Promise<Readable>;
  readFile(filePath: string, options: VmFsOptions & { encoding: BufferEncoding }): Promise<string>;
  readFile(filePath: string, options?: VmFsOptions & { encoding?: null }): Promise<Buffer>;
  writeFile(
    filePath: string,
    data: string | Buffer | Uint8Array | Readable | AsyncIterable<Buffer | Uint8Array>,
    options?: VmFsOptions & { encoding?: BufferEncoding },
  ): Promise<void>;
  /** Refuses `/` and its equivalents. */
  deleteFile(filePath: string, options?: VmFsOptions & { force?: boolean; recursive?: boolean }): Promise<void>;
}

export declare class VM {
  /**
   * Resolves the guest image (building it on first use); does not boot
   * (start() or the first use does). With `options.remote` (or
   * `$GONDOLIN_REMOTE`), connects and creates the VM on that server; the
   * result is a RemoteVM (still `instanceof VM`).
   */
  static create(options?: VMOptions): Promise<VM>;
  constructor(options?: VMOptions);
  readonly id: string;
  readonly fs: VmFs;
  /** Boot if needed and wait until the guest is ready; concurrent calls share one boot. */
  start(): Promise<void>;
  /**
   * Stop QEMU and remove every temp file; idempotent. During a boot
   * (ours) it kills QEMU at once and the pending start() rejects with
   * "vm_closed", instead of waiting for the boot to end.
   */
  close(): Promise<void>;
  exec(command: string | string[], options?: ExecOptions): ExecProcess;
  shell(options?: ShellOptions): ExecProcess;
  /**
   * SSH into the guest (upstream API): starts the guest's own sshd on its
   * loopback (127.0.0.1:22, key login only, no forwarding) and a host TCP
   * port piped to it through the VM's network stack. Each call that starts
   * it makes a fresh ed25519 key with the host's `ssh-keygen` in a temp
   * directory; only the public half enters the guest. Idempotent while the
   * access is open; closed with the VM. Boots the VM if needed.
   *
   * Errors: "failed to run ssh-keygen (needed for vm.enableSsh): …"
   * (`missing_tool`); "ssh user 'X' does not exist in guest image
   * (vm.enableSsh({ user }))" (`invalid_option`); "sshd not available in
   * guest image. …" and "failed to configure ssh in guest (exit N): …"
   * (`exec_failed`); "ssh port-forward is not available: …" (`io_error`,
   * no banner within 10 s); a taken listen address (`io_error`); a VM
   * without a network (`invalid_option`).
   */
  enableSsh(options?: EnableSshOptions): Promise<SshAccess>;
  /**
   * The ingress gateway (upstream API): a host HTTP/1.1 server whose
   * requests reach servers on the guest's loopback, routed by
   * `/etc/gondolin/listeners` (longest prefix wins; see `IngressRoute`).
   * Each request opens a fresh TCP connection into the guest through the
   * VM's network stack (no guest daemon). Idempotent while the access is
   * open; closed with the VM. Boots the VM if needed.
   *
   * Answers of its own (text/plain, upstream's): 404 "no route\n", 403
   * "forbidden\n" (`isAllowed` false), 502 "bad gateway\n" (the guest
   * refused, timed out, or a hook threw; details only under
   * `GONDOLIN_DEBUG=net`), 426 for upgrade intent without an upgrade, 501
   * when WebSockets are disabled.
   *
   * Errors: "ingress requires the /etc/gondolin mount. Ensure VFS is enabled
   * and that /etc/gondolin is not overridden by a custom mount."
   * (`invalid_state`, upstream's message); a VM without a network
   * (`invalid_state`, ours: upstream's transport is not the network); a
   * taken listen address (`io_error`); bad options (`invalid_option`).
   */
  enableIngress(options?: EnableIngressOptions): Promise<IngressAccess>;
  /** The current ingress routes; [] without the /etc/gondolin mount (upstream). */
  getIngressRoutes(): IngressRoute[];
  /**
   * Replace the routes and rewrite `/etc/gondolin/listeners` in canonical
   * form (upstream). Throws "/etc/gondolin mount is not available"
   * (`invalid_state`) without the mount, and upstream's validation messages
   * (`invalid_option`): "invalid ingress route prefix", "invalid ingress
   * route port: P", "invalid ingress route stripPrefix".
   */
  setIngressRoutes(routes: IngressRoute[]): void;
  /**
   * Why the last reload of `/etc/gondolin/listeners` failed (the previous
   * routes stayed), as an Error with code `invalid_option`; null when the
   * last reload worked. Our extension (upstream emits `reloadError` on its
   * internal GondolinListeners).
   */
  getIngressReloadError(): Error | null;
  /** null until booted. */
  get info(): VmInfo | null;
  /** QEMU's process id; null before boot and after close. */
  getHostPid(): number | null;
  /** Replace the debug sink (null silences it); the enabled components are fixed at construction. */
  setDebugLog(callback: DebugLogFn | null): void;
  /**
   * Save this VM into one checkpoint file and consume it (as upstream): QEMU
   * stops, the VM closes, and `start()` afterwards rejects with "vm was
   * checkpointed and cannot be restarted; resume the checkpoint instead".
   * Boots the VM first if it never ran. The file (mode 0600) is a qcow2
   * overlay of the root disk backed by the image's rootfs, plus a JSON
   * trailer (see `VmCheckpointData`).
   *
   * `options.memory` (our extension; default false) also saves RAM and device
   * state: `resume()` then continues the guest where it was (running
   * processes, open listeners, files in tmpfs) instead of booting it.
   * Without it the checkpoint is upstream's disk-only one; tmpfs paths and
   * VFS data are not captured.
   *
   * Errors (code `invalid_option`): "checkpointPath is required",
   * "checkpointPath must be an absolute path (got: P)", "cannot checkpoint:
   * root disk is running in ephemeral snapshot mode" (rootfs.mode "memory"),
   * "cannot checkpoint: root disk must be qcow2 (got raw)" (rootfs.mode
   * "readonly").
   */
  checkpoint(checkpointPath: string, options?: CheckpointOptions): Promise<VmCheckpoint>;
}

/** Options of `vm.enableSsh()` (upstream). */
export interface EnableSshOptions {
  /** Guest user to log in as; must exist in the image. Default "root". */
  user?: string;
  /** Host address to listen on (an IP address; "localhost" means 127.0.0.1). Default "127.0.0.1". */
  listenHost?: string;
  /** Host port; 0 = ephemeral. Default 0. */
  listenPort?: number;
}

/** What `vm.enableSsh()` gives (upstream). */
export interface SshAccess {
  host: string;
  port: number;
  user: string;
  /** The private key (a temp file, mode 0600), removed by `close()`. */
  identityFile: string;
  /** A ready-to-run `ssh -p PORT -i KEY … user@host`. */
  command: string;
  /** Stop the host port and delete the key; the guest's sshd keeps running. */
  close(): Promise<void>;
}

/** Options of `vm.checkpoint()`. */
export interface CheckpointOptions {
  /** Also save RAM and device state so a resume continues running (our extension). Default false. */
  memory?: boolean;
}

/** The machine a memory checkpoint must resume on (our extension to the trailer). */
/** The machine a memory checkpoint's saved state loads into (a QEMU migration stream only loads into the same RAM size and device set). */
export interface VmCheckpointMachine {
  /** Guest RAM in MiB. */
  memoryMib: number;
  cpus: number;
  /** QEMU machine type when not the default (q35). */
  machine?: string;
  /** QEMU CPU model when not the default for the accelerator. */
  cpu?: string;
  /** The QEMU `-accel` value it ran under. */
  accel: string;
  /** The kernel command line it booted with. */
  cmdline: string;
  /** Whether it has a network device. */
  net: boolean;
}

/** A checkpoint file's JSON trailer (upstream's schema; `memory` is ours). */
export interface VmCheckpointData {
  version: 1;
  name: string;
  /** ISO 8601 */
  createdAt: string;
  /** Basename of the checkpoint file (kept for upstream schema compatibility). */
  diskFile: string;
  /** buildId of the image the checkpoint's disk is backed by. */
  guestAssetBuildId: string;
  /** "memory" (our extension) when RAM and device state are saved too. */
  snapshotKind?: "disk" | "memory";
  createdWithVmm?: "qemu" | "krun";
  compatibleVmm?: ("qemu" | "krun")[];
  /**
   * Memory checkpoints only (our extension): where the migration stream sits
   * in the file (byte offset and length), its SHA-256 (hex), and the machine
   * it needs. A resume uses this machine shape, not the VM options' memory/cpus.
   */
  memory?: {
    stateOffset: number;
    stateLength: number;
    stateSha256: string;
    machine: VmCheckpointMachine;
  };
}

/**
 * A checkpoint file (upstream api.md §9). Resume it as many times as you
 * like, at once: each resumed VM writes to its own overlay, removed on close.
 */
export declare class VmCheckpoint {
  /** `baseVmOptions`: the options resume() starts from (those of the VM that was checkpointed; null when loaded). */
  constructor(checkpointPath: string, data: VmCheckpointData, baseVmOptions?: VMOptions | null);
  get name(): string;
  /** The checkpoint file, absolute. */
  get path(): string;
  /** dirname(path) */
  get dir(): string;
  /** Same as path. */
  get diskPath(): string;
  get guestAssetBuildId(): string;
  toJSON(): VmCheckpointData;
  /**
   * A new VM (not yet started, like `VM.create`) from this checkpoint: its
   * options are `baseVmOptions` with `options` merged over them (shallow;
   * `sandbox` one level deep). The image is the one with the checkpoint's
   * buildId: `sandbox.imagePath` (it must match: "guest assets do not match
   * checkpoint buildId"), else `GONDOLIN_GUEST_DIR` if it is that build, else
   * the image store; none → "Unable to locate guest assets for checkpoint
   * buildId=..." (code `missing_asset`). A memory checkpoint continues
   * running; its saved machine shape wins over `memory`/`cpus`.
   */
  resume(options?: VMOptions): Promise<VM>;
  /** @deprecated use resume() */
  clone(options?: VMOptions): Promise<VM>;
  /**
   * Read a checkpoint's trailer. Errors (upstream's texts): a directory, a
   * legacy checkpoint.json, a file with no trailer, an unsupported version,
   * an invalid trailer length (a truncated file).
   */
  static load(checkpointPath: string): VmCheckpoint;
  /** Remove the checkpoint file; no error if it is gone. */
  delete(): void;
  /** Write `data` as the trailer of the checkpoint file `diskPath` (replacing one that is there). */
  static writeTrailer(diskPath: string, data: VmCheckpointData): void;
}

export interface GuestImage {
  dir: string;
  buildId: string;
  arch: string;
  kernel: string;
  initrd: string;
  rootfs: string;
  cmdline: string;
  defaultRootfsMode?: RootfsMode;
  /** `KEY=VALUE` entries every exec in this image starts with (the definition's `env`); the VM's and the exec's `env` override them. */
  defaultEnv: string[];
}

export interface BuildImageOptions {
  /**
   * Image definition JSON (`gondolin build --config`); default
   * images/debian-base.json. Fields: release, mirror, kernelPackage,
   * modules, packages (added to mmdebstrap's minbase), rootfsExtraMiB (free
   * space, default 512), runtimeDefaults.rootfsMode, postBuild.copy
   * ([{src (relative to the file), dest (absolute)}]), postBuild.commands
   * (sh -c in the root filesystem, apt works), env (string[] or record:
   * every exec's starting environment), oci (upstream's
   * {@link OciRootfsConfig}: the rootfs from a container image; not with
   * postBuild). Unknown keys are refused, naming the nearest valid one
   * (code `invalid_definition`). The file's bytes and the copied files'
   * bytes decide the build id (with `oci`: the file without that key, plus
   * the image's manifest digest). Built as root, or rootless with
   * mmdebstrap's unshare mode (user namespaces, uidmap, fakeroot).
   */
  definition?: string;
  /** Directory holding the static guest binaries `init` and `sandboxd`. */
  guestBinDir?: string;
  /** Also copy the finished image here. */
  output?: string;
  verbose?: boolean;
  /** No progress lines on stderr. */
  quiet?: boolean;
  /** Also name the image `name[:tag]` in the store (a bad name throws before building). */
  tag?: string;
  /**
   * Our extension (upstream has `oci: { image }` in its build config,
   * which the definition file also takes, see {@link OciRootfsConfig}):
   * take the root filesystem from an OCI image instead of mmdebstrap;
   * overrides the definition's `oci.image` (its platform and pullPolicy
   * still apply). An OCI layout directory (`oci-layout:PATH[:TAG]`, or a
   * path holding `oci-layout` + `index.json`) or a registry reference,
   * pulled with our own registry client (docker config auth, plain HTTP for
   * 127.0.0.1/localhost) into the local OCI cache
   * `<image store>/.oci-cache`. An index resolves to linux/<host arch>;
   * every blob's sha256 is checked and its size bounded by its descriptor;
   * gzip, zstd and plain tar layers; whiteouts and opaque directories are
   * honoured. The definition still gives kernel, modules, env,
   * runtimeDefaults and rootfsExtraMiB (release/packages are not used;
   * postBuild with `oci` is refused). The build id derives from the
   * manifest digest, the kernel base and the guest binaries;
   * `manifest.json` records `oci: { reference, digest }`. Errors:
   * `build_failed` (a bad or missing blob, no /bin/sh in the image, no
   * local copy with pullPolicy "never"), `missing_asset` (the registry has
   * no such image), `invalid_image` (a blob that does not match its
   * digest, not a container image), `io_error` (the registry unreachable).
   */
  fromOci?: string;
  /**
   * Our extension: the pull policy for a registry `fromOci` / `oci.image`,
   * over the definition's `oci.pullPolicy` (default "if-not-present").
   * Another value rejects with code `invalid_definition`.
   */
  ociPullPolicy?: "if-not-present" | "always" | "never";
}

/**
 * Upstream's `OciRootfsConfig`: `oci` in an image definition file
 * (`gondolin build --config FILE`, `buildImage({ definition })`). Unknown
 * keys are refused (naming the nearest valid one).
 */
export interface OciRootfsConfig {
  /** Registry reference (`host[:port]/repo[:tag][@sha256:...]`, Docker Hub short names), or (our extension) an OCI layout, relative to the definition file. */
  image: string;
  /** Upstream's container runtime: accepted, not used (no docker/podman needed). */
  runtime?: "docker" | "podman";
  /** `linux/amd64` | `linux/arm64`; default and only allowed value: this machine's. */
  platform?: string;
  /** Default "if-not-present": a local copy is used as is; "always" asks the registry each build; "never" fails without a local copy. */
  pullPolicy?: "if-not-present" | "always" | "never";
}

/** Build (or reuse) the guest image for the current guest binaries. */
export declare function buildImage(options?: BuildImageOptions): Promise<GuestImage>;
/** The image a VM would use, building it if needed. */
export declare function ensureImage(imagePath?: string): Promise<GuestImage>;
/** The image a VM would use, or null if it still has to be built. */
export declare function findImage(imagePath?: string): GuestImage | null;

/** Upstream's shape of an image's files (absolute paths). */
export interface GuestAssets {
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
}
/** The assets VMs would use (GONDOLIN_GUEST_DIR, else the local image), building the image on first use (upstream pulls instead). */
export declare function ensureGuestAssets(): Promise<GuestAssets>;
/** Whether ensureGuestAssets() would resolve without building. */
export declare function hasGuestAssets(): boolean;
/** The image directory VMs would use; else the image store where a build lands ($GONDOLIN_IMAGE_STORE or ~/.cache/gondolin/images). */
export declare function getAssetDirectory(): string;
/** The assets of one image directory; throws (code "invalid_option") if it is missing or not a valid image. */
export declare function loadGuestAssets(assetDir: string): GuestAssets;
/**
 * Upstream's verifyAssets: whether every asset matches the sha256 in the
 * image's manifest.json. Async here (hashing ~1 GB); rejects (code
 * "invalid_image") for an image whose manifest has no checksums.
 */
export declare function verifyAssets(assetDir: string): Promise<boolean>;
/** With `{ details: true }`: the names of the assets that differ (empty when intact). */
export declare function verifyAssets(assetDir: string, options: { details: true }): Promise<string[]>;

// --- Local image store (upstream api.md §10) --------------------------------
//
// Images live in the store ($GONDOLIN_IMAGE_STORE, else
// ${XDG_CACHE_HOME:-~/.cache}/gondolin/images) as `<buildId>/` directories
// (upstream: `objects/<buildId>/`), named by refs `refs/<name>/<tag>/<arch>`
// (symlinks). A selector is, in this order: an existing directory, a build id
// (32 lowercase hex digits, ours; or upstream's uuid), or `name[:tag]` (tag
// default `latest`). `sandbox.imagePath`, `--image` and
// GONDOLIN_DEFAULT_IMAGE take selectors; the built-in default is
// `debian-base:latest` (upstream: alpine-base:latest), the image for this
// package's guest binaries, built on first use. Errors carry
// `code: "missing_asset"` (not in the store), "invalid_option" (malformed
// selector or arch) or "invalid_image" (malformed build id, wrong arch).

export type ImageArch = "aarch64" | "x86_64";
export interface ImageRefTargets {
  aarch64?: string;
  x86_64?: string;
}
/** A name in the store; `targets` maps an arch to a build id. */
export interface LocalImageRef {
  /** `name:tag`. */
  reference: string;
  targets: ImageRefTargets;
  /** ISO 8601, when the newest target was set. */
  updatedAt: string;
}
export interface ImportedImage {
  buildId: string;
  arch: ImageArch;
  /** The image's directory in the store. */
  assetDir: string;
  /** false when the store already had this build. */
  created: boolean;
}
export interface ResolvedImage {
  source: "path" | "build-id" | "ref";
  selector: string;
  assetDir: string;
  buildId?: string;
  arch?: ImageArch;
}
/** What `removeImage` took away. */
export interface RemovedImage {
  /** `name:tag (arch)` of each ref removed. */
  removedRefs: string[];
  /** The build id whose directory went, or null when only a ref went. */
  removedBuildId: string | null;
}
/** $GONDOLIN_IMAGE_STORE, else ${XDG_CACHE_HOME:-~/.cache}/gondolin/images. */
export declare function getImageStoreDirectory(): string;
/** `<store>/<buildId>`; a malformed id throws "invalid image build id: X". */
export declare function getImageObjectDirectory(buildId: string): string;
/** Copy an image directory into the store under its build id (atomic: nothing half-copied is left). */
export declare function importImageFromDirectory(assetDir: string): ImportedImage;
/** Resolve a selector locally (see above); `arch` defaults to the host's, and a ref with one target falls back to it. */
export declare function resolveImageSelector(selector: string, arch?: ImageArch): ResolvedImage;
/** Every ref with a live target, sorted by reference. */
export declare function listImageRefs(): LocalImageRef[];
/** Point `reference` at the stored image `buildId` for `arch` (atomic). */
export declare function setImageRef(reference: string, buildId: string, arch?: ImageArch): LocalImageRef;
/** Name the image `source` (any selector; a directory outside the store is imported first). */
export declare function tagImage(source: string, targetReference: string, arch?: ImageArch): LocalImageRef;
/**
 * Our extension (upstream has only the CLI): a ref removes that ref (every
 * arch unless `arch` is given); a build id removes the image and every ref
 * to it. Throws `missing_asset` if there is nothing to remove.
 */
export declare function removeImage(selector: string, arch?: ImageArch): RemovedImage;

// --- Images over OCI registries (our extension; upstream downloads tarballs
// named in a JSON "builtin registry" instead) ---------------------------------
//
// An image in a registry is an OCI artifact (`artifactType`
// application/vnd.gondolin.image.v1): config = the image's manifest.json
// (application/vnd.gondolin.image.manifest.v1+json), one zstd layer per asset
// (application/vnd.gondolin.{kernel,initrd}.v1+zstd,
// application/vnd.gondolin.rootfs.v1.ext4+zstd) named by its
// org.opencontainers.image.title annotation, and the build id / arch as
// manifest annotations (dev.gondolin.image.build-id, dev.gondolin.image.arch).
// Logins come from the docker config file ($DOCKER_CONFIG/config.json, else
// ~/.docker/config.json: `auths.<host[:port]>.auth` base64 "user:password",
// or username/password; credential helpers are not run); anonymous
// otherwise. 127.0.0.1, localhost and ::1 registries use plain HTTP.
// With GONDOLIN_IMAGE_REGISTRY=host[:port]/path, a VM needing the default
// image pulls `<registry>/debian-base:<buildId>` (the build for this
// package's guest binaries) before falling back to building it.
// Errors: "missing_asset" (the registry has no such image), "invalid_image"
// (not a Gondolin image, wrong arch, a blob that fails its sha256 or size
// check — the message names the digest), "io_error" (network, auth, disk;
// a transfer cut short keeps its bytes under <store>/.partial and the next
// pull resumes them with an HTTP Range request).

/** One progress report of a pull or push (about 5 per second). */
export interface ImageTransferProgress {
  /** push: "compress" then "upload"; pull: "download" then "extract". */
  phase: "compress" | "upload" | "download" | "extract";
  /** Bytes done in this phase (a resumed download starts at the bytes kept). */
  done: number;
  /** Bytes in this phase (compressed for upload/download, file bytes otherwise). */
  total: number;
  /** Bytes per second since the phase began. */
  rate: number;
  /** Seconds left at that rate; null until known. */
  eta: number | null;
}
export interface RegistryOptions {
  /** Plain HTTP for a registry that is not on a loopback address. Default false. */
  insecure?: boolean;
  /** The docker config file to read logins from (default: see above). */
  dockerConfig?: string;
  /** pull: the arch wanted (default the host's; another is refused before any blob). push: picks a ref's target. */
  arch?: ImageArch;
}
export interface PullImageOptions extends RegistryOptions {
  /**
   * Local `name[:tag]` to point at the pulled image; default the
   * reference's last repository segment and tag
   * (`host/gondolin/debian-base:v1` → `debian-base:v1`; none for a digest
   * reference); false names nothing.
   */
  tag?: string | false;
}
export interface PulledImage {
  /** The OCI reference pulled. */
  reference: string;
  /** Digest (`sha256:…`) of the OCI manifest. */
  digest: string;
  buildId: string;
  arch: ImageArch;
  /** `<store>/<buildId>`. */
  assetDir: string;
  /** false when the store already had this build (nothing fetched). */
  created: boolean;
  /** The local ref set, or null. */
  tag: string | null;
  image: GuestImage;
}
export interface PushedImage {
  reference: string;
  /** Digest (`sha256:…`) of the OCI manifest. */
  digest: string;
  buildId: string;
  arch: ImageArch;
  /** Compressed bytes sent (blobs the registry already had are skipped). */
  uploadedBytes: number;
}
/**
 * Our extension. Pull `reference` (`host[:port]/repo[:tag]` or `…@sha256:…`)
 * into the local store: every blob's size and sha256 are checked while it
 * streams, the image is assembled in a temp dir and renamed into place
 * (nothing half-written is left), then named (see `tag`).
 */
export declare function pullImage(
  reference: string,
  options?: PullImageOptions,
  onProgress?: (p: ImageTransferProgress) => void,
): Promise<PulledImage>;
/** Our extension. Push the image `selector` names (directory, build id or ref) to `reference` (`host[:port]/repo:tag`). */
export declare function pushImage(
  selector: string,
  reference: string,
  options?: RegistryOptions,
  onProgress?: (p: ImageTransferProgress) => void,
): Promise<PushedImage>;

// --- Sessions ---------------------------------------------------------------

/** A VM registered by a running gondolin process (one JSON file + one socket). */
export interface SessionInfo {
  id: string;
  pid: number;
  socketPath: string;
  createdAt: string;
  label?: string;
}
export interface SessionEntry extends SessionInfo {
  /** pid alive and socket connectable */
  alive: boolean;
}
/** Newest first. Directory: $GONDOLIN_SESSIONS_DIR or ~/.cache/gondolin/sessions. */
export declare function listSessions(): Promise<SessionEntry[]>;

/**
 * A VM on a `gondolin ws-server` (our extension), from
 * `VM.create({ remote })`. exec/shell/fs/close behave as a local VM's;
 * enableSsh, enableIngress and checkpoint reject ("not available on a
 * remote VM"); getHostPid() is null. If the connection ends, the VM is
 * closed on the server (unless detached) and calls fail with "vm_closed".
 */
export declare class RemoteVM extends VM {
  /**
   * Keep the VM on the server after this object disconnects (it does, at
   * once). Resolves to a token for `VM.create({ remote: { url, token,
   * attach } })`, valid until the server's `--detach-ttl-ms` passes.
   */
  detach(): Promise<string>;
}

/** Exact id, else a unique prefix; null if none; throws on an ambiguous prefix. */
export declare function findSession(query: string): Promise<SessionEntry | null>;
/** Removes dead or malformed entries and orphan sockets; returns how many. */
export declare function gcSessions(): Promise<number>;
export declare function registerSession(options: { id: string; label?: string }): { socketPath: string; metadataPath: string };
export declare function unregisterSession(id: string): void;
/** Attach protocol: newline-delimited JSON (see js/sessions.cjs). */
export declare function connectToSession(
  socketPath: string,
  callbacks: { onMessage(message: Record<string, unknown>): void; onClose?(error?: Error): void },
): { send(message: Record<string, unknown>): boolean; close(): void };

// ---- Ingress (upstream API; see `VM.enableIngress`) ----

/**
 * One ingress route: requests whose path is `prefix` or lies under it go to
 * the guest's `127.0.0.1:port`. `stripPrefix` (default true) removes the
 * prefix (`/api/users` → `/users`, `/api` → `/`) and adds
 * `x-forwarded-prefix`. In the listeners file: `<prefix> :<port>
 * [strip_prefix=false]`, one per line, `#` comments.
 */
export interface IngressRoute {
  /** Starts with "/"; a trailing "/" is removed. */
  prefix: string;
  /** Guest loopback port, 1-65535. */
  port: number;
  stripPrefix?: boolean;
}

/** Options of `vm.enableIngress()` (upstream's, with upstream's defaults). */
export interface EnableIngressOptions {
  /** Host address to listen on (an IP address; "localhost" = 127.0.0.1). Default "127.0.0.1". */
  listenHost?: string;
  /** Host port; 0 = ephemeral. Default 0. */
  listenPort?: number;
  /** Pass WebSocket upgrades through (after the hooks). Default true. */
  allowWebSockets?: boolean;
  hooks?: IngressGatewayHooks;
  /** Buffer every response body for `hooks.onResponse` (only with that hook). Default false. */
  bufferResponseBody?: boolean;
  /** Cap of a buffered body in bytes; over it the answer is 502. Default 2097152 (2 MiB). */
  maxBufferedResponseBodyBytes?: number;
  /** Milliseconds the guest may take to send the response head (0 = no bound). Default 2000. */
  upstreamHeaderTimeoutMs?: number;
  /** Milliseconds allowed between two body chunks from the guest (0 = no bound). Default 15000. */
  upstreamResponseTimeoutMs?: number;
}

/** What `vm.enableIngress()` gives (upstream). */
export interface IngressAccess {
  host: string;
  port: number;
  /** `http://host:port` (an IPv6 host bracketed). */
  url: string;
  /** Stop listening and end its connections (the VM keeps running). */
  close(): Promise<void>;
}

export type IngressHeaderValue = string | string[];
/** Header names lowercased; a repeated header is an array. */
export type IngressHeaders = Record<string, IngressHeaderValue>;
/** null/undefined deletes a header; a value replaces it. */
export type IngressHeaderPatch = Record<string, IngressHeaderValue | null | undefined>;

export interface IngressAllowInfo {
  clientIp: string;
  method: string;
  /** Path and query as the client sent them. */
  path: string;
  headers: Record<string, string | string[]>;
  route: IngressRoute;
}

export interface IngressHookRequest {
  clientIp: string;
  method: string;
  path: string;
  route: IngressRoute;
  /** "127.0.0.1". */
  backendHost: string;
  backendPort: number;
  /** Path and query after the prefix was stripped. */
  backendTarget: string;
  headers: IngressHeaders;
}

export interface IngressHookRequestPatch {
  method?: string;
  /** Must stay "127.0.0.1" or "localhost" (else 502). */
  backendHost?: string;
  backendPort?: number;
  /** Must start with "/" (else 502). */
  backendTarget?: string;
  headers?: IngressHeaderPatch;
  bufferResponseBody?: boolean;
  maxBufferedResponseBodyBytes?: number;
}

export interface IngressHookResponse {
  statusCode: number;
  statusMessage: string;
  headers: IngressHeaders;
  /** Only when the body is buffered (`bufferResponseBody`). */
  body?: Buffer;
}

export interface IngressHookResponsePatch {
  statusCode?: number;
  statusMessage?: string;
  headers?: IngressHeaderPatch;
  /** Replaces the body; sent with an explicit content-length. */
  body?: Buffer;
}

/**
 * Ingress hooks (upstream). A hook that throws `IngressRequestBlockedError`
 * answers with its status and body; any other throw answers 502.
 */
export interface IngressGatewayHooks {
  /** false → 403 "forbidden\n". */
  isAllowed?: (info: IngressAllowInfo) => Promise<boolean> | boolean;
  onRequest?: (
    request: IngressHookRequest,
  ) => Promise<IngressHookRequestPatch | void> | IngressHookRequestPatch | void;
  onResponse?: (
    response: IngressHookResponse,
    request: IngressHookRequest,
  ) => Promise<IngressHookResponsePatch | void> | IngressHookResponsePatch | void;
}

/** Thrown by an ingress hook to refuse a request with its own answer (upstream). */
export declare class IngressRequestBlockedError extends Error {
  /** Default 403. */
  readonly statusCode: number;
  /** Default "Forbidden". */
  readonly statusMessage: string;
  /** Default "forbidden\n". */
  readonly body: string;
  constructor(message?: string, statusCode?: number, statusMessage?: string, body?: string);
}

/**
 * Upstream's routing table over a provider rooted at /etc/gondolin (file
 * `/listeners`, at most 64 KiB). A VM keeps its own native table; this class
 * is for programs that manage a listeners file themselves.
 * Events: "changed" (routes), "reloadError" (err).
 */
export declare class GondolinListeners extends EventEmitter {
  constructor(etcProvider: VirtualProvider);
  getLastReloadError(): unknown;
  getRoutes(): IngressRoute[];
  /** Reload 25 ms later (coalesced); a bad file keeps the routes and emits "reloadError". */
  notifyDirty(): void;
  /** Validate, normalize, write the canonical file, emit "changed". */
  setRoutes(routes: IngressRoute[]): void;
  /** Parse the file now (missing = no routes); rewrite it canonically if it differs. */
  reloadNow(): void;
}

/**
 * Parse a listeners file (upstream format). Throws `invalid listeners file
 * line N: …` (code `invalid_option`) naming the line, or "listeners file too
 * large" over 64 KiB.
 */
export declare function parseListenersFile(text: string): { routes: IngressRoute[] };
/** The canonical file: one route per line, tab-separated, trailing newline ("\n" for none). */
export declare function serializeListenersFile(data: { routes: IngressRoute[] }): string;

// ---- Remote transport (internal; issue 18) ----
// The native WebSocket transport under `gondolin ws-server` and
// `VM.create({ remote })`, reached as `require("./js/native.cjs").native`;
// not exported by the package. Rust owns the wire (HTTP/1.1, WebSocket,
// rustls, bearer token, limits, keepalive, /healthz /readyz /metrics); the
// protocol on top is js/'s. Contract: the shapes below.

/** @internal Options of `native.remoteListen`. */
export interface RemoteListenOptions {
  /** An IP address (`127.0.0.1`, `0.0.0.0`, `::`); a name is `invalid_option`. */
  host: string;
  /** 0: ephemeral (read `RemoteServer.port`). */
  port: number;
  /** Bearer token clients must send. null/undefined is refused (`invalid_option`, naming `--token-file` and `--insecure-no-auth`) unless `host` is loopback. */
  token?: string | null;
  /** PEM certificate chain; with `tlsKey`, the server speaks wss:// (rustls). */
  tlsCert?: string;
  /** PEM private key (PKCS#8, PKCS#1 or SEC1). */
  tlsKey?: string;
  /** Largest message (and frame) either way, bytes; default 16 MiB, 1 KiB..1 GiB. Over it: close 1009. */
  maxMessageBytes?: number;
  /** Open WebSocket connections at once; default 256; more get HTTP 503. */
  maxConnections?: number;
  /** Connections not yet upgraded from one client address (IPv6: one /64) at once; default 32; more are closed unanswered. */
  maxHttpPerIp?: number;
  /** TLS handshake, then the request head, each within this many ms; default 10000 (100..3600000). */
  httpHeadTimeoutMs?: number;
  /** A connection not upgraded within this many ms is closed; default 30000 (100..3600000). */
  httpDeadlineMs?: number;
  /** A peer that reads nothing for this many ms while messages wait is closed with 1008; default 30000 (100..3600000). */
  writeTimeoutMs?: number;
}

/** @internal A listening transport server; keeps Node alive until `close()`. */
export interface RemoteServer {
  /** The bound port. */
  readonly port: number;
  /** What `/readyz` answers while not draining (starts true). */
  setReady(ready: boolean): void;
  /** Prometheus text appended to `/metrics` after the transport's own metrics (replaces the last text; 1 MiB kept). */
  setMetrics(text: string): void;
  /** `/readyz` and new upgrades answer 503; open connections are untouched. */
  drain(): void;
  /** Stop listening, close every connection with 1001 "server shutting down"; resolves once they finished (≤ 5 s). */
  close(): Promise<void>;
}

/** @internal Options of `native.remoteConnect`. */
export interface RemoteConnectOptions {
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string | null;
  /** Extra CA certificate (PEM) trusted for wss://, besides the system's roots. */
  ca?: string | null;
  /** Largest message either way, bytes (default 16 MiB). */
  maxMessageBytes?: number;
  /** TCP + TLS + upgrade, ms (default 10000). */
  timeoutMs?: number;
}

/**
 * @internal One WebSocket (either end). Each way at most 64 messages / 8 MiB
 * are queued: a side that stops reading (`recv()` or `tryRecv()`) stops its
 * socket being read, and `send()` returns promises that stop resolving when
 * the peer does not read. Keepalive: a ping every 10 s; nothing received for
 * 30 s while waiting on the socket closes with 1001, so keep reading (flow
 * control belongs to the protocol above).
 */
export interface RemoteConnection {
  /** The peer, `ip:port`. */
  readonly remoteAddress: string;
  /** Next messages in order: 1..=64 of them (string = text frame, Buffer = binary frame); [] once closed. */
  recv(): Promise<Array<string | Buffer>>;
  /**
   * Next messages in order without waiting: 1..=64 of them; null when none is
   * queued yet (the `onReadable` callback then runs once more arrive); [] once
   * closed. The protocol's read loop uses this (no promise per batch); do not
   * mix it with a pending `recv()`.
   */
  tryRecv(): Array<string | Buffer> | null;
  /**
   * What a null `tryRecv()` waits for: after each `tryRecv()` that returned
   * null, `cb` runs once when a message arrives; it also runs once when the
   * connection ends (at once if it already has), and is then released.
   * Replaces an earlier callback; holds the event loop open until the end.
   */
  onReadable(cb: () => void): void;
  /**
   * Queue one message, in call order. null when it went straight into the
   * bounded send queue (no promise per message); otherwise a promise that
   * resolves once it is there (await it for backpressure; the message is
   * held in order meanwhile). Throws `connection_closed` once closing,
   * `invalid_option` over maxMessageBytes; a held message rejects with
   * `connection_closed` if the connection closes first.
   */
  send(data: string | Buffer): Promise<void> | null;
  /** Close with `code` (default 1000; 1000 or 3000–4999, others become 1000) and `reason` (≤ 123 bytes). No-op once closing. */
  close(code?: number, reason?: string): void;
  /** Once closing: the close code, ours or the peer's (1002 malformed frame, 1009 too big, 1001 shutdown/keepalive, 1006 socket ended without a close frame). */
  readonly closeCode: number | null;
  readonly closeReason: string | null;
}

/** @internal The transport's functions on the native addon. */
export interface RemoteNative {
  /** Rejects with `invalid_option` (options, TLS material, missing token off loopback) or `io_error` (address taken). */
  remoteListen(opts: RemoteListenOptions, onConnection: (conn: RemoteConnection) => void): Promise<RemoteServer>;
  /**
   * `ws://` or `wss://`; the path becomes `/v1` when empty or `/`. Rejects with
   * `remote_unauthorized` (401), `remote_unavailable` (503, the server's reason
   * in the message), `invalid_option` (URL, ca) or `io_error` (network, TLS, timeout).
   */
  remoteConnect(url: string, opts?: RemoteConnectOptions): Promise<RemoteConnection>;
}
