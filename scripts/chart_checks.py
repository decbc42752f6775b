#!/usr/bin/env python3
"""Checks of the Helm chart that helm and the Kubernetes schemas do not make
(scripts/check-chart runs them):

  values-table [--write]   chart/README.md's values table matches values.yaml:
                           every key documented with a `# --` comment is a
                           row, with its default, and no row is stale.
  custom-resources CRDS MANIFEST...
                           every custom resource in the manifests (a kind that
                           is not Kubernetes' own) is valid against the
                           openAPIV3Schema of its CRD in CRDS, and has one.
  builtin MANIFEST OUT     writes to OUT the documents of MANIFEST whose kinds
                           are Kubernetes' own, for kubernetes-validate (which
                           knows no custom resource).
  flags MANIFEST CONTAINER HELP [UNREAD_ENV,...]
                           every `--flag` the chart passes to CONTAINER is one
                           that its binary's `--help` (the file HELP) lists,
                           and so is every environment variable (`[env: X]`),
                           but RUST_LOG and the UNREAD_ENV names.
  policy MANIFEST          what the chart promises: ztunnel on the host
                           network with NET_ADMIN and NET_RAW only, never
                           privileged, on every node; RBAC with no wildcard,
                           no delete, no cluster-wide secrets; Secrets,
                           ConfigMaps and Leases read or written by name only;
                           the leader Lease; requests on every container.

Exit status 1 with one line per problem.
"""

import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "chart" / "values.yaml"
README = ROOT / "chart" / "README.md"
TABLE_START = "<!-- values-table:start -->"
TABLE_END = "<!-- values-table:end -->"


# ---- values table -----------------------------------------------------------


def documented_keys(text):
    """(path, description) of every key in values.yaml preceded by a `# --`
    comment block, in file order."""
    out, stack, comment = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if comment is not None:
                comment.append(stripped[1:].strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m or stripped.startswith("-"):
            comment = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if comment is not None:
            out.append((".".join(k for _, k in stack), " ".join(comment)))
        comment = None
    return out


def lookup(values, path):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def default_text(value):
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    else:
        text = str(value)
    return text.replace("|", "\\|")


def render_table():
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    rows = ["| key | default | what |", "|---|---|---|"]
    for path, desc in documented_keys(text):
        desc = desc.replace("|", "\\|")
        rows.append(f"| `{path}` | `{default_text(lookup(values, path))}` | {desc} |")
    return "\n".join(rows)


def values_table(write):
    readme = README.read_text()
    try:
        head, rest = readme.split(TABLE_START, 1)
        _, tail = rest.split(TABLE_END, 1)
    except ValueError:
        return [f"{README}: no {TABLE_START} ... {TABLE_END} markers"]
    problems = undocumented()
    want = f"{head}{TABLE_START}\n{render_table()}\n{TABLE_END}{tail}"
    if want == readme:
        return problems
    if write:
        README.write_text(want)
        print(f"wrote the values table of {README}")
        return problems
    return problems + [
        f"{README}: the values table differs from values.yaml; run "
        "`python3 scripts/chart_checks.py values-table --write`"
    ]


def undocumented():
    """Keys of values.yaml neither documented (`# --`) nor the parent of a
    documented key."""
    text = VALUES.read_text()
    documented = [p for p, _ in documented_keys(text)]
    out = []

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in documented:
                continue
            if isinstance(value, dict) and any(d.startswith(path + ".") for d in documented):
                walk(value, path + ".")
            else:
                out.append(f"{VALUES}: `{path}` has no `# --` description")

    walk(yaml.safe_load(text), "")
    return out


# ---- custom resources --------------------------------------------------------

# Groups whose kinds are Kubernetes' own (kubernetes-validate has their schemas).
BUILTIN_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io",
    "rbac.authorization.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io",
    "discovery.k8s.io", "admissionregistration.k8s.io", "scheduling.k8s.io",
    "storage.k8s.io", "certificates.k8s.io", "authentication.k8s.io",
    "authorization.k8s.io", "node.k8s.io", "events.k8s.io",
}


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def group_version(api_version):
    group, _, version = api_version.rpartition("/")
    return group, version


def crd_schemas(docs):
    out = {}
    for d in docs:
        if d.get("kind") != "CustomResourceDefinition":
            continue
        spec = d["spec"]
        for v in spec["versions"]:
            if v.get("served"):
                out[(spec["group"], v["name"], spec["names"]["kind"])] = (
                    v["schema"]["openAPIV3Schema"],
                    spec["scope"],
                )
    return out


