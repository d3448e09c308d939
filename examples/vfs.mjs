// Host-served files: a project directory with its .env hidden, a read-only
// docs mount, and a provider written in JavaScript. node examples/vfs.mjs
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  VM,
  RealFSProvider,
  ReadonlyProvider,
  ShadowProvider,
  createShadowPathPredicate,
} from "@gondolin/native";

const project = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-example-"));
fs.writeFileSync(path.join(project, "main.py"), "print('hello from the host project')\n");
fs.writeFileSync(path.join(project, ".env"), "API_KEY=not-for-the-guest\n");

// A JS provider: one synthetic, always-fresh file.
const clock = {
  readonly: true,
  supportsSymlinks: false,
  stat(p) {
    const st = Object.create(fs.Stats.prototype);
    const now = Date.now();
    const size = p === "/now" ? new Date(now).toISOString().length + 1 : 4096;
    Object.assign(st, { mode: p === "/" ? 0o040555 : 0o100444, nlink: 1, uid: 0, gid: 0, size, ino: 0, atimeMs: now, mtimeMs: now, ctimeMs: now });
    if (p !== "/" && p !== "/now") throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
    return st;
  },
  readdir(p) {
    return p === "/" ? ["now"] : [];
  },
  open(p) {
    const data = Buffer.from(new Date().toISOString() + "\n");
    return {
      read(buf, off, len, pos) {
        const n = Math.max(0, Math.min(len, data.length - pos));
        data.copy(buf, off, pos, pos + n);
        return { bytesRead: n, buffer: buf };
      },
      stat: () => clock.stat(p),
      close() {},
    };
  },
};

const vm = await VM.create({
  vfs: {
    mounts: {
      "/workspace": new ShadowProvider(new RealFSProvider(project), {
        shouldShadow: createShadowPathPredicate([".env"]),
      }),
      "/docs": new ReadonlyProvider(new RealFSProvider(project)),
      "/clock": clock,
    },
  },
});
try {
  const r = await vm.exec("cd /workspace && python3 main.py && ls -a && cat /clock/now && (touch /docs/x || true)");
  process.stdout.write(r.stdout + r.stderr);
  await vm.exec("echo 'written by the guest' > /workspace/out.txt");
  console.log("host sees:", fs.readFileSync(path.join(project, "out.txt"), "utf8").trim());
} finally {
  await vm.close();
  fs.rmSync(project, { recursive: true, force: true });
}
