// Public types of @gondolin/native. Hand-written; kept in step with js/ by
// __test__/types.ts (type-checked) and __test__/api.test.mjs (export names).

/// <reference types="node" />
import type { Readable } from "node:stream";

export type EnvInput = string[] | Record<string, string>;
export type RootfsMode = "readonly" | "memory" | "cow";

export interface VmRootfsOptions {
  /** default: the image manifest's runtimeDefaults.rootfsMode, else "cow" */
  mode?: RootfsMode;
}

/** Low-level backend options (`VMOptions.sandbox`). */
export interface SandboxOptions {
  /** Guest image directory (holding manifest.json). Default: built on first use. */
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
  /** Echo the guest console and QEMU's stderr to stderr. */
  debug?: boolean;
}

export interface VMOptions {
  sandbox?: SandboxOptions;
  rootfs?: VmRootfsOptions;
  /** Default environment of every exec (per-exec env wins per key). */
  env?: EnvInput;
  /** default: "1G" (QEMU size syntax) */
  memory?: string;
  /** default: 2 */
  cpus?: number;
  /** default: 120000 ($GONDOLIN_START_TIMEOUT_MS); <= 0 disables */
  startTimeoutMs?: number;
  /** Shown by `gondolin list`; default: process.argv.join(" ") */
  sessionLabel?: string;
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
  /** Resolves the guest image (building it on first use); does not boot. */
  static create(options?: VMOptions): Promise<VM>;
  constructor(options?: VMOptions);
  readonly id: string;
  readonly fs: VmFs;
  /** Boot if needed and wait until the guest is ready; concurrent calls share one boot. */
  start(): Promise<void>;
  /** Stop QEMU and remove every temp file; idempotent. */
  close(): Promise<void>;
  exec(command: string | string[], options?: ExecOptions): ExecProcess;
  shell(options?: ShellOptions): ExecProcess;
  /** null until booted. */
  get info(): VmInfo | null;
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
}

export interface BuildImageOptions {
  /** Image definition JSON; default images/debian-base.json */
  definition?: string;
  /** Directory holding the static guest binaries `init` and `sandboxd`. */
  guestBinDir?: string;
  /** Also copy the finished image here. */
  output?: string;
  verbose?: boolean;
  /** No progress lines on stderr. */
  quiet?: boolean;
}

/** Build (or reuse) the guest image for the current guest binaries. */
export declare function buildImage(options?: BuildImageOptions): Promise<GuestImage>;
/** The image a VM would use, building it if needed. */
export declare function ensureImage(imagePath?: string): Promise<GuestImage>;
/** The image a VM would use, or null if it still has to be built. */
export declare function findImage(imagePath?: string): GuestImage | null;

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
