// vm.enableIngress(): host fetch() reaches servers inside the guest (a
// python http.server, a node server with SSE, echo and a WebSocket echo, a
// raw close-delimited responder) through the native gateway, routed by
// /etc/gondolin/listeners. One shared VM; the CLI case boots its own.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import net from "node:net";
import {
  VM,
  MemoryProvider,
  IngressRequestBlockedError,
  GondolinListeners,
  parseListenersFile,
  serializeListenersFile,
} from "@gondolin/native";
import { vmSkip, cli, sleep } from "./helpers.mjs";

const skip = vmSkip();
// Under TCG a guest server can take a while to answer its first request.
const TIMEOUTS = { upstreamHeaderTimeoutMs: 10_000 };
let vm;

// 8001: echo (/echo), SSE (/sse), WebSocket echo (upgrade); 8002: a raw
// HTTP/1.1 response with neither length nor chunking (ends at close).
const NODE_SERVER = String.raw`
const http = require("http"), net = require("net"), crypto = require("crypto");
const srv = http.createServer((req, res) => {
  if (req.url.startsWith("/sse")) {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    let n = 0;
    const t = setInterval(() => {
      res.write("data: " + (++n) + "\n\n");
      if (n === 3) { clearInterval(t); res.end(); }
    }, 700);
    return;
  }
  let body = "";
  req.on("data", (d) => (body += d));
  req.on("end", () => {
    res.setHeader("content-type", "application/json");
    res.setHeader("x-guest", "node");
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }));
  });
});
srv.on("upgrade", (req, sock) => {
  const accept = crypto.createHash("sha1").update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
  sock.write("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: " + accept + "\r\n\r\n");
  let buf = Buffer.alloc(0);
  sock.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 6) {
      const len = buf[1] & 0x7f; // small frames only
      if (buf.length < 6 + len) return;
      const mask = buf.subarray(2, 6);
      const payload = Buffer.from(buf.subarray(6, 6 + len)).map((b, i) => b ^ mask[i % 4]);
      buf = buf.subarray(6 + len);
      sock.write(Buffer.concat([Buffer.from([0x81, payload.length]), payload]));
    }
  });
});
srv.listen(8001, "127.0.0.1");
net.createServer((s) => {
  s.once("data", () => {
    s.write("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n");
    let i = 0;
    const t = setInterval(() => {
      s.write("part " + i + "\n");
      if (++i === 5) { clearInterval(t); s.end(); }
    }, 50);
  });
}).listen(8002, "127.0.0.1");
`;

async function startGuestServers() {
  await vm.fs.writeFile("/tmp/srv.js", NODE_SERVER);
  const r = await vm.exec([
    "/bin/sh",
    "-c",
    "mkdir -p /tmp/www/sub && echo hello-python > /tmp/www/index.html && echo sub-file > /tmp/www/sub/f.txt && " +
      "head -c 1048576 /dev/zero > /tmp/www/big.bin && " +
      "(setsid python3 -m http.server 8000 --bind 127.0.0.1 --directory /tmp/www >/tmp/py.log 2>&1 &) && " +
      "(setsid node /tmp/srv.js >/tmp/node.log 2>&1 &)",
  ]);
  assert.equal(r.exitCode, 0, r.stderr);
  // Wait until both listen (inside the guest).
  const wait = await vm.exec([
    "/bin/sh",
    "-c",
    "for i in $(seq 1 200); do curl -s -o /dev/null http://127.0.0.1:8000/ && curl -s -o /dev/null http://127.0.0.1:8001/echo && exit 0; sleep 0.1; done; cat /tmp/py.log /tmp/node.log; exit 1",
  ]);
  assert.equal(wait.exitCode, 0, wait.stdout + wait.stderr);
}

before(async () => {
  if (skip) return;
  vm = await VM.create();
  await vm.start();
  await startGuestServers();
});

after(async () => {
  await vm?.close();
});

