"use strict";
// CommonJS entry of @gondolin/native.

const { VM } = require("./vm.cjs");
const { VmCheckpoint } = require("./checkpoint.cjs");
const { DEFAULT_GUEST_TMPFS } = require("./options.cjs");
const { ErrorCodes } = require("./errors.cjs");
const { ExecProcess, ExecResult } = require("./exec.cjs");
const {
  buildImage,
  ensureImage,
  findImage,
  ensureGuestAssets,
  hasGuestAssets,
  getAssetDirectory,
  loadGuestAssets,
  verifyAssets,
} = require("./image.cjs");
const {
  getImageStoreDirectory,
  getImageObjectDirectory,
  importImageFromDirectory,
  resolveImageSelector,
  listImageRefs,
  setImageRef,
  tagImage,
  removeImage,
} = require("./image-store.cjs");
// Images over OCI registries (our extension).
const { pullImage, pushImage } = require("./image-oci.cjs");
const {
  MAX_RPC_DATA,
  ERRNO,
  VirtualProvider,
  VirtualProviderClass,
  ReadonlyVirtualProvider,
  MemoryProvider,
  RealFSProvider,
  ReadonlyProvider,
  ShadowProvider,
  createShadowPathPredicate,
  normalizeVfsPath,
  isWriteFlag,
  VirtualDirent,
  createVirtualDirStats,
  formatVirtualEntries,
} = require("./vfs.cjs");

const {
  createHttpHooks,
  HttpRequestBlockedError,
  makePlaceholderFunc,
  PLACEHOLDER_ALPHABET_HEX,
  PLACEHOLDER_ALPHABET_ALPHANUMERIC,
  PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC,
  PLACEHOLDER_ALPHABET_BASE64URL,
} = require("./net.cjs");
const { IngressRequestBlockedError, GondolinListeners, parseListenersFile, serializeListenersFile } = require("./ingress.cjs"); // ingress
const { getInfoFromSshExecRequest } = require("./ssh.cjs"); // SSH egress
const { RemoteVM } = require("./remote-client.cjs"); // remote: VMs on a ws-server
const { listSessions, findSession, gcSessions, connectToSession, registerSession, unregisterSession } = require("./sessions.cjs");

module.exports = {
  pullImage,
  pushImage,
  VM,
  VmCheckpoint,
  DEFAULT_GUEST_TMPFS,
  ErrorCodes,
  createHttpHooks,
  HttpRequestBlockedError,
  makePlaceholderFunc,
  PLACEHOLDER_ALPHABET_HEX,
  PLACEHOLDER_ALPHABET_ALPHANUMERIC,
  PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC,
  PLACEHOLDER_ALPHABET_BASE64URL,
  getInfoFromSshExecRequest, // SSH egress
  ExecProcess,
  ExecResult,
  buildImage,
  ensureImage,
  findImage,
  ensureGuestAssets,
  hasGuestAssets,
  getAssetDirectory,
  loadGuestAssets,
  verifyAssets,
  getImageStoreDirectory,
  getImageObjectDirectory,
  importImageFromDirectory,
  resolveImageSelector,
  listImageRefs,
  setImageRef,
  tagImage,
  removeImage,
  listSessions,
  RemoteVM, // remote
  findSession,
  gcSessions,
  connectToSession,
  registerSession,
  unregisterSession,
  MAX_RPC_DATA,
  ERRNO,
  VirtualProvider,
  VirtualProviderClass,
  ReadonlyVirtualProvider,
  MemoryProvider,
  RealFSProvider,
  ReadonlyProvider,
  ShadowProvider,
  createShadowPathPredicate,
  normalizeVfsPath,
  isWriteFlag,
  VirtualDirent,
  createVirtualDirStats,
  formatVirtualEntries,
  // ingress
  IngressRequestBlockedError,
  GondolinListeners,
  parseListenersFile,
  serializeListenersFile,
};
