"use strict";
// Session registry and attach server.
//
// Registry: every started VM listens on `<dir>/<id>.sock` (unix socket, mode
// 0600) and then writes `<dir>/<id>.json` = {id, pid, socketPath, createdAt,
// label} (2-space JSON + newline), where <dir> is $GONDOLIN_SESSIONS_DIR or
// ${XDG_CACHE_HOME:-~/.cache}/gondolin/sessions. vm.close() removes both (an
// exiting process removes them too); gcSessions() cleans up after crashes.
//
// Attach protocol (ours, not upstream's framed CBOR/JSON one): one JSON
// object per line ("\n"-terminated, at most MAX_LINE bytes) in both
// directions. `id` is a uint32 chosen by the client, scoped to its connection.
//   client → server
//     {type:"exec", id, argv: string[], env?, cwd?, stdin?: bool, pty?: bool, rows?, cols?}
//     {type:"stdin", id, data?: base64, eof?: bool}
//     {type:"resize", id, rows, cols}
//     {type:"kill", id, signal?: "SIGTERM" | number}      (default SIGTERM)
//   server → client
//     {type:"status", state:"running", vmId}              once, on connect
//     {type:"output", id, stream:"stdout"|"stderr", data: base64}
//     {type:"exit", id, exitCode, signal?}                after all its output
//     {type:"error", id?, code, message}
// Error codes: invalid_request (bad JSON / fields), duplicate_id, unknown_id,
// unknown_type, stdin_disabled, payload_too_large (line too long; the server
// then closes the connection), plus an exec's own failure code (e.g.
// vm_closed). The server runs every exec with piped output and stops reading
// an exec's output while the socket is congested. When a client disconnects
// its running execs are killed (SIGKILL).

const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");

const MAX_LINE = 1024 * 1024;

function sessionsDir() {
  if (process.env.GONDOLIN_SESSIONS_DIR) return process.env.GONDOLIN_SESSIONS_DIR;
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(cache, "gondolin", "sessions");
}

function registerSession({ id, label }) {
  const dir = sessionsDir();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const socketPath = path.join(dir, `${id}.sock`);
  const metadataPath = path.join(dir, `${id}.json`);
  const info = { id, pid: process.pid, socketPath, createdAt: new Date().toISOString(), label };
  fs.writeFileSync(metadataPath, `${JSON.stringify(info, null, 2)}\n`, { mode: 0o600 });
  return { socketPath, metadataPath };
}

function unregisterSession(id) {
  const dir = sessionsDir();
  for (const ext of [".json", ".sock"]) fs.rmSync(path.join(dir, `${id}${ext}`), { force: true });
}

function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === "EPERM";
  }
}

function connectable(socketPath, ms = 500) {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    const done = (ok) => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), ms);
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

function readEntries() {
  const dir = sessionsDir();
  let names;
  try {
    names = fs.readdirSync(dir);
  } catch {
    return { entries: [], bad: [], dir };
  }
  const entries = [];
  const bad = [];
  for (const n of names.filter((n) => n.endsWith(".json"))) {
    try {
      const info = JSON.parse(fs.readFileSync(path.join(dir, n), "utf8"));
      if (typeof info.id !== "string" || !Number.isInteger(info.pid) || typeof info.socketPath !== "string") throw 0;
      entries.push(info);
    } catch {
      bad.push(n.slice(0, -5));
    }
  }
  return { entries, bad, dir, names };
}

/** All registered sessions, newest first, with liveness. */
async function listSessions() {
  const { entries } = readEntries();
  const out = await Promise.all(
    entries.map(async (e) => ({ ...e, alive: pidAlive(e.pid) && (await connectable(e.socketPath)) })),
  );
  return out.sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
}

/** Exact id, else a unique prefix; null when nothing matches. */
async function findSession(query) {
  if (typeof query !== "string" || query === "") throw new TypeError("session id must be a non-empty string");
  const all = await listSessions();
  const exact = all.find((s) => s.id === query);
  if (exact) return exact;
  const matches = all.filter((s) => s.id.startsWith(query));
  if (matches.length > 1) {
    throw new Error(
      `ambiguous session prefix '${query}' matches ${matches.length} sessions:\n${matches.map((s) => `  ${s.id}`).join("\n")}`,
    );
  }
  return matches[0] || null;
}

