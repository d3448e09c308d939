// Faults from issue 12: multi-byte characters split across output chunks,
// aborting a piped exec, fds/threads left behind by closed VMs.
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import { after, before, test } from "node:test";
import { createRequire } from "node:module";
import { vmSkip } from "./helpers.mjs";
import { qemuPidByMarker, runSoak } from "./soak/boot-soak.mjs";

const require = createRequire(import.meta.url);
const { VM, ensureImage, findSession, connectToSession } = require("../js/index.cjs");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const skip = vmSkip();

let vm;
before(async () => {
  if (skip) return;
  vm = await VM.create({ memory: "512M", cpus: 1 });
  await vm.start();
});
after(async () => {
  if (vm) await vm.close();
});

/** ~300 KB of 1-, 2-, 3- and 4-byte UTF-8 characters in lines of varying length. */
function mixedText() {
  const chars = ["a", "é", "ß", "€", "中", "😀", "𝄞"];
  const parts = [];
  let bytes = 0;
  for (let i = 0; bytes < 300 * 1024; i++) {
    const c = chars[(i * 7 + (i >> 3)) % chars.length] + (i % 97 === 96 ? "\n" : "");
    parts.push(c);
    bytes += Buffer.byteLength(c);
  }
  return `${parts.join("")}\n`;
}

test("a character split across chunks decodes whole in iteration, output() and lines()", { skip }, async () => {
  const text = mixedText();
  await vm.fs.writeFile("/tmp/utf8.txt", text);
  // dd writes 4097 bytes at a time; a 4096-byte window cuts its output into
  // chunks of at most 4096 bytes, so characters straddle chunk boundaries.
  const cmd = "dd if=/tmp/utf8.txt bs=4097 status=none";
  const opts = { stdout: "pipe", stderr: "pipe", windowBytes: 4096 };

  let iterated = "";
  for await (const s of vm.exec(cmd, opts)) iterated += s;
  assert.equal(iterated, text);

  let merged = "";
  const raw = [];
  for await (const c of vm.exec(cmd, opts).output()) {
    assert.equal(c.stream, "stdout");
    merged += c.text;
    raw.push(c.data);
  }
  assert.equal(merged, text);
  assert.equal(Buffer.concat(raw).toString("utf8"), text);
  assert.ok(raw.length >= 75, `expected many chunks, got ${raw.length}`);
  assert.ok(
    raw.some((b) => b.toString("utf8").includes("\uFFFD")),
    "some chunk must end inside a character (otherwise this test proves nothing)",
  );

  const lines = [];
  for await (const l of vm.exec(cmd, opts).lines()) lines.push(l);
  assert.deepEqual(lines, text.slice(0, -1).split("\n"));

  // Through the session socket (what `gondolin attach` and the CLI use):
  // output travels as bytes and is decoded once, at the end.
  const session = await findSession(vm.id);
  const got = await new Promise((resolve, reject) => {
    const parts = [];
    const conn = connectToSession(session.socketPath, {
      onMessage: (m) => {
        if (m.type === "status") conn.send({ type: "exec", id: 1, argv: ["dd", "if=/tmp/utf8.txt", "bs=4097", "status=none"] });
        else if (m.type === "output" && m.stream === "stdout") parts.push(Buffer.from(m.data, "base64"));
        else if (m.type === "exit") {
          conn.close();
          resolve(Buffer.concat(parts).toString("utf8"));
        } else if (m.type === "error") reject(new Error(m.message));
      },
      onClose: (err) => err && reject(err),
    });
  });
  assert.equal(got, text);
});

test("aborting an exec with piped output ends the streams and rejects; no 'error' event", { skip }, async () => {
  const ac = new AbortController();
  const proc = vm.exec("echo started; echo err >&2; sleep 30", { stdout: "pipe", stderr: "pipe", signal: ac.signal });
  // Watch every event without adding an 'error' listener: the caller in the
  // report listened for 'data' only, and an 'error' would be uncaught.
  const events = { stdout: [], stderr: [] };
  for (const name of ["stdout", "stderr"]) {
    const s = proc[name];
    const emit = s.emit.bind(s);
    s.emit = (ev, ...args) => {
      events[name].push(ev);
      return emit(ev, ...args);
    };
  }
  let out = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", () => {});
  const ended = Promise.all([proc.stdout, proc.stderr].map((s) => new Promise((r) => s.once("end", r))));
  while (!out.includes("started")) await new Promise((r) => setTimeout(r, 20));
  ac.abort();
  await assert.rejects(proc, (e) => e.code === "exec_aborted" && e.message === "exec aborted");
  await ended;
  assert.equal(out, "started\n");
  assert.equal(events.stdout.includes("error"), false);
  assert.equal(events.stderr.includes("error"), false);
  assert.ok(events.stdout.includes("end"));

  // Iterating an aborted exec throws its error after the last chunk.
  const ac2 = new AbortController();
  const seen = [];
  await assert.rejects(
    (async () => {
      for await (const s of vm.exec("echo one; sleep 30", { stdout: "pipe", signal: ac2.signal })) {
        seen.push(s);
        ac2.abort();
      }
    })(),
    (e) => e.code === "exec_aborted",
  );
  assert.deepEqual(seen, ["one\n"]);
});

