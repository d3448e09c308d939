// Escapes from the egress policy and the secrets, tried from a real guest
// against real servers on the host (issue 11, items 1-9). Two VMs: one with
// JS hooks (isRequestAllowed, isIpAllowed), one without any, so each check
// runs on both paths where the paths differ.
//
// The guest reaches host servers through the bridge: it connects to the
// synthetic address 192.0.2.1 and names the real host in `Host`; the host
// resolves "localhost" / "127.0.0.1" / "127.0.0.2" itself.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import os from "node:os";
import zlib from "node:zlib";
import { VM, createHttpHooks } from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const skip = vmSkip();
const REAL = "real-escape-value";
const SYNTH = "192.0.2.1";
let port;
let server;
const seen = []; // requests the server received: "METHOD url"
const seenHeaders = [];
const ipChecks = [];
let hooked; // { vm, env }
let plain;
let hostIp;

function firstHostIp() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  return null;
}

/** Echo (headers reflected in JSON, or many times across chunk boundaries), redirects, a gzip-only answer. */
function handler(req, res) {
  const url = new URL(req.url, "http://x");
  seen.push(`${req.method} ${req.url}`);
  seenHeaders.push(req.headers);
  if (url.pathname === "/redirect") {
    res.writeHead(Number(url.searchParams.get("code") || 302), { location: url.searchParams.get("to") });
    return res.end();
  }
  const key = req.headers["x-key"] || "";
  if (url.pathname === "/echo-many") {
    // The value 200 times, in writes of odd sizes so it straddles chunks.
    const text = Buffer.from(Array.from({ length: 200 }, (_, i) => `${"p".repeat(i % 37)}<${key}>`).join("\n"));
    res.writeHead(200, { "content-type": "text/plain", "x-echo": key });
    for (let i = 0; i < text.length; i += 997) res.write(text.subarray(i, i + 997));
    return res.end();
  }
  if (url.pathname === "/echo-gzip") {
    // Ignores Accept-Encoding.
    res.writeHead(200, { "content-encoding": "gzip" });
    return res.end(zlib.gzipSync(JSON.stringify(req.headers)));
  }
  // Read the whole body first: a body cut off by the host must fail the request.
  req.resume();
  req.on("end", () => {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers }));
  });
}

const RAW = `
import socket, sys
data = open(sys.argv[1], "rb").read()
s = socket.create_connection(("${SYNTH}", int(sys.argv[2])), timeout=20)
s.sendall(data)
out = b""
while True:
    try:
        c = s.recv(65536)
    except OSError:
        break
    if not c:
        break
    out += c
sys.stdout.write(out.decode("latin1"))
`;

before(async () => {
  if (skip) return;
  hostIp = firstHostIp();
  assert.ok(hostIp, "the host needs a non-loopback IPv4 address");
  server = http.createServer({ maxHeaderSize: 1 << 20 }, handler);
  port = await new Promise((r) => server.listen(0, "0.0.0.0", () => r(server.address().port)));
  const secrets = { API_KEY: { hosts: ["localhost"], value: REAL } };
  const withHooks = createHttpHooks({
    allowedInternalHosts: ["localhost", "127.0.0.1", "127.0.0.2"],
    secrets,
    replaceSecretsInQuery: true,
    isRequestAllowed: (req) => !new URL(req.url).pathname.startsWith("/hook-denied"),
    isIpAllowed: (info) => {
      ipChecks.push(info);
      return info.ip !== "127.0.0.2";
    },
  });
  const noHooks = createHttpHooks({ allowedInternalHosts: ["localhost", "127.0.0.1"], secrets, replaceSecretsInQuery: true });
  const opts = { maxHttpBodyBytes: 64 * 1024 };
  const [a, b] = await Promise.all([
    VM.create({ ...opts, httpHooks: withHooks.httpHooks, env: withHooks.env }),
    VM.create({ ...opts, httpHooks: noHooks.httpHooks, env: noHooks.env }),
  ]);
  hooked = { vm: a, env: withHooks.env, name: "hooks" };
  plain = { vm: b, env: noHooks.env, name: "nohooks" };
  await Promise.all([a.start(), b.start()]);
  await Promise.all([a, b].map((vm) => vm.fs.writeFile("/tmp/raw.py", RAW)));
});

after(async () => {
  await Promise.all([hooked, plain].filter(Boolean).map((v) => v.vm.close()));
  if (server) server.close();
});

const sh = async (v, cmd) => {
  const r = await v.vm.exec(["/bin/bash", "-c", cmd]);
  return r.stdout + r.stderr;
};

