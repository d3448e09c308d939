// examples/kubernetes: the manifests pass the offline validator, and the
// validator fails, naming the file and the field, on manifests broken in
// the ways that matter (a schema error, a misspelt field, a grace period
// shorter than the drain, too little memory for --max-vms × --memory, a
// privileged container, a Service that selects nothing, a kustomization
// naming a missing file, an image whose token path no Secret backs, no
// volume for the cache under a read-only root, a Dockerfile hadolint
// refuses, a file that is not YAML).
//
// The validator needs the PyPI package kubernetes-validate (`make deps`
// puts it in target/k8s-venv). Without it these tests skip and say so;
// GONDOLIN_TEST_K8S=1 or GONDOLIN_TEST_VM=1 (make test) make that a failure.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { root } from "./helpers.mjs";

const dir = path.join(root, "examples", "kubernetes");
const script = path.join(dir, "validate.py");

/** The python that has kubernetes_validate, or a reason to skip. */
function findPython() {
  const candidates = [process.env.GONDOLIN_K8S_PYTHON, path.join(root, "target", "k8s-venv", "bin", "python"), "python3"];
  for (const py of candidates.filter(Boolean)) {
    const r = spawnSync(py, ["-c", "import kubernetes_validate"], { stdio: "ignore" });
    if (r.status === 0) return { python: py, skip: false };
  }
  const reason = "kubernetes-validate is not installed (make deps puts it in target/k8s-venv)";
  if (process.env.GONDOLIN_TEST_K8S === "1" || process.env.GONDOLIN_TEST_VM === "1") {
    throw new Error(`the manifest tests cannot run: ${reason}`);
  }
  return { python: null, skip: reason };
}
const { python, skip } = findPython();

function validate(target) {
  const r = spawnSync(python, [script, target], { encoding: "utf8", timeout: 120000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** A copy of the manifests with `file` edited by `edit(text)`. */
function brokenCopy(file, edit) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gondolin-k8s-"));
  for (const f of fs.readdirSync(dir)) fs.copyFileSync(path.join(dir, f), path.join(tmp, f));
  const p = path.join(tmp, file);
  const before = fs.readFileSync(p, "utf8");
  const after = edit(before);
  assert.notEqual(after, before, `the edit of ${file} changed nothing`);
  fs.writeFileSync(p, after);
  return tmp;
}

test("the example manifests pass the schema and consistency checks", { skip }, () => {
  const r = validate(dir);
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /all manifests in .* are valid/);
  for (const f of ["daemonset.yaml", "service.yaml", "pdb.yaml", "namespace.yaml", "networkpolicy.yaml", "service-lb.yaml"]) {
    assert.match(r.out, new RegExp(`^ok +${f.replace(".", "\\.")}#0`, "m"), `${f} was checked`);
  }
  assert.doesNotMatch(r.out, /ERROR/);
});

const broken = [
  {
    name: "a field of the wrong type",
    file: "daemonset.yaml",
    edit: (s) => s.replace("containerPort: 8080", 'containerPort: "8080"'),
    want: /daemonset\.yaml#0: DaemonSet\/gondolin-ws-server: spec\.template\.spec\.containers\.0\.ports\.0\.containerPort: '8080' is not of type 'integer'/,
  },
  {
    name: "a misspelt field (strict schemas)",
    file: "daemonset.yaml",
    edit: (s) => s.replace("terminationGracePeriodSeconds: 330", "terminationGracePeriodSecond: 330"),
    want: /'terminationGracePeriodSecond' was unexpected/,
  },
  {
    name: "a termination grace period shorter than the drain",
    file: "daemonset.yaml",
    edit: (s) => s.replace("terminationGracePeriodSeconds: 330", "terminationGracePeriodSeconds: 120"),
    want: /terminationGracePeriodSeconds 120 must exceed preStop 5 s \+ --drain-grace-ms 300 s/,
  },
  {
    name: "less memory than --max-vms × --memory",
    file: "daemonset.yaml",
    edit: (s) => s.replaceAll("memory: 5632Mi", "memory: 4Gi"),
    want: /resources\.limits\.memory 4Gi < 5632Mi = guest RAM 4096Mi \(--max-vms 4 × --memory 1G, --max-memory 4G\)/,
  },
  {
    name: "a misspelt server flag",
    file: "daemonset.yaml",
    edit: (s) => s.replace('"--max-vms", "4"', '"--max-vm", "4"'),
    want: /unknown ws-server flag '--max-vm'/,
  },
  {
    name: "a privileged container",
    file: "daemonset.yaml",
    edit: (s) => s.replace("privileged: false", "privileged: true"),
    want: /securityContext\.privileged/,
  },
  {
    name: "a Service that selects no server pod",
    file: "service.yaml",
    edit: (s) => s.replace("  selector:\n    app.kubernetes.io/name: gondolin-ws-server", "  selector:\n    app.kubernetes.io/name: gondolin-server"),
    want: /service\.yaml#0: Service\/gondolin-ws: spec\.selector .* does not select the server's pods/,
  },
  {
    name: "a kustomization naming a missing file",
    file: "kustomization.yaml",
    edit: (s) => s.replace("  - pdb.yaml", "  - pdb.yaml\n  - hpa.yaml"),
    want: /kustomization\.yaml: resources: hpa\.yaml does not exist/,
  },
  {
    name: "an image whose --token-file no Secret backs",
    file: "Dockerfile",
    edit: (s) => s.replace('"--token-file", "/var/run/gondolin/token"', '"--token-file", "/etc/gondolin/token"'),
    want: /--token-file \/etc\/gondolin\/token: mount a Secret volume at \/etc\/gondolin/,
  },
  {
    name: "a read-only root filesystem without a volume for the cache",
    file: "daemonset.yaml",
    edit: (s) => s.replace("            - name: cache\n              mountPath: /var/lib/gondolin/cache\n", ""),
    want: /readOnlyRootFilesystem but \$XDG_CACHE_HOME \(\/var\/lib\/gondolin\/cache\) has no volume mounted/,
  },
  {
    name: "a Dockerfile hadolint refuses",
    file: "Dockerfile",
    edit: (s) => s.replace("apt-get install -y --no-install-recommends", "apt-get install -y"),
    want: /hadolint: .*DL3015/,
    needs: "hadolint",
  },
  {
    name: "a file that is not YAML",
    file: "pdb.yaml",
    edit: (s) => `${s}\n  - [unclosed\n`,
    want: /pdb\.yaml: not valid YAML/,
  },
];

/** Whether the validator can run `tool` (beside its python, or on PATH). */
function hasTool(tool) {
  if (!python) return false;
  const beside = path.join(path.dirname(python), tool);
  return fs.existsSync(beside) || spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0;
}

for (const b of broken) {
  const why = skip || (b.needs && !hasTool(b.needs) && `${b.needs} is not installed (make deps)`);
  test(`the validator fails on ${b.name}`, { skip: why }, () => {
    const tmp = brokenCopy(b.file, b.edit);
    try {
      const r = validate(tmp);
      assert.equal(r.status, 1, r.out);
      assert.match(r.out, b.want);
      assert.match(r.out, /\d+ problem\(s\) in /);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
}

test("without kubernetes-validate the script exits 2 and names the fix", { skip }, () => {
  // -S -I: no site-packages, no user site, so the import fails.
  const r = spawnSync(python, ["-S", "-I", script, dir], { encoding: "utf8" });
  if (r.status === 0) return; // a python whose stdlib path holds the package: nothing to show
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /is not installed for .*make deps/);
});
