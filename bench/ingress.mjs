#!/usr/bin/env node
// Ingress benchmark, one VM, one run. Prints JSON.
//   download.gatewayMiBps:  host fetch() of INGRESS_BENCH_MIB (default 200)
//                           MiB from a guest node server, through the gateway
//   download.loopbackMiBps: the same download by curl inside the guest from
//                           127.0.0.1 (baseline: the guest runs both ends)
//   download.ratio:         gateway / loopback (target >= 0.5)
//   small.*:                a 2-byte response, INGRESS_BENCH_N (default 300)
//                           sequential requests, p50/p95 in ms:
//     gateway:   host fetch (keep-alive to the gateway) → gateway → a fresh
//                guest connection per request → guest node server
//     dialRtt:   host → a fresh guest connection through a bare port
//                forwarder (no HTTP) → 1-byte echo back: the dial and one
//                round trip through the network stack
//     guestServer: the same request made inside the guest by node (fresh
//                connection each, like the gateway's) to 127.0.0.1: what
//                the guest server and guest TCP cost on their own
//     gatewayOverhead: gateway − dialRtt − guestServer (p50): hyper, the
//                routing and the proxying on the host
import net from "node:net";
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
const http = require("http"), net = require("net");
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
net.createServer((s) => { s.on("data", (d) => s.write(d)); s.on("error", () => {}); }).listen(8002, "127.0.0.1");
`;

// The guest-side latency probe: N sequential GETs, a fresh connection each.
const PROBE = String.raw`
const http = require("http");
const n = Number(process.argv[2]);
const agent = new http.Agent({ keepAlive: false });
const times = [];
(async () => {
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await new Promise((resolve, reject) => {
      http.get({ host: "127.0.0.1", port: 8001, path: "/small", agent }, (res) => {
        res.resume();
        res.on("end", resolve);
      }).on("error", reject);
    });
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  console.log(JSON.stringify(times));
})();
`;

const vm = await VM.create();
await vm.start();
await vm.fs.writeFile("/tmp/srv.js", SERVER);
await vm.fs.writeFile("/tmp/probe.js", PROBE);
const sh = async (cmd) => {
  const r = await vm.exec(["/bin/sh", "-c", cmd]);
  if (r.exitCode !== 0) throw new Error(`${cmd.slice(0, 80)}: ${r.stderr}`);
  return r.stdout;
};
await sh("(setsid node /tmp/srv.js >/tmp/srv.log 2>&1 &); for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:8001/ && exit 0; sleep 0.1; done; exit 1");

const access = await vm.enableIngress({ upstreamHeaderTimeoutMs: 10_000 });
vm.setIngressRoutes([{ prefix: "/", port: 8001 }]);

// Download through the gateway.
const download = async () => {
  const t0 = performance.now();
  const r = await fetch(`${access.url}/big?mib=${MIB}`);
  let n = 0;
  for await (const chunk of r.body) n += chunk.length;
  const s = (performance.now() - t0) / 1000;
  if (n !== MIB << 20) throw new Error(`short download: ${n}`);
  return MIB / s;
};
await fetch(`${access.url}/big?mib=4`).then((r) => r.arrayBuffer()); // warm up
const gatewayMiBps = await download();
// The same inside the guest.
const speed = Number(await sh(`curl -s -o /dev/null -w '%{speed_download}' 'http://127.0.0.1:8001/big?mib=${MIB}'`));
const loopbackMiBps = speed / (1 << 20);

// Small requests through the gateway.
const gw = [];
for (let i = 0; i < 20; i++) await (await fetch(`${access.url}/small`)).text();
for (let i = 0; i < N; i++) {
  const t0 = performance.now();
  await (await fetch(`${access.url}/small`)).text();
  gw.push(performance.now() - t0);
}

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

// The guest server alone, from inside the guest.
const guest = JSON.parse(await sh(`node /tmp/probe.js ${N}`)).slice(10);

const accel = vm.info.accel;
await access.close();
await vm.close();

const p50 = { gateway: pct(gw, 50), dialRtt: pct(dial, 50), guestServer: pct(guest, 50) };
console.log(
  JSON.stringify(
    {
      accel,
      download: {
        mib: MIB,
        gatewayMiBps: round(gatewayMiBps),
        loopbackMiBps: round(loopbackMiBps),
        ratio: round(gatewayMiBps / loopbackMiBps),
      },
      small: {
        n: N,
        gatewayP50Ms: round(p50.gateway),
        gatewayP95Ms: round(pct(gw, 95)),
        dialRttP50Ms: round(p50.dialRtt),
        dialRttP95Ms: round(pct(dial, 95)),
        guestServerP50Ms: round(p50.guestServer),
        guestServerP95Ms: round(pct(guest, 95)),
        gatewayOverheadP50Ms: round(p50.gateway - p50.dialRtt - p50.guestServer),
      },
    },
    null,
    2,
  ),
);
