#!/usr/bin/env node
// Network benchmark, one VM, one run. Prints JSON.
//   httpMiBps / httpsMiBps: guest `curl` downloads 200 MiB from a host server
//                           (HTTPS goes through the MITM), curl's own average
//   guestLoopbackMiBps:     the same download from a server on the guest's lo
//   guestLoopbackTlsMiBps:  the same over TLS on the guest's lo (the guest
//                           encrypts and decrypts; under TCG the guest's own
//                           crypto, ~45 MB/s ChaCha20, bounds every HTTPS figure)
//   small*: 500 GET requests from one guest python process, per-request ms
//           (newConnection: a fresh TCP connection each; keepAlive: one)
//   hostRssMiB: this process's RSS, peak sampled during the downloads
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { VM, createHttpHooks } from "@gondolin/native";

const MIB = Number(process.env.NET_BENCH_MIB || 200);
const SMALL = 500;
const UPSTREAM = { httpMiBps: 12, smallP50Ms: 5.5 };
const round = (x, d = 2) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);

function hostIp() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) if (a.family === "IPv4" && !a.internal) return a.address;
  }
  throw new Error("no non-loopback IPv4 address on this host");
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-netbench-"));
const ip = hostIp();
const ssl = (...a) => execFileSync("openssl", a, { cwd: dir, stdio: "pipe" });
ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench-ca", "-keyout", "ca.key", "-out", "ca.crt",
  "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=keyCertSign");
ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${ip}`, "-keyout", "srv.key", "-out", "srv.csr");
fs.writeFileSync(path.join(dir, "ext.cnf"), `subjectAltName=IP:${ip}\n`);
ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-out", "srv.crt", "-extfile", "ext.cnf");
fs.writeFileSync(path.join(dir, "bundle.crt"), fs.readFileSync("/etc/ssl/certs/ca-certificates.crt", "utf8") + "\n" + fs.readFileSync(path.join(dir, "ca.crt"), "utf8"));
process.env.SSL_CERT_FILE = path.join(dir, "bundle.crt");

const chunk = Buffer.alloc(1 << 20, 0x62);
function handler(req, res) {
  if (req.url.startsWith("/big")) {
    res.writeHead(200, { "content-length": MIB * chunk.length });
    let left = MIB;
    const pump = () => {
      while (left > 0) {
        left--;
        if (!res.write(chunk)) return res.once("drain", pump);
      }
      res.end();
    };
    return pump();
  }
  res.writeHead(200, { "content-length": 2 });
  res.end("ok");
}
const listen = (s) => new Promise((r) => s.listen(0, "0.0.0.0", () => r(s.address().port)));
const plain = http.createServer(handler);
const tls = https.createServer({ key: fs.readFileSync(path.join(dir, "srv.key")), cert: fs.readFileSync(path.join(dir, "srv.crt")) }, handler);
const [httpPort, httpsPort] = [await listen(plain), await listen(tls)];

const { httpHooks } = createHttpHooks({ allowedHosts: [ip], allowedInternalHosts: [ip] });
const vm = await VM.create({ httpHooks });
await vm.start();
const sh = async (cmd) => {
  const r = await vm.exec(["/bin/bash", "-c", cmd]);
  if (r.exitCode !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  return r.stdout;
};

const errors = [];
let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 100);
const curlRate = async (url) => {
  // A stuck transfer fails the figure (null + error) instead of hanging the run.
  const r = await vm.exec(["/bin/bash", "-c", `curl -sS -m 240 -o /dev/null -w '%{speed_download}' ${url}`]);
  if (r.exitCode !== 0) {
    errors.push(`${url}: ${r.stderr.trim()}`);
    return null;
  }
  return Number(r.stdout) / 1048576;
};
const httpMiBps = await curlRate(`http://${ip}:${httpPort}/big`);
const httpsMiBps = await curlRate(`https://${ip}:${httpsPort}/big`);
clearInterval(sampler);
await sh(`mkdir -p /tmp/srv && head -c ${MIB}M /dev/zero > /tmp/srv/big && cd /tmp/srv && setsid -f python3 -m http.server 8000 --bind 127.0.0.1 </dev/null >/dev/null 2>&1 && for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.1; done`);
const guestLoopbackMiBps = await curlRate("http://127.0.0.1:8000/big");
// The same download over TLS inside the guest (python's ssl server, curl's
// default cipher choice): the guest does both ends of the crypto here.
await sh(`cd /tmp/srv && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout k.pem -out c.pem 2>/dev/null && cat > tls.py <<'PY'
import http.server, ssl
httpd = http.server.HTTPServer(("127.0.0.1", 8443), http.server.SimpleHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("c.pem", "k.pem")
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
PY
setsid -f python3 tls.py </dev/null >/dev/null 2>&1; for i in $(seq 50); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done`);
const guestLoopbackTlsMiBps = await curlRate("-k https://127.0.0.1:8443/big");
await sh("rm -f /tmp/srv/big");

const py = `
import http.client, time, json
def pct(xs, p): xs = sorted(xs); return xs[min(len(xs)-1, int(len(xs)*p))]
fresh = []
for i in range(${SMALL}):
    t = time.perf_counter(); c = http.client.HTTPConnection("${ip}", ${httpPort}); c.request("GET", "/s"); c.getresponse().read(); c.close(); fresh.append((time.perf_counter()-t)*1000)
keep = []; c = http.client.HTTPConnection("${ip}", ${httpPort})
for i in range(${SMALL}):
    t = time.perf_counter(); c.request("GET", "/s"); c.getresponse().read(); keep.append((time.perf_counter()-t)*1000)
print(json.dumps({"newConnection": {"p50": pct(fresh, .5), "p95": pct(fresh, .95)}, "keepAlive": {"p50": pct(keep, .5), "p95": pct(keep, .95)}}))
`;
const small = JSON.parse(await sh(`python3 -c '${py}'`));
await vm.close();
plain.close();
tls.close();
fs.rmSync(dir, { recursive: true, force: true });

const out = {
  downloadMiB: MIB,
  httpMiBps: round(httpMiBps),
  httpsMiBps: round(httpsMiBps),
  guestLoopbackMiBps: round(guestLoopbackMiBps),
  httpVsLoopback: round(httpMiBps / guestLoopbackMiBps),
  guestLoopbackTlsMiBps: round(guestLoopbackTlsMiBps),
  httpsVsLoopback: round(httpsMiBps / guestLoopbackMiBps),
  httpsVsLoopbackTls: round(httpsMiBps / guestLoopbackTlsMiBps),
  httpVsUpstream: round(httpMiBps / UPSTREAM.httpMiBps),
  smallRequests: SMALL,
  newConnectionP50Ms: round(small.newConnection.p50),
  newConnectionP95Ms: round(small.newConnection.p95),
  keepAliveP50Ms: round(small.keepAlive.p50),
  keepAliveP95Ms: round(small.keepAlive.p95),
  hostRssPeakMiB: round(peakRss / 1048576, 1),
  errors,
};
console.log(JSON.stringify(out, null, 2));
