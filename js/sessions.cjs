"use strict";
// Session registry and attach server.
//
// Every started VM writes `<id>.json` ({id, pid, socketPath, createdAt,
// label}) into the sessions directory and listens on `<id>.sock`, so another
// process (`gondolin list`, `gondolin attach`) can find it and run commands
// in it.
//
// Attach protocol: newline-delimited JSON in both directions.
//   client → server: {type:"exec", id, argv, env?, cwd?, stdin?, pty?, rows?, cols?}
//                    {type:"stdin", id, data?: base64, eof?}
//                    {type:"resize", id, rows, cols}
//                    {type:"kill", id, signal}
//   server → client: {type:"status", state:"running", vmId}   (on connect)
//                    {type:"output", id, stream:"stdout"|"stderr", data: base64}
//                    {type:"exit", id, exitCode, signal?}
//                    {type:"error", id?, code, message}
// Lines are bounded (MAX_LINE); malformed input gets an error reply; a
// client's running execs are killed when it disconnects.

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
    if (!live.has(id) && !entries.some((e) => e.id === id) && !bad.includes(id)) {
      fs.rmSync(path.join(dir, n), { force: true });
      removed++;
    }
  }
  return removed;
}

/** Line-splitting reader with a length bound. */
function lineReader(socket, onLine, onTooLong) {
  let buf = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line) onLine(line);
    }
    if (buf.length > MAX_LINE) {
      buf = "";
      onTooLong();
    }
  });
}

function send(socket, msg) {
  return socket.write(`${JSON.stringify(msg)}\n`);
}

/** Serve attach clients for `vm` on its session socket. */
function serveAttach(vm, socketPath) {
  fs.rmSync(socketPath, { force: true });
  const clients = new Set();
  const server = net.createServer((socket) => {
    const execs = new Map();
    clients.add(socket);
    const fail = (id, code, message) => send(socket, { type: "error", ...(id !== undefined ? { id } : {}), code, message });
    send(socket, { type: "status", state: "running", vmId: vm.id });
    lineReader(
      socket,
      (line) => {
        let m;
        try {
          m = JSON.parse(line);
        } catch {
          return fail(undefined, "invalid_request", "malformed JSON");
        }
        if (!m || typeof m !== "object" || !Number.isInteger(m.id) || m.id < 0) {
          return fail(undefined, "invalid_request", "messages need an integer id");
        }
        const proc = execs.get(m.id);
        try {
          switch (m.type) {
            case "exec": {
              if (proc) return fail(m.id, "duplicate_id", "request id already in use");
              if (!Array.isArray(m.argv) || m.argv.length === 0 || !m.argv.every((a) => typeof a === "string")) {
                return fail(m.id, "invalid_request", "argv must be a non-empty array of strings");
              }
              const p = vm.exec(m.argv, {
                env: m.env,
                cwd: m.cwd,
                stdin: Boolean(m.stdin || m.pty),
                pty: Boolean(m.pty),
                stdout: "pipe",
                stderr: "pipe",
              });
              if (m.pty && m.rows && m.cols) p.resize(m.rows, m.cols);
              execs.set(m.id, p);
              for (const stream of ["stdout", "stderr"]) {
                const r = p[stream];
                r.on("data", (data) => {
                  if (!send(socket, { type: "output", id: m.id, stream, data: data.toString("base64") })) {
                    r.pause();
                    socket.once("drain", () => r.resume());
                  }
                });
                r.on("error", () => {});
              }
              p.then(
                (res) => send(socket, { type: "exit", id: m.id, exitCode: res.exitCode, ...(res.signal != null ? { signal: res.signal } : {}) }),
                (err) => fail(m.id, err.code || "exec_failed", err.message),
              ).finally(() => execs.delete(m.id));
              return;
            }
            case "stdin":
              if (!proc) return fail(m.id, "unknown_id", "request id not found");
              if (typeof m.data === "string" && m.data) proc.write(Buffer.from(m.data, "base64"));
              if (m.eof) proc.end();
              return;
            case "resize":
              if (!proc) return fail(m.id, "unknown_id", "request id not found");
              proc.resize(Number(m.rows), Number(m.cols));
              return;
            case "kill":
              if (!proc) return fail(m.id, "unknown_id", "request id not found");
              proc.kill(m.signal ?? "SIGTERM");
              return;
            default:
              return fail(m.id, "unknown_type", "unsupported message type");
          }
        } catch (err) {
          return fail(m.id, "invalid_request", err.message);
        }
      },
      () => {
        fail(undefined, "payload_too_large", `line exceeds ${MAX_LINE} bytes`);
        socket.destroy();
      },
    );
    const cleanup = () => {
      clients.delete(socket);
      for (const p of execs.values()) p.kill("SIGKILL");
      execs.clear();
    };
    socket.on("close", cleanup);
    socket.on("error", () => {});
  });
  server.listen(socketPath);
  server.unref();
  try {
    fs.chmodSync(socketPath, 0o600);
  } catch {}
  return {
    close: () =>
      new Promise((resolve) => {
        for (const c of clients) c.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Register `vm` and start its attach server; close() undoes both. */
async function registerVmSession(vm, label) {
  const { socketPath } = registerSession({ id: vm.id, label: label ?? process.argv.join(" ") });
  const server = serveAttach(vm, socketPath);
  return {
    async close() {
      await server.close();
      unregisterSession(vm.id);
    },
  };
}

/** Connect to a session socket; callbacks get parsed messages. */
function connectToSession(socketPath, callbacks) {
  const socket = net.connect(socketPath);
  lineReader(
    socket,
    (line) => {
      try {
        callbacks.onMessage(JSON.parse(line));
      } catch (err) {
        callbacks.onClose?.(err);
        socket.destroy();
      }
    },
    () => socket.destroy(new Error("session sent an oversized line")),
  );
  socket.on("error", (err) => callbacks.onClose?.(err));
  socket.on("close", () => callbacks.onClose?.());
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
