// Upstream parity of the egress API (issue 13): the callable httpHooks of
// createHttpHooks (backed by the native policy), composing them into one's
// own hooks, placeholder modes, onResponse written `(req, res)`, glob-only
// host patterns, unknown option keys, onRequestHead. One VM, one server on
// 127.0.0.1 reached by name ("localhost", an allowed internal host).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createRequire } from "node:module";
import {
  VM,
  createHttpHooks,
  HttpRequestBlockedError,
  makePlaceholderFunc,
  PLACEHOLDER_ALPHABET_HEX,
  PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC,
} from "@gondolin/native";
import { vmSkip } from "./helpers.mjs";

const { netOptions } = createRequire(import.meta.url)("../js/net.cjs");

const skip = vmSkip();
const SYNTH = "192.0.2.1"; // the guest's synthetic DNS answer: every flow goes through the bridge
const seen = [];
const headSeen = [];
const respSeen = [];
let server;
let port;
let vm;
let hooks;

before(async () => {
  if (skip) return;
  server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      seen.push({ url: req.url, headers: req.headers, body });
      res.writeHead(200, { "content-type": "application/json", "x-origin": "server" });
      res.end(JSON.stringify({ url: req.url, headers: req.headers, body }));
    });
  });
  port = await new Promise((r) => server.listen(0, "127.0.0.1", () => r(server.address().port)));
  hooks = createHttpHooks({
    allowedHosts: ["localhost"],
    allowedInternalHosts: ["localhost"],
    secrets: {
      TOKEN: { hosts: ["localhost"], value: "real-token" },
      SK: { hosts: ["localhost"], value: "real-sk", placeholder: makePlaceholderFunc({ prefix: "sk-test-" }) },
    },
    onRequestHead: (req) => {
      const p = new URL(req.url).pathname;
      headSeen.push({ path: p, method: req.method, body: req.body });
      if (p === "/head/short") return new Response("from the head hook\n", { status: 203 });
      req.headers.set("x-head", "seen");
      return undefined;
    },
  });
  // The seeds' spelling: `(req, res)` returning the second argument, which
  // is the Request the hook was given (upstream calls onResponse(response, request)).
  const onResponse = (req, res) => {
    respSeen.push(new URL(res.url).pathname);
    if (new URL(res.url).pathname === "/resp/rewrite") return new Response("rewritten\n", { status: 201 });
    return res;
  };
  vm = await VM.create({ httpHooks: { ...hooks.httpHooks, onResponse }, env: hooks.env });
  await vm.start();
});

after(async () => {
  if (vm) await vm.close();
  if (server) server.close();
});

/** curl from the guest to `host` through the bridge; { code, body }. */
async function curl(host, pathAndArgs) {
  const r = await vm.exec(["/bin/bash", "-c",
    `curl -s -m 30 -o /tmp/out -w '%{http_code}\\n' -H 'Host: ${host}:${port}' ${pathAndArgs}; cat /tmp/out`]);
  const [code, ...rest] = r.stdout.split("\n");
  return { code: Number(code), body: rest.join("\n") };
}