/** Remove dead or malformed entries and orphan sockets; returns how many. */
async function gcSessions() {
  const { entries, bad, dir, names = [] } = readEntries();
  let removed = 0;
  for (const id of bad) {
    unregisterSession(id);
    removed++;
  }
  const live = new Set();
  for (const e of entries) {
    if (pidAlive(e.pid) && (await connectable(e.socketPath))) live.add(e.id);
    else {
      unregisterSession(e.id);
      removed++;
    }
  }
  for (const n of names.filter((n) => n.endsWith(".sock"))) {
    const id = n.slice(0, -5);
    if (live.has(id) || entries.some((e) => e.id === id) || bad.includes(id)) continue;
    // A VM listens before it writes its .json: spare a socket that answers.
    if (!(await connectable(path.join(dir, n)))) {
      fs.rmSync(path.join(dir, n), { force: true });
      removed++;
    }
  }
  return removed;
}

/** Line-splitting reader with a length bound (bytes of one line). */
function lineReader(socket, onLine, onTooLong) {
  let parts = [];
  let size = 0;
  let stopped = false;
  const tooLong = () => {
    stopped = true;
    parts = [];
    onTooLong();
  };
  socket.on("data", (chunk) => {
    if (stopped) return;
    let start = 0;
    let i;
    while ((i = chunk.indexOf(10, start)) >= 0) {
      const piece = chunk.subarray(start, i);
      start = i + 1;
      if (size + piece.length > MAX_LINE) return tooLong();
      const line = parts.length ? Buffer.concat([...parts, piece]).toString("utf8") : piece.toString("utf8");
      parts = [];
      size = 0;
      if (line.trim()) onLine(line);
      if (socket.destroyed) return;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      size += rest.length;
      if (size > MAX_LINE) return tooLong();
      parts.push(Buffer.from(rest));
    }
  });
}

function send(socket, msg) {
  if (socket.destroyed || !socket.writable) return true;
  return socket.write(`${JSON.stringify(msg)}\n`);
}