test("a piped stream buffers at most windowBytes + 1 KiB on the host while its consumer waits", { skip }, async () => {
  const windowBytes = 4096;
  const proc = vm.exec("head -c 1048576 /dev/zero", { stdout: "pipe", windowBytes });
  // Nobody reads for a while: the guest must stop, not the host buffer grow.
  await sleep(1500);
  const held = proc.stdout.readableLength;
  assert.ok(held > 0, "some output arrived");
  assert.ok(held <= windowBytes + 1024, `host buffered ${held} bytes with windowBytes ${windowBytes}`);
  // A slow consumer: the buffer stays bounded all the way through.
  let total = 0;
  let peak = 0;
  for await (const chunk of proc.stdout) {
    total += chunk.length;
    peak = Math.max(peak, proc.stdout.readableLength);
    if (total % 65536 < chunk.length) await sleep(5);
  }
  assert.ok(peak <= windowBytes + 1024, `peak ${peak}`);
  assert.equal((await proc).exitCode, 0);
  assert.equal(total, 1048576);
});

test("create/exec/close cycles (QEMU killed mid-exec, during boot, after the exec) leave no fds or threads", { skip }, async () => {
  // The short version of __test__/soak/fd-soak.mjs (50 cycles).
  const kinds = [null, "exec", null, "boot", "after", "exec", null, null];
  const s = await runSoak({
    cycles: kinds.length,
    concurrency: 1,
    plan: (n) => kinds[n],
    vmOptions: { memory: "256M", cpus: 1 },
  });
  assert.deepEqual(s.failures, []);
  assert.ok(s.fds.after <= s.fds.before, `fds grew: ${JSON.stringify(s.fds)}`);
  assert.ok(s.threads.after <= s.threads.before, `threads grew: ${JSON.stringify(s.threads)}`);
  assert.equal(s.kills.missed, 0, `every planned kill must hit a running QEMU: ${JSON.stringify(s.kills)}`);
});

/** Pause a QEMU's vCPUs through its QMP socket (a boot that stalls). */
async function qmpStop(qmpPath) {
  const sock = net.connect(qmpPath);
  const replies = [];
  let buf = "";
  let wake = null;
  sock.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const m = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (!m.event) replies.push(m);
      if (wake) wake();
    }
  });
  const reply = async (n) => {
    while (replies.length < n) await new Promise((r) => (wake = r));
  };
  await reply(1); // greeting
  sock.write('{"execute":"qmp_capabilities"}\n');
  await reply(2);
  sock.write('{"execute":"stop"}\n');
  await reply(3);
  sock.end();
  assert.deepEqual(replies[2], { return: {} });
}

test("a boot stuck past the slow-boot mark: vm_start_timeout carries the console and QEMU's vCPU state", { skip }, async () => {
  const image = await ensureImage();
  const marker = `gondolin.soak=${process.pid}-stall`;
  process.env.GONDOLIN_SLOW_BOOT_MS = "1500";
  // A cold boot: with a boot template, a stalled template build falls back to a fresh boot that succeeds.
  const stalled = await VM.create({ memory: "256M", cpus: 1, startTimeoutMs: 5000, sandbox: { append: `${image.cmdline} ${marker}`, bootSnapshot: false } });
  try {
    const booting = stalled.start().then(() => null, (e) => e);
    // Find our QEMU and its QMP socket, then pause its vCPUs.
    let qmp = null;
    for (let i = 0; i < 200 && !qmp; i++) {
      const pid = qemuPidByMarker(marker);
      const m = pid && /-qmp\0unix:([^,\0]+)/.exec(fs.readFileSync(`/proc/${pid}/cmdline`, "utf8"));
      if (m && fs.existsSync(m[1])) qmp = m[1];
      else await sleep(10);
    }
    assert.ok(qmp, "QEMU's QMP socket");
    await qmpStop(qmp);
    const e = await booting;
    assert.equal(e && e.code, "vm_start_timeout");
    assert.match(e.message, /^vm startup timed out after 5000ms while waiting for guest readiness; after 1500ms /);
    assert.match(e.message, /; rip 1s later: CPU#0 [RE]IP=[0-9a-f]+; /);
    assert.match(e.message, /QEMU pid \d+; status: \{[^}]*"status":"paused"/);
    assert.match(e.message, /registers: CPU#0 .*[RE]IP=[0-9a-f]+ /);
    assert.doesNotMatch(e.message, /XMM00=/, "FPU/SSE state is left out");
    // Paused before sandboxd ran: the guest never opened the control port.
    assert.match(e.message, /ports: gondolin.control: guest closed[,;]/);
    assert.match(e.message, /; console: /);
  } finally {
    delete process.env.GONDOLIN_SLOW_BOOT_MS;
    await stalled.close();
  }
});
