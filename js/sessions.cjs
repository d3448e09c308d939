"use strict";
// Session registry and the attach client.
//
// Registry: every started VM listens on `<dir>/<id>.sock` (unix socket, mode
// 0600) and then writes `<dir>/<id>.json` = {id, pid, socketPath, createdAt,
// label} (2-space JSON + newline), where <dir> is $GONDOLIN_SESSIONS_DIR or
// ${XDG_CACHE_HOME:-~/.cache}/gondolin/sessions. vm.close() removes both (an
// exiting process removes them too); gcSessions() cleans up after crashes.
//
// The attach server behind the socket is native (src/session/, started by
// serveAttach in src/napi/session.rs); its JSON-lines protocol is documented
// in docs/attach-protocol.md. connectToSession() below is the client side.

const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { mergeEnv } = require("./env.cjs");

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

/**
 * Start `vm`'s attach server, then register it; close() undoes both.
 * `onSnapshot({ path, memory })` answers the `snapshot` message (it checkpoints
 * the VM, resolving to { path, name }); it must not wait for close().
 */
async function registerVmSession(vm, label, onSnapshot) {
  const dir = sessionsDir();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Required here, not at the top: the CLI's list/attach never load the addon.
  const { native } = require("./native.cjs");
  const server = await native.serveAttach(vm._native, {
    socketPath: path.join(dir, `${vm.id}.sock`),
    vmId: vm.id,
    env: mergeEnv([vm._options.env, "env"]),
  }, onSnapshot ?? null);
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
