// ES module entry of @gondolin/native: the same objects as the CommonJS entry.
import cjs from "./index.cjs";

export const {
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
} = cjs;
export default cjs;
