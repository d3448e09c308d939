// The mediated network against a real VM: real HTTP and HTTPS servers on a
// host address, the guest's own curl/python/node/git as clients.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import crypto from "node:crypto";
import http from "node:http";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { VM, createHttpHooks, HttpRequestBlockedError } from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const skip = vmSkip();
let vm;
let dir;
let hostIp;
let httpPort;
let httpsPort;
const seen = []; // requests the servers received
const events = [];
let secretEnv;
let hooksResult;
const hookSeen = [];

/** The host's first non-loopback IPv4 address: the guest reaches it through the bridge. */
function firstHostIp() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return null;
}

/** A test CA and a server certificate for `ip`, made with the openssl CLI. */
function makeCerts(ip) {
  const run = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gondolin-test-ca",
    "-keyout", "ca.key", "-out", "ca.crt", "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=keyCertSign");
  run("req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${ip}`, "-keyout", "srv.key", "-out", "srv.csr");
  fs.writeFileSync(path.join(dir, "ext.cnf"), `subjectAltName=IP:${ip}\nextendedKeyUsage=serverAuth\n`);
  run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
    "-out", "srv.crt", "-extfile", "ext.cnf");
  // The host side verifies upstreams against the system store; SSL_CERT_FILE
  // adds our CA (read once, before the first VM).
  const system = fs.readFileSync("/etc/ssl/certs/ca-certificates.crt", "utf8");
  fs.writeFileSync(path.join(dir, "bundle.crt"), system + "\n" + fs.readFileSync(path.join(dir, "ca.crt"), "utf8"));
  process.env.SSL_CERT_FILE = path.join(dir, "bundle.crt");
}

/** Echo, big bodies, redirects, and static files under /git/ (a dumb-HTTP git repo). */
function handler(req, res) {
  const url = new URL(req.url, "http://x");
  seen.push({ url: req.url, headers: req.headers });
  if (url.pathname === "/redirect") {
    res.writeHead(302, { location: url.searchParams.get("to") });
    return res.end();
  }
  if (url.pathname === "/big") {
    const n = Number(url.searchParams.get("n"));
    res.writeHead(200, { "content-length": n });
    return res.end(Buffer.alloc(n, 0x61));
  }
  if (url.pathname.startsWith("/git/")) {
    const file = path.join(dir, url.pathname.slice(5));
    if (!file.startsWith(path.join(dir, "repo.git")) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404);
      return res.end();
    }
    res.writeHead(200);
    return res.end(fs.readFileSync(file));
  }
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }));
  });
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, "0.0.0.0", () => resolve(server.address().port)));
}

