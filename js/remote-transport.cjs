"use strict";
// The transport under the remote protocol: the addon's WebSocket server and
// client (remoteListen/remoteConnect, src/napi/remote.rs) when it has them,
// else the dev stand-in of js/remote-pair.cjs (TCP, no WebSocket, no TLS),
// with a warning. Both give RemoteConnection-shaped ends.

const { native } = require("./native.cjs");

let warned = false;
function dev() {
  if (!warned && process.env.GONDOLIN_REMOTE_DEV_TRANSPORT !== "1") {
    process.emitWarning("gondolin: this addon has no WebSocket transport (remoteListen); using the dev TCP stand-in (no TLS)");
  }
  warned = true;
  return require("./remote-pair.cjs");
}

const hasNative = () => typeof native.remoteListen === "function" && process.env.GONDOLIN_REMOTE_DEV_TRANSPORT !== "1";

/** Listen; `onConnection(conn)` for each authenticated connection. Resolves to a RemoteServer. */
function listen(opts, onConnection) {
  if (hasNative()) return native.remoteListen(opts, onConnection);
  if (opts.tlsCert || opts.tlsKey) return Promise.reject(new Error("--tls-cert/--tls-key need the native WebSocket transport"));
  return dev().devListen(opts, onConnection);
}

/** Connect to a server URL (ws:// or wss://). */
function connect(url, opts) {
  if (hasNative()) return native.remoteConnect(url, opts);
  return dev().devConnect(url, opts);
}

module.exports = { listen, connect, hasNative };