/** Send raw request bytes from the guest; the raw answer. */
async function raw(v, bytes) {
  await v.vm.fs.writeFile("/tmp/req.bin", Buffer.from(bytes, "latin1"));
  return sh(v, `python3 /tmp/raw.py /tmp/req.bin ${port}`);
}

/** curl through the bridge to `host` (a name the host resolves); "CODE\nBODY". */
function curl(v, host, pathAndArgs) {
  return sh(v, `curl -s -m 30 -o /tmp/out -w '%{http_code}\\n' -H 'Host: ${host}:${port}' ${pathAndArgs}; cat /tmp/out`);
}

const both = () => [hooked, plain];
const status = (resp) => resp.slice(9, 12);
/** Requests the server got for a path starting with `marker` (not ones merely naming it in a query). */
const hits = (marker) => seen.filter((s) => s.split(" ")[1].startsWith(marker)).length;

test("domain fronting through an absolute-form target is refused with 421", { skip }, async () => {
  for (const v of both()) {
    const r = await raw(v, `GET http://localhost:${port}/front-${v.name} HTTP/1.1\r\nHost: refused.example\r\nConnection: close\r\n\r\n`);
    assert.equal(status(r), "421", `${v.name}: ${r}`);
    const ok = await raw(v, `GET http://localhost:${port}/front-ok HTTP/1.1\r\nHost: localhost:${port}\r\nConnection: close\r\n\r\n`);
    assert.equal(status(ok), "200", `${v.name}: the same host in both places goes through: ${ok}`);
  }
  assert.equal(hits("/front-hooks") + hits("/front-nohooks"), 0, "nothing reached the server");
});

test("two Host headers (CRLF or bare LF) are refused with 400", { skip }, async () => {
  for (const v of both()) {
    for (const nl of ["\r\n", "\n"]) {
      const r = await raw(v, `GET /dup HTTP/1.1${nl}Host: localhost:${port}${nl}Host: refused.example${nl}Connection: close${nl}${nl}`);
      assert.equal(status(r), "400", `${v.name} ${JSON.stringify(nl)}: ${r}`);
    }
  }
  assert.equal(hits("/dup"), 0);
});

test("redirect hops go through isRequestAllowed and isIpAllowed; isIpAllowed sees the dialled address", { skip }, async () => {
  ipChecks.length = 0;
  let r = await curl(hooked, "localhost", `"http://${SYNTH}/redirect?to=/hook-denied/x"`);
  assert.match(r, /^403\n.*blocked by request policy/);
  assert.equal(hits("/hook-denied"), 0);
  r = await curl(hooked, "localhost", `"http://${SYNTH}/redirect?to=http://127.0.0.2:${port}/ip-denied"`);
  assert.match(r, /^403\n.*blocked by policy: 127\.0\.0\.2/);
  assert.equal(hits("/ip-denied"), 0);
  const asked = ipChecks.map((i) => `${i.hostname} ${i.ip} ${i.port}`);
  assert.ok(asked.includes(`localhost 127.0.0.1 ${port}`), JSON.stringify(asked));
  assert.ok(asked.includes(`127.0.0.2 127.0.0.2 ${port}`), JSON.stringify(asked));
  r = await curl(hooked, "localhost", `"http://${SYNTH}/redirect?to=/allowed-hop"`);
  assert.match(r, /^200\n/, "an admitted redirect is still followed");
});

test("IPv6 forms of internal IPv4 addresses are refused, directly and through a redirect", { skip }, async () => {
  const forms = [];
  for (const v4 of ["127.0.0.1", "169.254.169.254", "10.0.0.1", "192.168.0.1"]) {
    const [a, b, c, d] = v4.split(".").map(Number);
    const hi = ((a << 8) | b).toString(16);
    const lo = ((c << 8) | d).toString(16);
    forms.push(`::${hi}:${lo}`, `::ffff:0:${hi}:${lo}`, `64:ff9b::${hi}:${lo}`, `64:ff9b:1::${hi}:${lo}`, `2002:${hi}:${lo}::`);
  }
  const script = forms
    .map((f) => `curl -s -m 20 -o /dev/null -w '%{http_code} ' -H 'Host: [${f}]:${port}' http://${SYNTH}/v6-direct`)
    .join("; ");
  const direct = (await sh(plain, script)).trim().split(" ");
  assert.deepEqual(direct, forms.map(() => "403"), forms.join(" "));
  const viaRedirect = forms
    .map((f) => `curl -s -m 20 -o /dev/null -w '%{http_code} ' -H 'Host: localhost:${port}' 'http://${SYNTH}/redirect?to=http://[${f}]:${port}/v6-redirect'`)
    .join("; ");
  const redirected = (await sh(plain, viaRedirect)).trim().split(" ");
  assert.deepEqual(redirected, forms.map(() => "403"), forms.join(" "));
});

