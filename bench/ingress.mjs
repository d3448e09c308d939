#!/usr/bin/env node
// Ingress benchmark, one VM, one run. Prints JSON.
//   download.gatewayMiBps:  host fetch() of INGRESS_BENCH_MIB (default 200)
//                           MiB from a guest node server, through the gateway
//   download.loopbackMiBps: the same download by curl inside the guest from
//                           127.0.0.1 (baseline: the guest runs both ends)
//   download.ratio:         gateway / loopback (target >= 0.5)
//   small.*: INGRESS_BENCH_N (default 300) sequential requests, ms:
//     gateway:     host fetch (keep-alive to the gateway) → gateway → a fresh
//                  guest connection → a minimal python HTTP responder (accept,
//                  read the head, answer 2 bytes, close)
//     gatewayNode: the same to a node http server in the guest (what a dev
//                  server costs on top under TCG)
//     dialRtt:     host → a fresh guest connection through a bare port
//                  forwarder (no HTTP) → a python 1-byte echo: the dial plus
//                  one round trip through the network stack
//     gatewayOverheadP50Ms: gateway − dialRtt (p50): hyper on both sides,
//                  routing and proxying on the host, plus the HTTP work of
//                  the responder
import net from "node:net";
import { execFile, execFileSync } from "node:child_process";
import { VM } from "@gondolin/native";
import { native } from "../js/native.cjs";

const MIB = Number(process.env.INGRESS_BENCH_MIB || 200);
const N = Number(process.env.INGRESS_BENCH_N || 300);
const round = (x, d = 2) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const SERVER = String.raw`
const http = require("http");
const block = Buffer.alloc(1 << 20, 0x61);
http.createServer((req, res) => {
  if (req.url.startsWith("/big")) {
    const mib = Number(new URL(req.url, "http://x").searchParams.get("mib"));
    res.writeHead(200, { "content-length": String(mib << 20) });
    let left = mib;
    const pump = () => {
      while (left > 0) {
        left--;
        if (!res.write(block)) return res.once("drain", pump);
      }
      res.end();
    };
    return pump();
  }
  res.end("ok");
}).listen(8001, "127.0.0.1");
`;

// Minimal guest responders (python, one connection at a time): an HTTP
// answer and a byte echo.
const FAST = String.raw`
import socket, sys
port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(128)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    d = c.recv(65536)
    if mode == "http":
        while b"\r\n\r\n" not in d:
            m = c.recv(65536)
            if not m:
                break
            d += m
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    else:
        c.sendall(d)
    c.close()
`;

const vm = await VM.create();
await vm.start();
await vm.fs.writeFile("/tmp/srv.js", SERVER);
await vm.fs.writeFile("/tmp/fast.py", FAST);
const sh = async (cmd) => {
  const r = await vm.exec(["/bin/sh", "-c", cmd]);
  if (r.exitCode !== 0) throw new Error(`${cmd.slice(0, 80)}: ${r.stderr}`);
  return r.stdout;
};
await sh(
  "(setsid node /tmp/srv.js >/tmp/srv.log 2>&1 &); (setsid python3 /tmp/fast.py 8003 http >/tmp/f.log 2>&1 &); " +
    "(setsid python3 /tmp/fast.py 8002 echo >/tmp/e.log 2>&1 &); " +
    "for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:8001/ && curl -s -o /dev/null http://127.0.0.1:8003/ && exit 0; sleep 0.1; done; cat /tmp/*.log >&2; exit 1",
);

const access = await vm.enableIngress({ upstreamHeaderTimeoutMs: 10_000 });
vm.setIngressRoutes([
  { prefix: "/", port: 8001 },
  { prefix: "/fast", port: 8003 },
]);

// Download through the gateway, by the host's curl when there is one (as
// the guest baseline uses curl; fetch's stream machinery costs host CPU
// that TCG shares), else by fetch().
const hostCurl = (() => {
  try {
    execFileSync("sh", ["-c", "command -v curl"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();
const download = async () => {
  const url = `${access.url}/big?mib=${MIB}`;
  if (hostCurl) {
    const out = await new Promise((resolve, reject) =>
      execFile("curl", ["-sS", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url], (err, stdout) =>
        err ? reject(err) : resolve(stdout),
      ),
    );
    const [size, speed] = out.trim().split(" ").map(Number);
    if (size !== MIB * (1 << 20)) throw new Error(`short download: ${size}`);
    return speed / (1 << 20);
  }
  const t0 = performance.now();
  const r = await fetch(url);
  let n = 0;
  for await (const chunk of r.body) n += chunk.length;
  if (n !== MIB << 20) throw new Error(`short download: ${n}`);
  return MIB / ((performance.now() - t0) / 1000);
};
await fetch(`${access.url}/big?mib=4`).then((r) => r.arrayBuffer()); // warm up
const gatewayMiBps = await download();
// The same inside the guest.
const speed = Number(await sh(`curl -s -o /dev/null -w '%{speed_download}' 'http://127.0.0.1:8001/big?mib=${MIB}'`));
const loopbackMiBps = speed / (1 << 20);

// Small requests through the gateway.
const timed = async (url) => {
  const out = [];
  for (let i = 0; i < 20; i++) await (await fetch(url)).text();
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    await (await fetch(url)).text();
    out.push(performance.now() - t0);
  }
  return out;
};
const gw = await timed(`${access.url}/fast`);
const gwNode = await timed(`${access.url}/small`);

// Dial + one round trip, through a bare forwarder (no HTTP).
const fwd = await native.startPortForward(vm._native, "127.0.0.1", 0, 8002);
const dial = [];
for (let i = 0; i < N; i++) {
  const t0 = performance.now();
  await new Promise((resolve, reject) => {
    const s = net.connect(fwd.port(), "127.0.0.1", () => s.write("x"));
    s.once("data", () => {
      s.destroy();
      resolve();
    });
    s.on("error", reject);
  });
  dial.push(performance.now() - t0);
}
fwd.close();


const accel = vm.info.accel;
await access.close();
await vm.close();

const p50 = { gateway: pct(gw, 50), dialRtt: pct(dial, 50) };
console.log(
  JSON.stringify(
    {
      accel,
      download: {
        mib: MIB,
        hostClient: hostCurl ? "curl" : "fetch",
        gatewayMiBps: round(gatewayMiBps),
        loopbackMiBps: round(loopbackMiBps),
        ratio: round(gatewayMiBps / loopbackMiBps),
      },
      small: {
        n: N,
        gatewayP50Ms: round(p50.gateway),
        gatewayP95Ms: round(pct(gw, 95)),
        gatewayNodeP50Ms: round(pct(gwNode, 50)),
        gatewayNodeP95Ms: round(pct(gwNode, 95)),
        dialRttP50Ms: round(p50.dialRtt),
        dialRttP95Ms: round(pct(dial, 95)),
        gatewayOverheadP50Ms: round(p50.gateway - p50.dialRtt),
      },
    },
    null,
    2,
  ),
);