let servers = [];
before(async () => {
  if (skip) return;
  hostIp = firstHostIp();
  assert.ok(hostIp, "the host needs a non-loopback IPv4 address");
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-net-"));
  makeCerts(hostIp);
  // A repo served as static files (git's dumb HTTP protocol).
  const g = (...a) => execFileSync("git", a, { cwd: dir, stdio: "pipe" });
  g("init", "-q", "src");
  fs.writeFileSync(path.join(dir, "src", "README"), "cloned through the MITM\n");
  execFileSync("git", ["-c", "user.email=t@t", "-c", "user.name=t", "add", "README"], { cwd: path.join(dir, "src") });
  execFileSync("git", ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one"], { cwd: path.join(dir, "src") });
  g("clone", "-q", "--bare", "src", "repo.git");
  execFileSync("git", ["update-server-info"], { cwd: path.join(dir, "repo.git") });

  const plain = http.createServer(handler);
  // A minimal WebSocket echo (one small text frame at a time).
  plain.on("upgrade", (req, socket) => {
    const accept = crypto.createHash("sha1").update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    socket.on("data", (buf) => {
      const len = buf[1] & 0x7f;
      const mask = buf.subarray(2, 6);
      const data = Buffer.from(buf.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]));
      const payload = Buffer.from("echo:" + data);
      socket.write(Buffer.concat([Buffer.from([0x81, payload.length]), payload]));
    });
    socket.on("error", () => {});
  });
  const tls = https.createServer({ key: fs.readFileSync(path.join(dir, "srv.key")), cert: fs.readFileSync(path.join(dir, "srv.crt")) }, handler);
  servers = [plain, tls];
  httpPort = await listen(plain);
  httpsPort = await listen(tls);

  const hooks = createHttpHooks({
    allowedHosts: [hostIp, "*.allowed.test"],
    allowedInternalHosts: [hostIp],
    secrets: { API_KEY: { hosts: [hostIp], value: "real-secret-value" } },
    isRequestAllowed: (req) => new URL(req.url).pathname !== "/hook/deny",
    onRequest: async (req) => {
      const p = new URL(req.url).pathname;
      hookSeen.push(`${req.method} ${p}`);
      if (p === "/hook/short") return new Response("answered by the hook\n", { status: 202, headers: { "x-hook": "1" } });
      if (p === "/hook/throw") throw new Error("hook exploded");
      if (p === "/hook/blocked") throw new HttpRequestBlockedError("not today", 451, "Unavailable For Legal Reasons");
      if (p === "/hook/rewrite") req.headers.set("x-hooked", "yes"); // in place, returns undefined
      if (p === "/hook/post") return new Request(req.url.replace("/hook/post", "/echo-post"), { method: "POST", headers: req.headers, body: (await req.text()).toUpperCase() });
      return undefined;
    },
    onResponse: async (resp, req) => {
      if (new URL(req.url).pathname !== "/hook/resp") return undefined;
      return new Response((await resp.text()).toUpperCase(), { status: resp.status, headers: { "content-type": "text/plain" } });
    },
  });
  secretEnv = hooks.env;
  hooksResult = hooks;
  vm = await VM.create({ httpHooks: hooks.httpHooks, env: hooks.env, maxHttpBodyBytes: 1024 * 1024, onEgress: (e) => events.push(e) });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
  for (const s of servers) s.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function sh(cmd) {
  const r = await vm.exec(["/bin/bash", "-c", cmd]);
  return r;
}

test("the guest has eth0, a resolver, and the MITM CA in its trust store", { skip }, async () => {
  const r = await sh("ip -4 addr show eth0; ip route; cat /etc/resolv.conf; getent ahostsv4 example.com | head -1");
  assert.match(r.stdout, /inet 192\.168\.127\.3\/24/);
  assert.match(r.stdout, /default via 192\.168\.127\.1/);
  assert.match(r.stdout, /nameserver 192\.168\.127\.1/);
  assert.match(r.stdout, /^192\.0\.2\.1\s/m, "synthetic DNS answers every name");
  const ca = await vm.fs.readFile("/etc/gondolin/mitm/ca.crt", { encoding: "utf8" });
  assert.match(ca, /BEGIN CERTIFICATE/);
  const bundle = await sh("cat /etc/ssl/certs/ca-certificates.crt");
  assert.ok(bundle.stdout.includes(ca.trim()), "the system bundle includes the MITM CA");
});

test("HTTP egress reaches an allowed host with secrets filled in on the host", { skip }, async () => {
  const r = await sh(`curl -sS -m 20 -H "Authorization: Bearer $API_KEY" http://${hostIp}:${httpPort}/echo?q=1`);
  assert.equal(r.exitCode, 0, r.stderr);
  const echo = JSON.parse(r.stdout);
  assert.equal(echo.url, "/echo?q=1");
  assert.equal(seen.at(-1).headers.authorization, "Bearer real-secret-value", "the server got the real value");
  assert.equal(echo.headers.authorization, `Bearer ${secretEnv.API_KEY}`, "its echo comes back scrubbed");
  // The guest only ever holds the placeholder.
  const env = await sh("echo $API_KEY; cat /proc/self/environ | tr '\\0' '\\n' | grep API_KEY; grep -rs real-secret-value /proc/*/environ /tmp /root | wc -l");
  assert.match(env.stdout, /^GONDOLIN_SECRET_[0-9a-f]{48}\.API_KEY\n/);
  assert.equal(env.stdout.split("\n")[0], secretEnv.API_KEY);
  assert.ok(!env.stdout.includes("real-secret-value"));
  assert.equal(env.stdout.trim().split("\n").pop(), "0");
});

test("HTTPS through the MITM works for curl, python, node and git", { skip }, async () => {
  const url = `https://${hostIp}:${httpsPort}`;
  const curl = await sh(`curl -sS -m 20 ${url}/echo`);
  assert.equal(curl.exitCode, 0, curl.stderr);
  assert.equal(JSON.parse(curl.stdout).url, "/echo");
  const py = await sh(`python3 -c 'import urllib.request,json; print(json.load(urllib.request.urlopen("${url}/py"))["url"])'`);
  assert.equal(py.stdout.trim(), "/py", py.stderr);
  const node = await sh(`node -e 'fetch("${url}/node").then(r=>r.json()).then(j=>console.log(j.url))'`);
  assert.equal(node.stdout.trim(), "/node", node.stderr);
  const git = await sh(`cd /tmp && git clone -q ${url}/git/repo.git cloned && cat cloned/README`);
  assert.equal(git.stdout, "cloned through the MITM\n", git.stderr);
  const openssl = await sh(`echo | openssl s_client -connect ${hostIp}:${httpsPort} -verify_return_error 2>&1 | grep -E 'Verify return code|issuer'`);
  assert.match(openssl.stdout, /gondolin-mitm-ca/);
  assert.match(openssl.stdout, /Verify return code: 0/);
});

test("TLS: the Host header must match the server name; secrets rotate at runtime", { skip }, async () => {
  const r = await sh(`curl -s -m 20 -o /dev/null -w '%{http_code}' -H 'Host: other.allowed.test' https://${hostIp}:${httpsPort}/`);
  assert.equal(r.stdout, "421");
  hooksResult.secretManager.updateSecret("API_KEY", { value: "rotated-value" });
  try {
    const e = await sh(`curl -s -m 20 -H "X-Key: $API_KEY" http://${hostIp}:${httpPort}/rotated`);
    assert.equal(seen.at(-1).headers["x-key"], "rotated-value");
    assert.equal(JSON.parse(e.stdout).headers["x-key"], secretEnv.API_KEY, "scrubbed on the way back");
    const old = await sh(`curl -s -m 20 -o /dev/null -w '%{http_code}' -H "X-Key: real-secret-value" http://${hostIp}:${httpPort}/old`);
    assert.equal(old.stdout, "403", "the replaced value is refused");
  } finally {
    hooksResult.secretManager.updateSecret("API_KEY", { value: "real-secret-value" });
  }
});

test("a large download streams through intact", { skip }, async () => {
  const n = 20 * 1024 * 1024;
  const r = await sh(`curl -sS -m 120 http://${hostIp}:${httpPort}/big?n=${n} | wc -c; curl -sS -m 120 https://${hostIp}:${httpsPort}/big?n=${n} | sha256sum`);
  const [count, sum] = r.stdout.trim().split("\n");
  assert.equal(Number(count), n);
  const expected = (await import("node:crypto")).createHash("sha256").update(Buffer.alloc(n, 0x61)).digest("hex");
  assert.equal(sum.split(" ")[0], expected);
});

test("policy: other hosts, internal ranges and metadata redirects are blocked", { skip }, async () => {
  const code = (args) => sh(`curl -s -m 20 -o /tmp/body -w '%{http_code}' ${args}; echo; cat /tmp/body`);
  let r = await code(`-H 'Host: evil.test' http://${hostIp}:${httpPort}/`);
  assert.match(r.stdout, /^403\n403 Forbidden: blocked by policy: evil\.test/);
  r = await code("http://10.255.255.1:8080/");
  assert.match(r.stdout, /^403\n/, "internal ranges need allowedInternalHosts");
  r = await code(`"http://${hostIp}:${httpPort}/redirect?to=http://169.254.169.254/latest/meta-data/"`);
  assert.match(r.stdout, /^403\n.*169\.254\.169\.254/);
  r = await code(`"http://${hostIp}:${httpPort}/redirect?to=/echo"`);
  assert.match(r.stdout, /^200\n/, "redirects within policy are followed on the host");
  // A placeholder headed to a host outside the secret's list blocks the request.
  r = await code(`-H "X-Key: $API_KEY" -H 'Host: api.allowed.test' http://${hostIp}:${httpPort}/`);
  assert.match(r.stdout, /^403\n.*secret API_KEY not allowed for host: api\.allowed\.test/);
  const blocked = events.filter((e) => e.decision === "deny").map((e) => e.reason);
  assert.ok(blocked.some((x) => /evil\.test/.test(x)), JSON.stringify(events));
});

test("CONNECT, raw TCP and UDP other than DNS go nowhere", { skip }, async () => {
  const connect = await sh(`curl -sS -m 10 -p -x http://${hostIp}:${httpPort} https://example.com/ -o /dev/null; echo rc=$?`);
  assert.doesNotMatch(connect.stdout, /rc=0/);
  const raw = await sh(`timeout 10 bash -c 'exec 3<>/dev/tcp/${hostIp}/${httpPort}; printf "HELLO\\r\\n\\r\\n" >&3; cat <&3'; echo rc=$?`);
  assert.doesNotMatch(raw.stdout, /HTTP\/1/, "non-HTTP bytes are never forwarded");
  const before = vm._native.netStats().dropped;
  const udp = await sh(`python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"x", ("${hostIp}", 9999))
try:
    s.recv(10); print("answered")
except OSError:
    print("no answer")'`);
  assert.equal(udp.stdout.trim(), "no answer");
  assert.ok(vm._native.netStats().dropped > before, "the datagram was dropped by the stack");
});

test("createHttpHooks: env placeholders, allowedHosts, secret manager", () => {
  const h = createHttpHooks({ secrets: { A: { hosts: ["x.com"], value: "v" } } });
  assert.match(h.env.A, /^GONDOLIN_SECRET_[0-9a-f]{48}\.A$/);
  assert.deepEqual(h.allowedHosts, ["*"]);
  assert.deepEqual(createHttpHooks({ allowedHosts: [] }).allowedHosts, []);
  h.secretManager.updateSecret("A", { value: "w" });
  assert.throws(() => h.secretManager.updateSecret("B", { value: "w" }), /unknown secret: B/);
  h.secretManager.deleteSecret("A");
  assert.equal(h.secretManager.listSecrets()[0].deleted, true);
  assert.throws(() => h.secretManager.updateSecret("A", { value: "x" }), /secret deleted: A/);
  const e = new HttpRequestBlockedError();
  assert.equal(e.status, 403);
  assert.equal(e.name, "HttpRequestBlockedError");
  assert.throws(() => createHttpHooks({ onRequest: "nope" }), /onRequest must be a function/);
  assert.throws(() => new VM({ dns: { mode: "bogus" } }), /dns\.mode/);
});

test("JS hooks: short-circuit, in-place edits, rewrites, response rewrite, deny, throw", { skip }, async () => {
  const base = `http://${hostIp}:${httpPort}`;
  const get = async (p, extra = "") => {
    const r = await sh(`curl -s -m 20 -o /tmp/hb -w '%{http_code}' ${extra} ${base}${p}; echo; cat /tmp/hb`);
    const [code, ...rest] = r.stdout.split("\n");
    return { code: Number(code), body: rest.join("\n") };
  };
  const before = seen.length;
  let r = await get("/hook/short");
  assert.deepEqual(r, { code: 202, body: "answered by the hook\n" });
  assert.equal(seen.length, before, "a short-circuited request never reaches the server");
  r = await get("/hook/rewrite");
  assert.equal(JSON.parse(r.body).headers["x-hooked"], "yes");
  r = await get("/hook/post", "-d hello");
  assert.equal(JSON.parse(r.body).url, "/echo-post");
  assert.equal(JSON.parse(r.body).body, "HELLO");
  r = await get("/hook/resp");
  assert.equal(r.code, 200);
  assert.match(r.body, /"URL":"\/HOOK\/RESP"/, "onResponse rewrote the body");
  r = await get("/hook/deny");
  assert.equal(r.code, 403);
  r = await get("/hook/blocked");
  assert.equal(r.code, 451);
  r = await get("/hook/throw");
  assert.equal(r.code, 502);
  assert.match(r.body, /hook exploded/);
  r = await get("/echo");
  assert.equal(r.code, 200, "a throwing hook fails only its own request");
  assert.ok(hookSeen.includes("GET /hook/rewrite"));
});

const WS_CLIENT = (host, port) => `
import socket, base64, os
s = socket.create_connection(("${host}", ${port}), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /ws HTTP/1.1\\r\\nHost: ${host}:${port}\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
           "Sec-WebSocket-Key: " + key + "\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n").encode())
resp = b""
while b"\\r\\n\\r\\n" not in resp:
    chunk = s.recv(4096)
    if not chunk: break
    resp += chunk
head, _, rest = resp.partition(b"\\r\\n\\r\\n")
print(head.split(b"\\r\\n")[0].decode())
if b" 101 " in head:
    msg = b"hello ws"; mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
    data = rest
    while len(data) < 2 + 5 + len(msg):
        data += s.recv(4096)
    print(data[2:].decode())
`;

test("WebSocket upgrades are tunneled; oversize bodies get 413", { skip }, async () => {
  fs.writeFileSync(path.join(dir, "ws.py"), WS_CLIENT(hostIp, httpPort));
  await vm.fs.writeFile("/tmp/ws.py", fs.readFileSync(path.join(dir, "ws.py")));
  const ws = await sh("python3 /tmp/ws.py");
  assert.equal(ws.stdout, "HTTP/1.1 101 Switching Protocols\necho:hello ws\n", ws.stderr);
  const big = await sh(`head -c 2M /dev/zero > /tmp/big && curl -s -m 30 -o /dev/null -w '%{http_code}' --data-binary @/tmp/big http://${hostIp}:${httpPort}/upload`);
  assert.equal(big.stdout, "413");
  const py = await sh(`python3 -c 'import requests; print(requests.get("https://${hostIp}:${httpsPort}/requests").json()["url"])'`);
  assert.equal(py.stdout.trim(), "/requests", py.stderr);
});

test("trusted DNS answers from the host's resolvers; WebSockets can be turned off; custom fetch", { skip }, async () => {
  const { lookup } = await import("node:dns/promises");
  let expected;
  try {
    expected = (await lookup("deb.debian.org", { family: 4 })).address;
  } catch {
    return; // no DNS on this host: nothing to compare against
  }
  const fetched = [];
  const other = await VM.create({
    dns: { mode: "trusted" },
    allowWebSockets: false,
    httpHooks: createHttpHooks({ allowedInternalHosts: [hostIp] }).httpHooks,
    // A custom upstream client: sees each request, answers from the real server.
    fetch: async (req) => {
      fetched.push(req.url);
      const r = await fetch(req);
      return new Response(await r.text(), { status: r.status, headers: { "x-via": "custom-fetch" } });
    },
  });
  try {
    const f = await other.exec(`curl -s -i http://${hostIp}:${httpPort}/via-fetch`);
    assert.match(f.stdout, /x-via: custom-fetch/i);
    assert.match(f.stdout, /"url":"\/via-fetch"/);
    assert.deepEqual(fetched, [`http://${hostIp}:${httpPort}/via-fetch`]);
    const r = await other.exec("getent ahostsv4 deb.debian.org | head -1");
    assert.equal(r.stdout.split(/\s+/)[0], expected);
    await other.fs.writeFile("/tmp/ws.py", fs.readFileSync(path.join(dir, "ws.py")));
    const ws = await other.exec("python3 /tmp/ws.py");
    assert.match(ws.stdout, /^HTTP\/1.1 501 /);
  } finally {
    await other.close();
  }
});

test("CLI: --deny-all-egress, --allow-host and --host-secret", { skip }, async () => {
  const { execFile } = await import("node:child_process");
  const { cli } = await import("./helpers.mjs");
  const script = `curl -s -o /dev/null -w '%{http_code} ' -H 'Host: other.test' http://${hostIp}:${httpPort}/; curl -s -H "X-Token: $TOKEN" http://${hostIp}:${httpPort}/cli; echo; echo "guest sees $TOKEN"`;
  const out = await new Promise((resolve, reject) => {
    execFile(process.execPath, [cli, "exec", "--deny-all-egress", "--allow-host", hostIp, "--host-secret", `TOKEN@${hostIp}=cli-secret`, "--", "bash", "-c", script],
      { env: { ...process.env, GONDOLIN_ACCEL: "tcg" } }, (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
  });
  assert.match(out, /^403 /, "hosts outside --allow-host are denied");
  assert.ok(seen.some((r) => r.url === "/cli" && r.headers["x-token"] === "cli-secret"), "the server got the real value");
  assert.ok(!out.includes("cli-secret"), out);
  assert.match(out, /guest sees GONDOLIN_SECRET_[0-9a-f]{48}/);
});