def to_json_schema(s):
    """An openAPIV3Schema as plain JSON Schema: Kubernetes' x- keys dropped;
    `x-kubernetes-preserve-unknown-fields` means anything goes there."""
    if isinstance(s, list):
        return [to_json_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: to_json_schema(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
    # A structural schema prunes unknown fields; say so, so that a typo in a
    # rendered resource is an error here rather than silently dropped.
    if out.get("type") == "object" and "properties" in out and not s.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out.setdefault("additionalProperties", False)
    return out


def custom_resources(crd_file, manifests):
    schemas = crd_schemas(load_docs(crd_file))
    if not schemas:
        return [f"{crd_file}: no CustomResourceDefinition"]
    problems, checked = [], 0
    for path in manifests:
        for d in load_docs(path):
            group, version = group_version(d.get("apiVersion", ""))
            if group in BUILTIN_GROUPS:
                continue
            kind = d.get("kind")
            name = f"{path}: {kind} {d.get('metadata', {}).get('name')}"
            found = schemas.get((group, version, kind))
            if found is None:
                problems.append(f"{name}: no CRD serves {group}/{version} {kind}")
                continue
            schema, scope = found
            body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
            for err in jsonschema.Draft7Validator(to_json_schema(schema)).iter_errors(body):
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                problems.append(f"{name}: {where}: {err.message}")
            if scope == "Namespaced" and not d.get("metadata", {}).get("namespace"):
                problems.append(f"{name}: namespaced kind without a namespace")
            checked += 1
    print(f"custom resources: {checked} checked against the chart's CRDs")
    return problems


# ---- policy ------------------------------------------------------------------

ZTUNNEL_CAPS = {"NET_ADMIN", "NET_RAW"}
FORBIDDEN_VERBS = {"*", "delete", "deletecollection", "escalate", "bind", "impersonate"}


def pod_spec(d):
    return d["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def policy(manifest):
    docs = load_docs(manifest)
    p = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    # RBAC
    lease_rule = False
    for d in by_kind.get("ClusterRole", []) + by_kind.get("Role", []):
        for r in d.get("rules", []):
            what = f"{d['kind']} {d['metadata']['name']} {r.get('resources')}"
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in r.get(field, []):
                    p.append(f"{what}: wildcard in {field}")
            bad = FORBIDDEN_VERBS & set(r.get("verbs", []))
            if bad:
                p.append(f"{what}: verbs {sorted(bad)}")
            if d["kind"] == "ClusterRole" and "secrets" in r.get("resources", []):
                p.append(f"{what}: secrets cluster-wide")
            # Secrets, ConfigMaps and Leases: only `create` (which cannot be)
            # is not limited to the objects' names.
            unnamed = set(r.get("verbs", [])) - {"create"}
            if unnamed and {"configmaps", "secrets", "leases"} & set(r.get("resources", [])) and not r.get(
                "resourceNames"
            ):
                p.append(f"{what}: {sorted(unnamed)} not limited by resourceNames")
            if d["kind"] == "Role" and "leases" in r.get("resources", []) and r.get("resourceNames"):
                lease_rule = {"get", "update"} <= set(r.get("verbs", []))

    # ztunnel
    daemonsets = by_kind.get("DaemonSet", [])
    if len(daemonsets) != 1:
        p.append(f"expected one DaemonSet (ztunnel), found {len(daemonsets)}")
    for ds in daemonsets:
        spec = pod_spec(ds)
        name = f"DaemonSet {ds['metadata']['name']}"
        if not spec.get("hostNetwork"):
            p.append(f"{name}: not on the host network")
        if spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
            p.append(f"{name}: dnsPolicy is not ClusterFirstWithHostNet (cannot resolve the control plane)")
        # The control plane takes this account (in its root namespace, the
        # release's) for node proxies: control-plane kube_auth.
        if spec.get("serviceAccountName") != "ztunnel":
            p.append(f"{name}: service account {spec.get('serviceAccountName')!r}, not 'ztunnel'")
        if spec.get("automountServiceAccountToken") is not False:
            p.append(f"{name}: mounts an API token it does not need")
        tol = spec.get("tolerations") or []
        if not any(t.get("operator") == "Exists" and "key" not in t for t in tol):
            p.append(f"{name}: does not tolerate every taint")
        audiences = [
            s["serviceAccountToken"].get("audience")
            for v in spec.get("volumes", [])
            for s in v.get("projected", {}).get("sources", [])
            if "serviceAccountToken" in s
        ]
        if audiences != ["istio-ca"]:
            p.append(f"{name}: projected token audiences {audiences}, want ['istio-ca']")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("privileged"):
                p.append(f"{name}/{c['name']}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                p.append(f"{name}/{c['name']}: allowPrivilegeEscalation not false")
            caps = sc.get("capabilities", {})
            if caps.get("drop") != ["ALL"]:
                p.append(f"{name}/{c['name']}: capabilities not dropped (drop: [ALL])")
            if set(caps.get("add", [])) != ZTUNNEL_CAPS:
                p.append(f"{name}/{c['name']}: capabilities {caps.get('add')}, want {sorted(ZTUNNEL_CAPS)}")
            if c.get("ports"):
                p.append(f"{name}/{c['name']}: declares ports (host ports: a surge pod could not be scheduled)")
            env = env_of(c)
            node_ip = env.get("ZTUNNEL_NODE_IP", {}).get("valueFrom", {}).get("fieldRef", {})
            if node_ip.get("fieldPath") != "status.hostIP":
                p.append(f"{name}/{c['name']}: ZTUNNEL_NODE_IP not from status.hostIP")
            probe = c.get("readinessProbe", {}).get("httpGet", {})
            if (probe.get("port"), probe.get("path")) != (15021, "/healthz/ready"):
                p.append(f"{name}/{c['name']}: readiness is not 15021 /healthz/ready")
            if "preStop" not in c.get("lifecycle", {}):
                p.append(f"{name}/{c['name']}: no preStop")

    # control plane
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        p.append(f"expected one Deployment (control plane), found {len(deployments)}")
    for dep in deployments:
        name = f"Deployment {dep['metadata']['name']}"
        spec = pod_spec(dep)
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            p.append(f"{name}: may run as root")
        for c in spec["containers"]:
            if "--source=kubernetes" not in c.get("args", []):
                p.append(f"{name}/{c['name']}: not --source=kubernetes")
            sc = c.get("securityContext", {})
            if sc.get("capabilities", {}).get("add"):
                p.append(f"{name}/{c['name']}: adds capabilities")
        # Every replica runs the leader election, also alone.
        if not lease_rule:
            p.append(f"{name}: no Role rule to get and update its leader Lease")
    services = by_kind.get("Service", [])
    # The name the control plane's serving certificate carries (and ztunnel
    # dials): control-plane serve::DEFAULT_SERVICE_NAME.
    if not any(
        s["metadata"]["name"] == "control-plane" and 15012 in [pt["port"] for pt in s["spec"]["ports"]]
        for s in services
    ):
        p.append("no Service control-plane on 15012")

    # every workload
    accounts = set()
    for d in daemonsets + deployments:
        spec = pod_spec(d)
        sa = spec.get("serviceAccountName")
        if not sa or sa in accounts:
            p.append(f"{d['kind']} {d['metadata']['name']}: service account {sa!r} missing or shared")
        accounts.add(sa)
        for c in spec["containers"]:
            if not c.get("resources", {}).get("requests"):
                p.append(f"{d['kind']} {d['metadata']['name']}/{c['name']}: no resource requests")
    sa_names = {s["metadata"]["name"] for s in by_kind.get("ServiceAccount", [])}
    if not accounts <= sa_names:
        p.append(f"service accounts {sorted(accounts - sa_names)} are not rendered")
    return p


def flags(manifest, container, help_file, unread_env):
    text = Path(help_file).read_text()
    known_flags = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", text))
    known_env = set(re.findall(r"\[env: ([A-Z0-9_]+)=", text))
    problems, seen = [], 0
    for d in load_docs(manifest):
        if d["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in pod_spec(d)["containers"]:
            if c["name"] != container:
                continue
            seen += 1
            for arg in c.get("args", []):
                flag = arg.split("=", 1)[0]
                if flag.startswith("--") and flag not in known_flags:
                    problems.append(f"{manifest}: {container}: {flag} is not a flag of its binary")
            for e in c.get("env", []):
                name = e["name"]
                if name in known_env or name == "RUST_LOG":
                    continue
                if name in unread_env:
                    continue
                if name.startswith(("ZTUNNEL_", "CONTROL_PLANE_", "WAYPOINT_")):
                    problems.append(f"{manifest}: {container}: ${name} is not read by its binary")
    if not seen:
        problems.append(f"{manifest}: no container {container}")
    stale = sorted(unread_env & known_env)
    if stale:
        print(f"{container}: now reads {stale}: drop them from check-chart's list of unread variables")
    return problems


def main(argv):
    if len(argv) >= 2 and argv[1] == "values-table":
        problems = values_table("--write" in argv[2:])
    elif len(argv) >= 4 and argv[1] == "custom-resources":
        problems = custom_resources(argv[2], argv[3:])
    elif len(argv) == 4 and argv[1] == "builtin":
        docs = [d for d in load_docs(argv[2]) if group_version(d.get("apiVersion", ""))[0] in BUILTIN_GROUPS]
        with open(argv[3], "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
        problems = [] if docs else [f"{argv[2]}: no Kubernetes object"]
    elif len(argv) in (5, 6) and argv[1] == "flags":
        unread = set(argv[5].split(",")) if len(argv) == 6 else set()
        problems = flags(argv[2], argv[3], argv[4], unread)
    elif len(argv) == 3 and argv[1] == "policy":
        problems = policy(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for line in problems:
        print(f"chart check: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