const isUint32 = (v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const isStringArray = (v) => Array.isArray(v) && v.every((a) => typeof a === "string");
const positiveInt = (v) => Number.isInteger(v) && v > 0 && v <= 0xffff;

/** Validate one client message; returns an error string or null. */
function validate(m) {
  if (!m || typeof m !== "object" || Array.isArray(m)) return "message must be a JSON object";
  if (typeof m.type !== "string") return "message needs a string type";
  if (!isUint32(m.id)) return `${m.type} requires a uint32 id`;
  switch (m.type) {
    case "exec":
      if (!isStringArray(m.argv) || m.argv.length === 0) return "exec requires argv: a non-empty array of strings";
      if (m.env !== undefined && !isStringArray(m.env) && (typeof m.env !== "object" || m.env === null)) {
        return "exec env must be an array of KEY=VALUE strings or an object";
      }
      if (m.cwd !== undefined && typeof m.cwd !== "string") return "exec cwd must be a string";
      if (m.stdin !== undefined && typeof m.stdin !== "boolean") return "exec stdin must be a boolean";
      if (m.pty !== undefined && typeof m.pty !== "boolean") return "exec pty must be a boolean";
      if ((m.rows !== undefined && !positiveInt(m.rows)) || (m.cols !== undefined && !positiveInt(m.cols))) {
        return "exec rows/cols must be positive integers";
      }
      return null;
    case "stdin":
      if (m.data !== undefined && typeof m.data !== "string") return "stdin data must be a base64 string";
      if (m.eof !== undefined && typeof m.eof !== "boolean") return "stdin eof must be a boolean";
      return null;
    case "resize":
      if (!positiveInt(m.rows) || !positiveInt(m.cols)) return "resize requires positive integer rows and cols";
      return null;
    case "kill":
      if (m.signal !== undefined && typeof m.signal !== "string" && !Number.isInteger(m.signal)) {
        return "kill signal must be a name or a number";
      }
      return null;
    default:
      return null;
  }
}

/** Serve attach clients for `vm` on `socketPath`; resolves once listening (socket mode 0600). */
async function serveAttach(vm, socketPath) {
  fs.rmSync(socketPath, { force: true });
  const clients = new Set();
  const server = net.createServer((socket) => {
    const execs = new Map(); // client id -> { proc, gone }
    let disconnected = false;
    clients.add(socket);
    const fail = (id, code, message) => send(socket, { type: "error", ...(id !== undefined ? { id } : {}), code, message });
    send(socket, { type: "status", state: "running", vmId: vm.id });

    const startExec = (m) => {
      if (execs.has(m.id)) return fail(m.id, "duplicate_id", "request id already in use");
      const proc = vm.exec(m.argv, {
        env: m.env,
        cwd: m.cwd,
        stdin: Boolean(m.stdin || m.pty),
        pty: Boolean(m.pty),
        stdout: "pipe",
        stderr: "pipe",
      });
      if (m.pty && m.rows && m.cols) proc.resize(m.rows, m.cols);
      execs.set(m.id, proc);
      // Forward output with backpressure; report the exit only after both
      // streams have been forwarded completely.
      const ended = ["stdout", "stderr"].map((stream) => {
        const r = proc[stream];
        r.on("data", (data) => {
          if (disconnected) return;
          if (!send(socket, { type: "output", id: m.id, stream, data: data.toString("base64") })) {
            r.pause();
            socket.once("drain", () => r.resume());
          }
        });
        return new Promise((resolve) => {
          r.once("end", resolve);
          r.once("error", resolve);
          r.once("close", resolve);
        });
      });
      proc.then(
        async (res) => {
          await Promise.all(ended);
          send(socket, { type: "exit", id: m.id, exitCode: res.exitCode, ...(res.signal != null ? { signal: res.signal } : {}) });
        },
        (err) => fail(m.id, err.code || "exec_failed", err.message),
      ).finally(() => execs.delete(m.id));
    };

    const onLine = (line) => {
      let m;
      try {
        m = JSON.parse(line);
      } catch {
        return fail(undefined, "invalid_request", "invalid JSON message");
      }
      const problem = validate(m);
      if (problem) return fail(isUint32(m && m.id) ? m.id : undefined, "invalid_request", problem);
      const proc = execs.get(m.id);
      try {
        switch (m.type) {
          case "exec":
            return startExec(m);
          case "stdin":
            if (!proc) return fail(m.id, "unknown_id", "request id not found");
            if (m.data) proc.write(Buffer.from(m.data, "base64"));
            if (m.eof) proc.end();
            return;
          case "resize":
            if (!proc) return fail(m.id, "unknown_id", "request id not found");
            return proc.resize(m.rows, m.cols);
          case "kill":
            if (!proc) return fail(m.id, "unknown_id", "request id not found");
            proc.kill(m.signal ?? "SIGTERM");
            return;
          default:
            return fail(m.id, "unknown_type", "unsupported message type");
        }
      } catch (err) {
        const code = /stdin was not enabled/.test(err.message) ? "stdin_disabled" : "invalid_request";
        return fail(m.id, code, err.message);
      }
    };
    lineReader(socket, onLine, () => {
      fail(undefined, "payload_too_large", `message line exceeds ${MAX_LINE} bytes`);
      // Flush the error, then hang up (hard, if the peer does not close).
      socket.end();
      setTimeout(() => socket.destroy(), 2000).unref();
    });
    const cleanup = () => {
      if (disconnected) return;
      disconnected = true;
      clients.delete(socket);
      // Kill what this client started, and drain its streams so the execs settle.
      for (const proc of execs.values()) {
        try {
          proc.kill("SIGKILL");
        } catch {}
        proc.stdout.resume();
        proc.stderr.resume();
      }
      execs.clear();
    };
    socket.on("close", cleanup);
    socket.on("error", () => {});
  });
  server.on("error", () => {});
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  fs.chmodSync(socketPath, 0o600);
  server.unref();
  return {
    close: () =>
      new Promise((resolve) => {
        for (const c of clients) c.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Start `vm`'s attach server, then register it; close() undoes both. */
async function registerVmSession(vm, label) {
  const dir = sessionsDir();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const server = await serveAttach(vm, path.join(dir, `${vm.id}.sock`));
  try {
    registerSession({ id: vm.id, label: label ?? process.argv.join(" ") });
  } catch (err) {
    await server.close();
    throw err;
  }
  // A process that exits without close() still removes its entry.
  const onExit = () => unregisterSession(vm.id);
  process.once("exit", onExit);
  let closing = null;
  return {
    close() {
      if (!closing) {
        closing = (async () => {
          process.off("exit", onExit);
          unregisterSession(vm.id);
          await server.close();
        })();
      }
      return closing;
    },
  };
}

/**
 * Connect to a session socket. callbacks: onMessage(msg) (alias onJson),
 * onClose(err?) — called once. Returns { send(msg), close(), socket }.
 */
function connectToSession(socketPath, callbacks = {}) {
  const onMessage = callbacks.onMessage || callbacks.onJson || (() => {});
  let closed = false;
  const onClose = (err) => {
    if (closed) return;
    closed = true;
    if (callbacks.onClose) callbacks.onClose(err);
  };
  const socket = net.connect(socketPath);
  lineReader(
    socket,
    (line) => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        onClose(new Error("session sent invalid JSON"));
        return socket.destroy();
      }
      onMessage(msg);
    },
    () => {
      onClose(new Error("session sent an oversized message"));
      socket.destroy();
    },
  );
  socket.on("error", (err) => onClose(err));
  socket.on("close", () => onClose());
  return {
    send: (msg) => send(socket, msg),
    close: () => socket.end(),
    socket,
  };
}

module.exports = {
  sessionsDir,
  registerSession,
  unregisterSession,
  listSessions,
  findSession,
  gcSessions,
  registerVmSession,
  connectToSession,
};
