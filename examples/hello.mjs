// Run a few commands in a fresh VM: node examples/hello.mjs
import { VM } from "@gondolin/native";

const vm = await VM.create({ env: { GREETING: "hi" } });
try {
  const r = await vm.exec("echo $GREETING from $(uname -sr); exit 3");
  console.log(`exit ${r.exitCode}: ${r.stdout.trim()}`);

  const [py, node] = await Promise.all([
    vm.exec(["python3", "-c", "print(6*7)"]),
    vm.exec(["node", "-e", "console.log(process.version)"]),
  ]);
  console.log(`python says ${py.stdout.trim()}, node is ${node.stdout.trim()}`);

  const ac = new AbortController();
  const long = vm.exec("sleep 1000", { signal: ac.signal });
  setTimeout(() => ac.abort(), 100);
  await long.catch((e) => console.log(`long command: ${e.message}`));
} finally {
  await vm.close();
}
