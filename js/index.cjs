"use strict";
// CommonJS entry of @gondolin/native.

const { VM } = require("./vm.cjs");
const { ExecProcess, ExecResult } = require("./exec.cjs");
const { buildImage, ensureImage, findImage } = require("./image.cjs");

const { listSessions, findSession, gcSessions, connectToSession, registerSession, unregisterSession } = require("./sessions.cjs");

module.exports = {
  VM,
  ExecProcess,
  ExecResult,
  buildImage,
  ensureImage,
  findImage,
  listSessions,
  findSession,
  gcSessions,
  connectToSession,
  registerSession,
  unregisterSession,
};