async function until(what, fn, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

test("listeners file: parse, serialize, GondolinListeners over a provider", () => {
  const { routes } = parseListenersFile("/ :8080\n/api/ :4000 # c\n\0/api2 :4001 strip_prefix=false\n");
  assert.deepEqual(routes, [
    { prefix: "/", port: 8080, stripPrefix: true },
    { prefix: "/api", port: 4000, stripPrefix: true },
    { prefix: "/api2", port: 4001, stripPrefix: false },
  ]);
  assert.equal(serializeListenersFile({ routes }), "/\t:8080\n/api\t:4000\n/api2\t:4001\tstrip_prefix=false\n");
  assert.throws(() => parseListenersFile("/ :8080foo"), /invalid listeners file line 1: invalid port/);
  assert.throws(() => serializeListenersFile({ routes: [{ prefix: "/", port: 0 }] }), /invalid ingress route port: 0/);
  const p = new MemoryProvider();
  const l = new GondolinListeners(p);
  l.setRoutes([{ prefix: "x/", port: 1 }]);
  assert.deepEqual(l.getRoutes(), [{ prefix: "/x", port: 1, stripPrefix: true }]);
  assert.equal(p.readFileSync("/listeners", "utf8"), "/x\t:1\n");
  p.writeFileSync("/listeners", "nonsense");
  assert.throws(() => l.reloadNow(), /expected '<prefix> <backend>'/);
  assert.deepEqual(l.getRoutes(), [{ prefix: "/x", port: 1, stripPrefix: true }]);
});

test("enableIngress without the /etc/gondolin mount is upstream's error", async () => {
  const other = new VM({ vfs: { mounts: { "/etc/gondolin": new MemoryProvider() } } });
  await assert.rejects(other.enableIngress(), (e) => e.code === "invalid_state" && /ingress requires the \/etc\/gondolin mount/.test(e.message));
  assert.deepEqual(other.getIngressRoutes(), []);
  assert.throws(() => other.setIngressRoutes([]), /\/etc\/gondolin mount is not available/);
  await other.close();
  // Ours: the transport is the VM's network.
  const offline = new VM({ sandbox: { netEnabled: false } });
  await assert.rejects(offline.enableIngress(), (e) => e.code === "invalid_state" && /network/.test(e.message));
  await offline.close();
  assert.throws(() => vm?.setIngressRoutes([{ prefix: "/", port: 70000 }]), /invalid ingress route port: 70000/);
});

test("prefix routing and strip through setIngressRoutes; the guest sees the file", { skip }, async () => {
  const access = await vm.enableIngress(TIMEOUTS);
  assert.equal(access, await vm.enableIngress(), "idempotent");
  assert.equal(access.url, `http://127.0.0.1:${access.port}`);
  vm.setIngressRoutes([
    { prefix: "/", port: 8000 },
    { prefix: "/node", port: 8001 },
    { prefix: "/raw", port: 8001, stripPrefix: false },
  ]);
  const file = await vm.exec(["cat", "/etc/gondolin/listeners"]);
  assert.equal(file.stdout, "/\t:8000\n/node\t:8001\n/raw\t:8001\tstrip_prefix=false\n");

  let r = await fetch(`${access.url}/`);
  assert.equal(r.status, 200);
  assert.equal(await r.text(), "hello-python\n");
  r = await fetch(`${access.url}/sub/f.txt`);
  assert.equal(await r.text(), "sub-file\n");
  r = await fetch(`${access.url}/node/echo?q=1`, { method: "POST", body: "payload", headers: { "x-client": "t" } });
  const echo = await r.json();
  assert.equal(echo.url, "/echo?q=1");
  assert.equal(echo.method, "POST");
  assert.equal(echo.body, "payload");
  assert.equal(echo.headers["x-forwarded-prefix"], "/node");
  assert.equal(echo.headers["x-forwarded-for"], "127.0.0.1");
  assert.equal(echo.headers["x-client"], "t");
  r = await fetch(`${access.url}/raw/echo`);
  assert.equal((await r.json()).url, "/raw/echo");
  r = await fetch(`${access.url}/big.bin`);
  assert.equal((await r.arrayBuffer()).byteLength, 1 << 20);
});

test("guest writes to /etc/gondolin/listeners reload; garbage keeps the old routes", { skip }, async () => {
  const access = await vm.enableIngress(TIMEOUTS);
  let w = await vm.exec(["/bin/sh", "-c", "printf '/only :8001\\n' > /etc/gondolin/listeners"]);
  assert.equal(w.exitCode, 0, w.stderr);
  await until("the guest's routes", () => vm.getIngressRoutes().length === 1 && vm.getIngressRoutes()[0].prefix === "/only");
  // Rewritten in canonical form, as upstream does.
  await until("the canonical file", async () => (await vm.exec(["cat", "/etc/gondolin/listeners"])).stdout === "/only\t:8001\n");
  let r = await fetch(`${access.url}/only/echo`);
  assert.equal((await r.json()).url, "/echo");
  r = await fetch(`${access.url}/sub/f.txt`);
  assert.equal(r.status, 404);
  assert.equal(await r.text(), "no route\n");

  w = await vm.exec(["/bin/sh", "-c", "echo 'this is not a route' > /etc/gondolin/listeners"]);
  assert.equal(w.exitCode, 0);
  await until("a reload error", () => vm.getIngressReloadError());
  assert.match(vm.getIngressReloadError().message, /invalid listeners file line 1: prefix must start with '\/'/);
  assert.deepEqual(vm.getIngressRoutes(), [{ prefix: "/only", port: 8001, stripPrefix: true }]);
  r = await fetch(`${access.url}/only/echo`);
  assert.equal(r.status, 200, "old routes still serve");

  // Over 64 KiB: refused in the guest; other files are read-only.
  w = await vm.exec(["/bin/sh", "-c", "head -c 70000 /dev/zero | tr '\\0' '#' > /etc/gondolin/listeners"]);
  assert.notEqual(w.exitCode, 0);
  w = await vm.exec(["/bin/sh", "-c", "echo x > /etc/gondolin/other"]);
  assert.notEqual(w.exitCode, 0);
  w = await vm.exec(["/bin/sh", "-c", "test -s /etc/gondolin/mitm/ca.crt"]);
  assert.equal(w.exitCode, 0, "the MITM CA is still served");
});

test("streaming: SSE events arrive as sent, close-delimited bodies end cleanly", { skip }, async () => {
  const access = await vm.enableIngress(TIMEOUTS);
  vm.setIngressRoutes([
    { prefix: "/node", port: 8001 },
    { prefix: "/close", port: 8002 },
  ]);
  const t0 = Date.now();
  const r = await fetch(`${access.url}/node/sse`);
  assert.equal(r.headers.get("content-type"), "text/event-stream");
  const reader = r.body.getReader();
  const first = await reader.read();
  const firstAt = Date.now() - t0;
  assert.match(Buffer.from(first.value).toString(), /^data: 1/);
  let rest = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    rest += Buffer.from(value).toString();
  }
  const total = Date.now() - t0;
  assert.match(rest, /data: 3/);
  assert.ok(total - firstAt >= 1000, `the first event came ${total - firstAt} ms before the end`);

  const c = await fetch(`${access.url}/close`);
  assert.equal(c.status, 200);
  assert.equal(await c.text(), "part 0\npart 1\npart 2\npart 3\npart 4\n");
});