test("httpHooks.isIpAllowed: the host list, internal ranges, then the user's callback", async () => {
  const userSeen = [];
  const { httpHooks } = createHttpHooks({
    allowedHosts: ["api.example.com", "*.cdn.example"],
    allowedInternalHosts: ["intranet.test"],
    isIpAllowed: (info) => {
      userSeen.push(info.ip);
      return info.ip !== "203.0.113.9";
    },
  });
  const ask = (hostname, ip) => httpHooks.isIpAllowed({ hostname, ip, family: ip.includes(":") ? 6 : 4, port: 443, protocol: "https" });
  const pending = ask("api.example.com", "93.184.216.34");
  assert.ok(pending instanceof Promise, "always async");
  assert.equal(await pending, true);
  assert.equal(await ask("x.cdn.example", "93.184.216.34"), true);
  assert.equal(await ask("other.example", "93.184.216.34"), false, "not in allowedHosts");
  for (const ip of ["10.0.0.1", "127.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "fd00::1"]) {
    assert.equal(await ask("api.example.com", ip), false, `${ip} is internal`);
  }
  assert.equal(await ask("intranet.test", "10.1.2.3"), true, "allowedInternalHosts may resolve inside (and are allowed hosts)");
  assert.equal(await ask("api.example.com", "203.0.113.9"), false, "the user's callback is asked last");
  assert.deepEqual(userSeen, ["93.184.216.34", "93.184.216.34", "10.1.2.3", "203.0.113.9"], "only for addresses the built-in rules passed");
  const open = createHttpHooks({ blockInternalRanges: false }).httpHooks;
  assert.equal(await open.isIpAllowed({ hostname: "any.host", ip: "10.0.0.1", family: 4, port: 80, protocol: "http" }), true);
  assert.equal(await open.isRequestAllowed(new Request("http://any.host/")), true);
});

test("httpHooks.onRequest: user hook, then secrets (native), TypeError for a wrong return type", async () => {
  const calls = [];
  const { httpHooks, env } = createHttpHooks({
    secrets: { TOKEN: { hosts: ["api.example.com"], value: "tok-real" } },
    replaceSecretsInQuery: true,
    onRequest: (req) => {
      calls.push(req.url);
      const p = new URL(req.url).pathname;
      if (p === "/number") return 42;
      if (p === "/short") return new Response("short", { status: 202, headers: { "set-cookie": "a=1" } });
      if (p === "/rewrite") return new Request("https://api.example.com/rewritten", { headers: { "x-key": env.TOKEN } });
      return undefined;
    },
  });
  const req = new Request("https://api.example.com/x", { headers: { authorization: `Bearer ${env.TOKEN}` } });
  const p = httpHooks.onRequest(req);
  assert.ok(p instanceof Promise, "always async");
  const out = await p;
  assert.equal(out, req, "the request itself comes back when the user hook returns nothing");
  assert.equal(out.headers.get("authorization"), "Bearer tok-real");
  const rewritten = await httpHooks.onRequest(new Request("https://api.example.com/rewrite"));
  assert.equal(rewritten.url, "https://api.example.com/rewritten");
  assert.equal(rewritten.headers.get("x-key"), "tok-real", "secrets are filled into what the user hook returned");
  const inQuery = await httpHooks.onRequest(new Request(`https://api.example.com/q?k=${env.TOKEN}`));
  assert.equal(new URL(inQuery.url).searchParams.get("k"), "tok-real");
  const short = await httpHooks.onRequest(new Request("https://api.example.com/short"));
  assert.ok(short instanceof Response);
  assert.equal(short.status, 202);
  assert.equal(await short.text(), "short");
  await assert.rejects(httpHooks.onRequest(new Request("https://api.example.com/number")), (e) =>
    e instanceof TypeError && /onRequest must return Request, Response, or undefined/.test(e.message));
  await assert.rejects(httpHooks.onRequest(new Request("https://evil.test/", { headers: { "x-key": env.TOKEN } })), (e) =>
    e instanceof HttpRequestBlockedError && e.status === 403 && e.message === "secret TOKEN not allowed for host: evil.test");
  await assert.rejects(httpHooks.onRequest(new Request("https://evil.test/", { headers: { "x-key": "tok-real" } })),
    /secret TOKEN not allowed for host: evil\.test/, "the real value is refused off its hosts too");
  assert.equal(calls.length, 7);
});

test("placeholders: shared (default) and unique modes, per-secret strings and generators", async () => {
  const shared = createHttpHooks({ secrets: { A: { hosts: ["a.test"], value: "va" }, AB: { hosts: ["ab.test"], value: "vab" } } });
  const m = /^(GONDOLIN_SECRET_[0-9a-f]{48})\.A$/.exec(shared.env.A);
  assert.ok(m, shared.env.A);
  assert.equal(shared.env.AB, `${m[1]}.AB`, "one marker per createHttpHooks call");
  assert.notEqual(createHttpHooks({ secrets: { A: { hosts: [], value: "v" } } }).env.A, shared.env.A);
  // `<marker>.A` is a prefix of `<marker>.AB`: the longer one is meant.
  const r = await shared.httpHooks.onRequest(new Request("https://ab.test/", { headers: { "x-k": shared.env.AB } }));
  assert.equal(r.headers.get("x-k"), "vab");

  const unique = createHttpHooks({ secretPlaceholderMode: "unique", secrets: { A: { hosts: [], value: "v" }, B: { hosts: [], value: "w" } } });
  assert.match(unique.env.A, /^GONDOLIN_SECRET_[0-9a-f]{48}$/);
  assert.match(unique.env.B, /^GONDOLIN_SECRET_[0-9a-f]{48}$/);
  assert.notEqual(unique.env.A.slice(0, 40), unique.env.B.slice(0, 40));

  const gen = makePlaceholderFunc({ prefix: "AKIA", alphabet: PLACEHOLDER_ALPHABET_UPPER_ALPHANUMERIC, length: 28 });
  const custom = createHttpHooks({
    secrets: {
      FIXED: { hosts: ["api.test"], value: "fixed-real", placeholder: "my-fixed-placeholder-0001" },
      AWS: { hosts: ["api.test"], value: "aws-real", placeholder: gen },
      HEX: { hosts: ["api.test"], value: "hex-real", placeholder: makePlaceholderFunc({ alphabet: PLACEHOLDER_ALPHABET_HEX, length: 40 }) },
    },
  });
  assert.equal(custom.env.FIXED, "my-fixed-placeholder-0001");
  assert.match(custom.env.AWS, /^AKIA[A-Z0-9]{28}$/);
  assert.match(custom.env.HEX, /^[0-9a-f]{40}$/);
  assert.equal(custom.secretManager.listSecrets().find((s) => s.name === "AWS").placeholder, custom.env.AWS);
  const filled = await custom.httpHooks.onRequest(new Request("https://api.test/", {
    headers: { a: custom.env.FIXED, b: `x ${custom.env.AWS}`, c: custom.env.HEX },
  }));
  assert.deepEqual([filled.headers.get("a"), filled.headers.get("b"), filled.headers.get("c")], ["fixed-real", "x aws-real", "hex-real"]);
  await assert.rejects(custom.httpHooks.onRequest(new Request("https://elsewhere.test/", { headers: { a: custom.env.AWS } })),
    /secret AWS not allowed for host: elsewhere\.test/, "a custom placeholder headed elsewhere is refused");

  const bad = (secrets, re) => assert.throws(() => createHttpHooks({ secrets }), (e) => e.code === "invalid_option" && re.test(e.message));
  bad({ A: { hosts: [], value: "v", placeholder: "short" } }, /secrets\.A\.placeholder must be 16 to 512 characters/);
  bad({ A: { hosts: [], value: "v", placeholder: "has spaces in it, sadly" } }, /visible ASCII/);
  bad({ A: { hosts: [], value: "v", placeholder: () => 7 } }, /must be a string or a function returning one/);
  bad({ A: { hosts: [], value: "v", placeholder: "same-placeholder-xyz" }, B: { hosts: [], value: "w", placeholder: "same-placeholder-xyz" } }, /same placeholder/);
  assert.throws(() => createHttpHooks({ secretPlaceholderMode: "random" }), (e) => e.code === "invalid_option" && /"shared" or "unique"/.test(e.message));
  assert.throws(() => makePlaceholderFunc({ alphabet: PLACEHOLDER_ALPHABET_HEX, length: 16 }), /64 bits; at least 128/);
});

test("host patterns are globs: regex-looking ones are refused at createHttpHooks", () => {
  for (const [opts, where] of [
    [{ allowedHosts: [".*"] }, "allowedHosts"],
    [{ allowedHosts: ["^api\\.example\\.com$"] }, "allowedHosts"],
    [{ allowedInternalHosts: ["(a|b).test"] }, "allowedInternalHosts"],
    [{ secrets: { A: { hosts: [".*\\.example\\.com"], value: "v" } } }, "secrets.A.hosts"],
  ]) {
    assert.throws(() => createHttpHooks(opts), (e) =>
      e.code === "invalid_option" && e.message.startsWith(`${where}:`) && e.message.includes("patterns are globs; use '*'"), JSON.stringify(opts));
  }
  const ok = createHttpHooks({ allowedHosts: ["*", "*.example.com", "api.*.net"] });
  assert.deepEqual(ok.allowedHosts, ["*", "*.example.com", "api.*.net"]);
  const h = createHttpHooks({ secrets: { A: { hosts: ["a.test"], value: "v" } } });
  assert.throws(() => h.secretManager.updateSecret("A", { hosts: [".*"] }), /patterns are globs/);
});

test("unknown createHttpHooks keys name the nearest valid one", () => {
  assert.throws(() => createHttpHooks({ alowedHosts: ["a.test"] }), (e) =>
    e.code === "invalid_option" && e.message === "unknown option createHttpHooks.alowedHosts; did you mean createHttpHooks.allowedHosts?");
  assert.throws(() => createHttpHooks({ secretPlaceholderMod: "unique" }), /did you mean createHttpHooks\.secretPlaceholderMode\?/);
  assert.throws(() => createHttpHooks({ secrets: { A: { hosts: [], value: "v", hots: [] } } }), (e) =>
    e.code === "invalid_option" && /unknown option secrets\.A\.hots; did you mean secrets\.A\.hosts\?/.test(e.message));
});

test("VM options: the whole createHttpHooks() result, unknown hook names and an unset secret value are refused", () => {
  // The seeds' `VM.create({ httpHooks: createHttpHooks({...}) })` would otherwise run with no policy at all.
  const whole = createHttpHooks({ allowedHosts: ["a.test"] });
  assert.throws(() => new VM({ httpHooks: whole }), (e) =>
    e.code === "invalid_option" && /whole createHttpHooks\(\) result; pass its parts: const \{ httpHooks, env \}/.test(e.message));
  assert.throws(() => new VM({ httpHooks: { onRequst() {} } }), (e) =>
    e.code === "invalid_option" && e.message === "unknown option httpHooks.onRequst; did you mean httpHooks.onRequest?");
  // `value: process.env.GITHUB_TOKEN` with the variable unset.
  assert.throws(() => createHttpHooks({ secrets: { GITHUB_TOKEN: { hosts: ["api.github.com"], value: undefined } } }), (e) =>
    e.code === "invalid_option" && /secrets\.GITHUB_TOKEN\.value is undefined \(an unset environment variable\?\)/.test(e.message));
});

test("the VM runs createHttpHooks' rules natively, handed the object or a spread copy", () => {
  const h = createHttpHooks({ allowedHosts: ["a.test"], secrets: { A: { hosts: ["a.test"], value: "v" } } });
  const direct = netOptions({ httpHooks: h.httpHooks });
  assert.deepEqual(direct.hookNames, [], "no JS call per request");
  assert.equal(direct.dispatch, null);
  assert.deepEqual(direct.net.allowedHosts, ["a.test"]);
  assert.ok(direct.secrets, "secrets are filled in natively");
  const onResponse = () => undefined;
  const spread = netOptions({ httpHooks: { ...h.httpHooks, onResponse } });
  assert.deepEqual(spread.hookNames, ["onResponse"], "only the member the user added goes to JS");
  assert.equal(spread.secrets, direct.secrets);
  assert.deepEqual(spread.net.allowedHosts, ["a.test"]);
  // A member the user replaced (wrapping ours) is called like any hook.
  const wrapped = netOptions({ httpHooks: { ...h.httpHooks, onRequest: (r) => h.httpHooks.onRequest(r) } });
  assert.deepEqual(wrapped.hookNames, ["onRequest"]);
});

test("VM: a spread copy plus onResponse `(req, res) => res` keeps the response; secrets and onRequestHead work", { skip }, async () => {
  // Placeholders (shared and generated) become real values on the host.
  let r = await curl("localhost", `-H "Authorization: Bearer $TOKEN" -H "X-Sk: $SK" http://${SYNTH}:${port}/secret`);
  assert.equal(r.code, 200, r.body);
  assert.equal(seen.at(-1).headers.authorization, "Bearer real-token");
  assert.equal(seen.at(-1).headers["x-sk"], "real-sk");
  assert.equal(seen.at(-1).headers["x-head"], "seen", "onRequestHead's in-place edit went upstream");
  const echoed = JSON.parse(r.body);
  assert.equal(echoed.headers.authorization, `Bearer ${hooks.env.TOKEN}`, "the echo comes back scrubbed");
  assert.match(hooks.env.TOKEN, /^GONDOLIN_SECRET_[0-9a-f]{48}\.TOKEN$/);
  assert.match(hooks.env.SK, /^sk-test-[A-Za-z0-9]{32}$/);
  assert.ok(respSeen.includes("/secret"), "the added onResponse ran");
  // onResponse returned the Request it was given: unchanged, not 502.
  assert.equal(echoed.url, "/secret");
  r = await curl("localhost", `http://${SYNTH}:${port}/resp/rewrite`);
  assert.deepEqual(r, { code: 201, body: "rewritten\n" });
  // onRequestHead: head only, before the body; its answer short-circuits.
  const before = seen.length;
  r = await curl("localhost", `http://${SYNTH}:${port}/head/short`);
  assert.deepEqual(r, { code: 203, body: "from the head hook\n" });
  assert.equal(seen.length, before, "nothing went upstream");
  r = await curl("localhost", `-d payload-bytes http://${SYNTH}:${port}/head/post`);
  assert.equal(r.code, 200);
  const post = headSeen.find((h) => h.path === "/head/post");
  assert.equal(post.method, "POST");
  assert.equal(post.body, null, "the head hook never sees a body");
  assert.equal(seen.at(-1).body, "payload-bytes", "the body went upstream untouched");
  // The native rules of the spread object still apply.
  r = await curl("other.test", `http://${SYNTH}:${port}/nope`);
  assert.equal(r.code, 403, "a host outside allowedHosts");
  r = await curl("127.0.0.1", `-H "X-Key: $TOKEN" http://${SYNTH}:${port}/nope`);
  assert.equal(r.code, 403, "an internal address not in allowedInternalHosts");
});