test("the host's own interface address is internal, directly and through a redirect", { skip }, async () => {
  let r = await sh(plain, `curl -s -m 20 -o /tmp/out -w '%{http_code}\\n' http://${hostIp}:${port}/self-direct; cat /tmp/out`);
  assert.match(r, new RegExp(`^403\\n.*blocked by policy: ${hostIp.replaceAll(".", "\\.")}`));
  r = await curl(plain, "localhost", `"http://${SYNTH}/redirect?to=http://${hostIp}:${port}/self-redirect"`);
  assert.match(r, /^403\n/);
  assert.equal(hits("/self-"), 0, "the host never connected to itself");
});

test("one request-head limit on every path (431); an oversize chunked body gets 413", { skip }, async () => {
  const big = "a".repeat(100 * 1024);
  for (const v of both()) {
    const r = await raw(v, `GET /head-${v.name} HTTP/1.1\r\nHost: localhost:${port}\r\nX-Big: ${big}\r\nConnection: close\r\n\r\n`);
    assert.equal(status(r), "431", `${v.name}: ${r.slice(0, 200)}`);
    const c = await sh(v, `head -c 300K /dev/zero > /tmp/big; curl -s -m 30 -o /dev/null -w '%{http_code}' -H 'Host: localhost:${port}' -H 'Transfer-Encoding: chunked' --data-binary @/tmp/big http://${SYNTH}/chunked`);
    assert.equal(c, "413", v.name);
  }
  assert.equal(hits("/head-"), 0, "no oversize head went upstream");
});

test("TRACE and TRACK get 405 and never reflect a secret", { skip }, async () => {
  for (const v of both()) {
    for (const m of ["TRACE", "TRACK"]) {
      const r = await curl(v, "localhost", `-X ${m} -H "X-Key: $API_KEY" http://${SYNTH}/trace`);
      assert.match(r, /^405\n/, `${v.name} ${m}: ${r}`);
      assert.ok(!r.includes(REAL), r);
    }
  }
  assert.equal(hits("/trace"), 0);
});

test("an open redirect on the secret's host cannot carry the real value elsewhere (302 and 307)", { skip }, async () => {
  for (const v of both()) {
    for (const code of [302, 307]) {
      const r = await curl(v, "localhost", `"http://${SYNTH}/redirect?code=${code}&to=http://127.0.0.1:${port}/stolen?k=$API_KEY"`);
      assert.match(r, /^403\n.*secret API_KEY not allowed for host: 127\.0\.0\.1/, `${v.name} ${code}: ${r}`);
      assert.ok(!r.includes(REAL), r);
    }
  }
  assert.equal(hits("/stolen"), 0, "the real value never reached the other host");
  assert.ok(seen.some((s) => s.includes(`/redirect?code=302&to=http://127.0.0.1:${port}/stolen?k=${REAL}`)), "the secret's own host did get it");
});

test("responses are scrubbed: echoed secrets come back as placeholders", { skip }, async () => {
  for (const v of both()) {
    const ph = v.env.API_KEY;
    let r = await curl(v, "localhost", `-H "Authorization: Bearer $API_KEY" -H "X-Key: $API_KEY" http://${SYNTH}/echo`);
    assert.match(r, /^200\n/);
    const echo = JSON.parse(r.slice(4));
    assert.equal(echo.headers.authorization, `Bearer ${ph}`);
    assert.equal(seenHeaders.at(-1).authorization, `Bearer ${REAL}`, "upstream got the real value");
    r = await sh(v, `curl -s -m 30 -D /tmp/h -H 'Host: localhost:${port}' -H "X-Key: $API_KEY" http://${SYNTH}/echo-many > /tmp/body; grep -c "<$API_KEY>" /tmp/body; grep -ci "x-echo: $API_KEY" /tmp/h; cat /tmp/h /tmp/body | grep -c ${REAL}`);
    assert.deepEqual(r.trim().split("\n"), ["200", "1", "0"], `${v.name}: every copy scrubbed, across chunks`);
    // A compressed answer to a request that carried the value cannot be searched: refused.
    r = await curl(v, "localhost", `--compressed -H "X-Key: $API_KEY" http://${SYNTH}/echo-gzip`);
    assert.match(r, /^502\n.*compressed response/, r);
    assert.equal(seenHeaders.at(-1)["accept-encoding"], "identity", "the host asked for an uncompressed answer");
    const leak = await sh(v, `grep -rs ${REAL} /tmp | wc -l`);
    assert.equal(leak.trim(), "0");
  }
});