/** Send raw bytes; the answer up to the gateway's close (or 5 s). */
function rawRequest(port, text) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => s.write(text));
    let out = "";
    s.setTimeout(5000, () => s.destroy());
    s.on("data", (d) => (out += d));
    s.on("error", reject);
    s.on("close", () => resolve(out));
  });
}

/** A minimal WebSocket client over net: handshake, one masked text frame, read the echo. */
function wsEcho(port, path, text) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    const key = crypto.randomBytes(16).toString("base64");
    let buf = Buffer.alloc(0);
    let upgraded = false;
    s.setTimeout(20_000, () => reject(new Error("websocket timed out")));
    s.on("error", reject);
    s.on("connect", () =>
      s.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: ${key}\r\nsec-websocket-version: 13\r\n\r\n`),
    );
    s.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        if (!head.startsWith("HTTP/1.1 101")) {
          s.destroy();
          return resolve({ head });
        }
        upgraded = true;
        buf = buf.subarray(end + 4);
        const payload = Buffer.from(text);
        const mask = crypto.randomBytes(4);
        s.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload.map((b, i) => b ^ mask[i % 4])]));
      }
      if (upgraded && buf.length >= 2 && buf.length >= 2 + buf[1]) {
        const echo = buf.subarray(2, 2 + buf[1]).toString();
        s.destroy();
        resolve({ echo });
      }
    });
  });
}

test("WebSocket echo through the gateway", { skip }, async () => {
  const access = await vm.enableIngress(TIMEOUTS);
  vm.setIngressRoutes([{ prefix: "/ws", port: 8001 }]);
  const r = await wsEcho(access.port, "/ws/socket", "hello-ws");
  assert.equal(r.echo, "hello-ws");
  // Upgrade intent without a proper upgrade request (fetch may not send `upgrade`).
  const refused = await rawRequest(access.port, "GET /ws/x HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\r\n");
  assert.match(refused, /^HTTP\/1.1 426 /);
  assert.match(refused, /use websocket upgrade\n$/);
});

test("100 parallel requests", { skip }, async () => {
  const access = await vm.enableIngress(TIMEOUTS);
  vm.setIngressRoutes([
    { prefix: "/", port: 8000 },
    { prefix: "/node", port: 8001 },
  ]);
  const results = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      fetch(`${access.url}${i % 2 ? "/node/echo" : "/index.html"}`).then(async (r) => [r.status, await r.text()]),
    ),
  );
  for (const [status, body] of results) {
    assert.equal(status, 200, body);
  }
});

test("hooks: deny, block with a custom answer, patch request and response", { skip }, async () => {
  const old = await vm.enableIngress(TIMEOUTS);
  await old.close();
  const seen = [];
  const access = await vm.enableIngress({
    ...TIMEOUTS,
    bufferResponseBody: false,
    hooks: {
      isAllowed: (info) => {
        seen.push(info);
        return !info.path.startsWith("/node/deny");
      },
      onRequest: (req) => {
        if (req.path.startsWith("/node/blocked")) throw new IngressRequestBlockedError("no", 451, "Unavailable", "custom block\n");
        if (req.path.startsWith("/node/rewrite")) return { backendTarget: "/echo/rewritten", headers: { "x-hook": "added", "x-client": null } };
        if (req.path.startsWith("/node/buffer")) return { bufferResponseBody: true };
        return undefined;
      },
      onResponse: (resp, req) => {
        if (req.path.startsWith("/node/buffer")) return { body: Buffer.from(resp.body.toString().toUpperCase()) };
        return { statusCode: req.path.startsWith("/node/teapot") ? 418 : undefined, headers: { "x-guest": null, "x-patched": "yes" } };
      },
    },
  });
  assert.notEqual(access, old);
  vm.setIngressRoutes([{ prefix: "/node", port: 8001 }]);
  let r = await fetch(`${access.url}/node/deny`);
  assert.equal(r.status, 403);
  assert.equal(await r.text(), "forbidden\n");
  assert.equal(seen[0].clientIp, "127.0.0.1");
  assert.deepEqual(seen[0].route, { prefix: "/node", port: 8001, stripPrefix: true });
  r = await fetch(`${access.url}/node/blocked`);
  assert.equal(r.status, 451);
  assert.equal(r.statusText, "Unavailable");
  assert.equal(await r.text(), "custom block\n");
  r = await fetch(`${access.url}/node/rewrite`, { headers: { "x-client": "gone" } });
  const echo = await r.json();
  assert.equal(echo.url, "/echo/rewritten");
  assert.equal(echo.headers["x-hook"], "added");
  assert.equal(echo.headers["x-client"], undefined);
  assert.equal(r.headers.get("x-patched"), "yes");
  assert.equal(r.headers.get("x-guest"), null);
  r = await fetch(`${access.url}/node/teapot`);
  assert.equal(r.status, 418);
  r = await fetch(`${access.url}/node/buffer`);
  assert.match(await r.text(), /"URL":"\/BUFFER"/);
  await access.close();
  // Closed: the port no longer listens.
  await assert.rejects(
    new Promise((resolve, reject) => {
      const s = net.connect(access.port, "127.0.0.1", () => {
        s.destroy();
        resolve();
      });
      s.on("error", reject);
    }),
    (e) => e.code === "ECONNREFUSED",
  );
});

test("CLI: bash --listen prints the URL and serves the guest", { skip }, async () => {
  const script = [
    "printf '/ :8000\\n' > /etc/gondolin/listeners",
    "mkdir -p /tmp/w && echo from-cli > /tmp/w/index.html",
    "cd /tmp/w && python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &",
    "for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done",
    "echo READY",
    "sleep 60",
  ].join("\n");
  const child = spawn(process.execPath, [cli, "bash", "--listen", "127.0.0.1:0", "--", "sh", "-c", script], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  try {
    const url = await until("the URL", () => /Ingress enabled: (http:\/\/\S+)/.exec(err)?.[1], 120_000);
    assert.match(err, /Configure routes by editing \/etc\/gondolin\/listeners inside the VM\./);
    await until("the guest server", () => out.includes("READY"), 60_000);
    const r = await fetch(`${url}/`);
    assert.equal(await r.text(), "from-cli\n");
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.on("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
  }
});

test("CLI: --listen values are checked", () => {
  const run = (args) =>
    new Promise((resolve) => {
      const c = spawn(process.execPath, [cli, "bash", ...args]);
      let e = "";
      c.stderr.on("data", (d) => (e += d));
      c.on("exit", (code) => resolve({ code, e }));
    });
  return Promise.all([
    run(["--listen", "-1"]).then(({ code, e }) => {
      assert.equal(code, 2, "a usage error");
      assert.match(e, /Invalid --listen value: -1 \(port must be 0-65535\)/);
    }),
    run(["--listen", "[::1"]).then(({ e }) => assert.match(e, /missing '\]'/)),
    run(["--listen", "[]:1"]).then(({ e }) => assert.match(e, /empty host in brackets/)),
    run(["--listen", "[::1]80"]).then(({ e }) => assert.match(e, /expected :PORT after \]/)),
  ]);
});
