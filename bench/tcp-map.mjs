#!/usr/bin/env node
// Mapped TCP benchmark (tcp.hosts), one VM, one run. Prints JSON.
//   mappedMiBps:   a guest python client sends TCP_BENCH_MIB (default 200)
//                  MiB to "echo.internal:9000", mapped to an echo server on
//                  the host's 127.0.0.1, and reads it all back (a sender
//                  thread, a reader, half-close at the end); MiB one way per
//                  second, measured in the guest
//   loopbackMiBps: the same client against a python echo server on the
//                  guest's own 127.0.0.1 (baseline; the guest runs both ends)
//   ratio:         mapped / loopback (target >= 0.5)
//   mappedGuestToHostMiBps / mappedHostToGuestMiBps: one direction at a time
//                  through the same mapping (a host sink, a host source), to
//                  show what the transport alone allows
//   hostRssPeakMiB: this process's RSS, peak sampled during the mapped run
import net from "node:net";
import { VM } from "@gondolin/native";

const MIB = Number(process.env.TCP_BENCH_MIB || 200);
const round = (x, d = 2) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);

const echo = net.createServer({ allowHalfOpen: true }, (s) => {
  s.on("error", () => {});
  s.pipe(s);
});
const sink = net.createServer((s) => {
  s.on("error", () => {});
  s.on("data", () => {});
  s.on("end", () => s.end());
});
const block = Buffer.alloc(1 << 20, 0x61);
const source = net.createServer((s) => {
  s.on("error", () => {});
  let left = MIB;
  const pump = () => {
    while (left > 0) {
      left--;
      if (!s.write(block)) return s.once("drain", pump);
    }
    s.end();
  };
  pump();
});
const listen = (srv) => new Promise((r) => srv.listen(0, "127.0.0.1", () => r(srv.address().port)));
const [port, sinkPort, sourcePort] = [await listen(echo), await listen(sink), await listen(source)];

const vm = await VM.create({
  tcp: {
    hosts: {
      "echo.internal:9000": `127.0.0.1:${port}`,
      "sink.internal:9000": `127.0.0.1:${sinkPort}`,
      "source.internal:9000": `127.0.0.1:${sourcePort}`,
    },
  },
});
await vm.start();
const sh = async (cmd) => {
  const r = await vm.exec(["/bin/bash", "-c", cmd]);
  if (r.exitCode !== 0) throw new Error(`${cmd.slice(0, 80)}: ${r.stderr}`);
  return r.stdout;
};

await sh(`mkdir -p /tmp/b && cat > /tmp/b/client.py <<'PY'
import json, socket, sys, threading, time
host, port, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=300)
chunk = b"x" * (1 << 20)
def send():
    for _ in range(mib):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
t0 = time.perf_counter()
th = threading.Thread(target=send)
th.start()
n = 0
buf = bytearray(1 << 20)
while True:
    k = s.recv_into(buf)
    if not k:
        break
    n += k
th.join()
print(json.dumps({"bytes": n, "seconds": time.perf_counter() - t0}))
PY
cat > /tmp/b/oneway.py <<'PY'
import socket, sys, time
mib = int(sys.argv[1])
s = socket.create_connection(("sink.internal", 9000), timeout=300)
chunk = b"x" * (1 << 20)
t = time.perf_counter()
for _ in range(mib):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
up = mib / (time.perf_counter() - t)
s = socket.create_connection(("source.internal", 9000), timeout=300)
buf = bytearray(1 << 20)
n = 0
t = time.perf_counter()
while True:
    k = s.recv_into(buf)
    if not k:
        break
    n += k
print(up, n / 1048576 / (time.perf_counter() - t))
PY
cat > /tmp/b/echo.py <<'PY'
import socket, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 9000))
l.listen()
def serve(c):
    buf = bytearray(1 << 20)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        c.sendall(memoryview(buf)[:k])
    c.shutdown(socket.SHUT_WR)
    c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
cd /tmp/b && setsid -f python3 echo.py </dev/null >/dev/null 2>&1
for i in $(seq 50); do python3 -c 'import socket; socket.create_connection(("127.0.0.1", 9000)).close()' 2>/dev/null && break; sleep 0.1; done`);

const errors = [];
const run = async (host) => {
  try {
    const r = JSON.parse(await sh(`python3 /tmp/b/client.py ${host} 9000 ${MIB}`));
    if (r.bytes !== MIB * 1048576) errors.push(`${host}: ${r.bytes} bytes came back, not ${MIB * 1048576}`);
    return MIB / r.seconds;
  } catch (e) {
    errors.push(`${host}: ${e.message}`);
    return null;
  }
};
let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 100);
const mappedMiBps = await run("echo.internal");
clearInterval(sampler);
const loopbackMiBps = await run("127.0.0.1");
let oneWay = [null, null];
try {
  oneWay = (await sh(`python3 /tmp/b/oneway.py ${MIB}`)).trim().split(" ").map(Number);
} catch (e) {
  errors.push(`one-way: ${e.message}`);
}
await vm.close();
for (const srv of [echo, sink, source]) srv.close();

console.log(
  JSON.stringify(
    {
      transferMiB: MIB,
      mappedMiBps: round(mappedMiBps),
      loopbackMiBps: round(loopbackMiBps),
      ratio: round(mappedMiBps / loopbackMiBps),
      target: 0.5,
      mappedGuestToHostMiBps: round(oneWay[0]),
      mappedHostToGuestMiBps: round(oneWay[1]),
      hostRssPeakMiB: round(peakRss / 1048576, 1),
      errors,
    },
    null,
    2,
  ),
);
