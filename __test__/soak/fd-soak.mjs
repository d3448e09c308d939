// fd soak: 50 create → exec → close cycles, one at a time, QEMU killed with
// SIGKILL mid-exec in every third cycle and during boot in every seventh.
// Fails if the process holds more fds or threads afterwards than before
// (each VM used to leave its control socket open). Prints a JSON summary.
//
//   node __test__/soak/fd-soak.mjs [--cycles 50]
import { runSoak } from "./boot-soak.mjs";

const i = process.argv.indexOf("--cycles");
const cycles = i > 0 ? Number(process.argv[i + 1]) : 50;
const summary = await runSoak({
  cycles,
  concurrency: 1,
  plan: (n) => (n % 3 === 2 ? "exec" : n % 7 === 6 ? "boot" : null),
  log: (m) => process.stderr.write(`[fd-soak] ${m}\n`),
});
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
process.exit(summary.ok ? 0 : 1);
