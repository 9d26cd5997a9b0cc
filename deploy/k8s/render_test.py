"""Renders every kustomization under deploy/k8s and checks what would otherwise
break only at deploy time.

Usage: render_test.py --kubectl=KUBECTL --k8s_dir=DIR --server=BINARY
                      --dockerfile=FILE --alerts=FILE

Every directory of DIR holding a kustomization.yaml is rendered with
`KUBECTL kustomize`. In every rendering:

- the server container runs deltaserve-server (the image's entrypoint, or a
  command naming it), and every flag it passes is one that
  `deltaserve-server --helpfull` lists, each at most once;
- --listen and --metrics_listen bind every interface, and their ports are
  the container ports named grpc and metrics, the only container ports;
- readiness and liveness probes (and the startup probe, if any) are gRPC
  health checks on the --listen port;
- every container requests and limits cpu and memory; --threads is set and
  at most the cpu limit;
- a volumeClaimTemplate is mounted, writable, exactly at --state_dir (an
  absolute path);
- the pod runs as non-root with a read-only root filesystem, no privilege
  escalation and all capabilities dropped;
- terminationGracePeriodSeconds >= preStop sleep + --drain_timeout + 10 s;
- the StatefulSet's selector matches its pod labels, its serviceName is a
  headless Service; every Service selects the pods and targets container
  ports that exist; the PodDisruptionBudget selects the pods; the PodMonitor
  selects the pods and scrapes the metrics port at /metrics;
- a HorizontalPodAutoscaler, where there is one, targets the StatefulSet by
  name, scales on deltaserve_ metrics, and the StatefulSet leaves replicas
  to it;
- --device=cuda comes with an nvidia.com/gpu limit, a GPU toleration and a
  cuda image; otherwise there is no GPU and no cuda image; overlays/cpu says
  --device=cpu and overlays/gpu --device=cuda.

Once, against the base rendering: the Dockerfile's ENTRYPOINT is
deltaserve-server, it EXPOSEs both ports, its USER is the pods' runAsUser, its
VOLUME is the state directory and its CMD passes known flags with the same
ports and directory; the volume alert in alerts.yml matches the claims the
StatefulSet makes.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import yaml

SERVER = "deltaserve-server"
GRACE_MARGIN_SECONDS = 10


class Checker:
    """Collects failed checks, each with the rendering it came from."""

    def __init__(self):
        self.failures = []

    def check(self, condition, where, message):
        if not condition:
            self.failures.append(f"{where}: {message}")
        return condition


def parse_helpfull(text):
    """Returns {flag name: default value as printed} from absl's --helpfull.

    Each flag is a block: "    --name (help text); default: VALUE;", where
    the help text and the default may continue on lines indented deeper.
    """
    blocks = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"    --(\w+) \(", line)
        if m:
            name = m.group(1)
            blocks[name] = line.strip()
        elif name and line.startswith("      "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    flags = {}
    for name, block in blocks.items():
        m = re.search(r"\); default: (.*?);$", block)
        flags[name] = m.group(1).strip('"') if m else None
    return flags


def parse_duration(text):
    """Seconds in an absl duration such as 30s, 1m30s, 500ms; None if not one."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
             "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * units[u] for n, u in parts)


def parse_quantity(value):
    """A Kubernetes cpu quantity ("4", "500m", 2) in cores."""
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def split_address(address):
    """(host, port) of HOST:PORT or [V6]:PORT; port None when malformed."""
    m = re.fullmatch(r"(\[[^\]]*\]|[^:]*):(\d+)", address or "")
    if not m:
        return None, None
    return m.group(1), int(m.group(2))


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def server_flags(container, known, where, c):
    """{flag: value} that the container passes to deltaserve-server."""
    command = container.get("command") or []
    args = list(container.get("args") or [])
    if command:
        c.check(os.path.basename(command[0]) == SERVER, where,
                f"command {command} does not run {SERVER}")
        args = list(command[1:]) + args
    flags = {}
    for arg in args:
        if not c.check(isinstance(arg, str) and arg.startswith("--"), where,
                       f"argument {arg!r} is not a --flag"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and name not in known and name.startswith("no") and (
            name[2:] in known):
            name, value = name[2:], "false"
        elif not eq:
            value = "true"
        c.check(name in known, where,
                f"--{name} is not a flag of {SERVER} (not in its --helpfull)")
        c.check(name not in flags, where, f"--{name} is passed twice")
        flags[name] = value
    return flags


def prestop_seconds(container, where, c):
    """Seconds the preStop hook waits (sleep N); 0 without one."""
    pre_stop = (container.get("lifecycle") or {}).get("preStop")
    if not pre_stop:
        return 0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = (pre_stop.get("exec") or {}).get("command") or []
    if len(command) >= 3 and command[1] == "-c":
        command = shlex.split(command[2])
    if len(command) == 2 and os.path.basename(command[0]) == "sleep":
        seconds = parse_duration(command[1]) or parse_duration(command[1] + "s")
        if seconds is not None:
            return seconds
    c.check(False, where, f"preStop {pre_stop} is not a sleep this test reads")
    return 0


def check_rendering(name, docs, known, c):
    """Checks one rendered kustomization; returns facts for the other checks."""
    where = name
    by_kind = {}
    for doc in docs:
        c.check(doc.get("apiVersion") and doc.get("kind") and
                (doc.get("metadata") or {}).get("name"), where,
                f"object without apiVersion, kind or name: {doc}")
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    seen = set()
    for doc in docs:
        key = (doc.get("kind"), doc["metadata"].get("name"))
        c.check(key not in seen, where, f"{key} appears twice")
        seen.add(key)

    sets = by_kind.get("StatefulSet", [])
    if not c.check(len(sets) == 1, where,
                   f"expected one StatefulSet, found {len(sets)}"):
        return None
    sts = sets[0]
    sts_name = sts["metadata"]["name"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    c.check(labels_match(spec["selector"].get("matchLabels"), pod_labels),
            where, "the StatefulSet's selector does not match its pod labels")
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    c.check(claims, where, "the StatefulSet has no volumeClaimTemplates")
    pod_volumes = {v["name"] for v in pod.get("volumes") or []}
    c.check(not claims & pod_volumes, where,
            f"pod volumes {claims & pod_volumes} shadow the claim templates")

    servers = [k for k in pod["containers"] if k["name"] == "server"]
    if not c.check(len(servers) == 1, where, "no container named server"):
        return None
    server = servers[0]
    flags = server_flags(server, known, where, c)

    def flag(name):
        return flags.get(name, known.get(name))

    listen_host, listen_port = split_address(flag("listen"))
    metrics_host, metrics_port = split_address(flags.get("metrics_listen"))
    c.check(listen_port, where, f"--listen={flag('listen')} has no port")
    c.check(metrics_port, where, "--metrics_listen=HOST:PORT is not passed")
    for flag_name, host in (("listen", listen_host),
                            ("metrics_listen", metrics_host)):
        c.check(host in ("0.0.0.0", "[::]", ""), where,
                f"--{flag_name} binds {host}, not every interface: probes and "
                "Services could not reach it")
    ports = {p.get("name"): p["containerPort"] for p in server.get("ports", [])}
    c.check(ports == {"grpc": listen_port, "metrics": metrics_port}, where,
            f"container ports {ports} are not grpc={listen_port} (--listen) and "
            f"metrics={metrics_port} (--metrics_listen)")

    # Probes: gRPC health on the serving port.
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        for container in pod["containers"]:
            probe = container.get(probe_name)
            if probe is None:
                c.check(probe_name == "startupProbe", where,
                        f"container {container['name']} has no {probe_name}")
                continue
            if container is server:
                c.check((probe.get("grpc") or {}).get("port") == listen_port, where,
                        f"{probe_name} {probe} is not a gRPC health check on port "
                        f"{listen_port} (--listen)")

    # Resources on every container, and threads within the cpu limit.
    for container in pod["containers"] + pod.get("initContainers", []):
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                c.check(resource in (resources.get(kind) or {}), where,
                        f"container {container['name']} has no {kind}.{resource}")
    cpu_limit = ((server.get("resources") or {}).get("limits") or {}).get("cpu")
    if c.check("threads" in flags, where,
               "--threads is not passed (the default is every core of the node)"):
        if cpu_limit is not None:
            c.check(int(flags["threads"]) <= parse_quantity(cpu_limit), where,
                    f"--threads={flags['threads']} exceeds the cpu limit {cpu_limit}")

    # The state directory is the claim's mount.
    state_dir = flag("state_dir")
    c.check(state_dir and state_dir.startswith("/"), where,
            f"--state_dir={state_dir} is not an absolute path")
    mounts = [m for m in server.get("volumeMounts", [])
              if m["mountPath"].rstrip("/") == (state_dir or "").rstrip("/")]
    c.check(len(mounts) == 1 and mounts[0]["name"] in claims and
            not mounts[0].get("readOnly") and not mounts[0].get("subPath"), where,
            f"--state_dir={state_dir} is not exactly the writable mount of a "
            f"volumeClaimTemplate ({sorted(claims)}); mounts: "
            f"{server.get('volumeMounts')}")

    # Security context.
    pod_security = pod.get("securityContext") or {}
    for container in pod["containers"]:
        security = container.get("securityContext") or {}
        c.check(security.get("runAsNonRoot", pod_security.get("runAsNonRoot")),
                where, f"container {container['name']} may run as root")
        c.check(security.get("readOnlyRootFilesystem") is True, where,
                f"container {container['name']}'s root filesystem is writable")
        c.check(security.get("allowPrivilegeEscalation") is False, where,
                f"container {container['name']} allows privilege escalation")
        c.check("ALL" in ((security.get("capabilities") or {}).get("drop") or []),
                where, f"container {container['name']} keeps capabilities")

    # Shutdown: preStop, then SIGTERM and the drain, within the grace period.
    drain = parse_duration(flag("drain_timeout") or "")
    c.check(drain is not None, where,
            f"--drain_timeout={flag('drain_timeout')} is not a duration")
    sleep = prestop_seconds(server, where, c)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if drain is not None:
        c.check(grace >= sleep + drain + GRACE_MARGIN_SECONDS, where,
                f"terminationGracePeriodSeconds {grace} < preStop {sleep:g} s + "
                f"--drain_timeout {drain:g} s + {GRACE_MARGIN_SECONDS} s: the "
                "kubelet would kill the server while it drains")

    # Services, disruption budget, monitoring.
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(spec.get("serviceName"))
    c.check(headless is not None and headless["spec"].get("clusterIP") == "None",
            where, f"serviceName {spec.get('serviceName')} is not a headless "
            "Service of this rendering")
    c.check(any(s["spec"].get("clusterIP") != "None" for s in services.values()),
            where, "no ClusterIP Service for gRPC")
    for service_name, service in services.items():
        c.check(labels_match(service["spec"].get("selector"), pod_labels), where,
                f"Service {service_name} does not select the server pods")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            c.check(target in ports or target in ports.values(), where,
                    f"Service {service_name} targets port {target}, which the "
                    f"server does not have ({ports})")
    budgets = by_kind.get("PodDisruptionBudget", [])
    c.check(len(budgets) == 1, where, "expected one PodDisruptionBudget")
    for budget in budgets:
        c.check(labels_match(budget["spec"]["selector"].get("matchLabels"),
                             pod_labels), where,
                "the PodDisruptionBudget does not select the server pods")
        c.check(budget["spec"].get("maxUnavailable") == 1, where,
                "the PodDisruptionBudget does not allow one server down at a time")
    monitors = by_kind.get("PodMonitor", [])
    c.check(len(monitors) == 1, where, "expected one PodMonitor")
    for monitor in monitors:
        c.check(labels_match(monitor["spec"]["selector"].get("matchLabels"),
                             pod_labels), where,
                "the PodMonitor does not select the server pods")
        endpoints = monitor["spec"].get("podMetricsEndpoints") or []
        c.check(endpoints, where, "the PodMonitor has no podMetricsEndpoints")
        for endpoint in endpoints:
            c.check(ports.get(endpoint.get("port")) == metrics_port and
                    metrics_port is not None, where,
                    f"the PodMonitor scrapes port {endpoint.get('port')!r}, not the "
                    f"metrics port ({metrics_port}, --metrics_listen)")
            c.check(endpoint.get("path", "/metrics") == "/metrics", where,
                    "the PodMonitor does not scrape /metrics")

    # Autoscaling.
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        c.check(target.get("kind") == "StatefulSet" and
                target.get("name") == sts_name and
                target.get("apiVersion") == "apps/v1", where,
                f"the HPA targets {target}, not StatefulSet {sts_name}")
        for metric in hpa["spec"].get("metrics", []):
            metric_name = ((metric.get("pods") or {}).get("metric") or {}).get("name")
            c.check(metric.get("type") == "Pods" and metric_name and
                    metric_name.startswith("deltaserve_"), where,
                    f"the HPA scales on {metric}, not a deltaserve_ Pods metric")
        c.check("replicas" not in spec, where,
                "the StatefulSet sets replicas although an HPA scales it")

    # CPU or GPU.
    device = flag("device")
    gpu_limit = ((server.get("resources") or {}).get("limits") or {}).get(
        "nvidia.com/gpu")
    image_tag = server["image"].rpartition(":")[2]
    tolerates_gpu = any(t.get("key") == "nvidia.com/gpu"
                        for t in pod.get("tolerations") or [])
    if device == "cuda":
        c.check(gpu_limit is not None and int(gpu_limit) >= 1, where,
                "--device=cuda without an nvidia.com/gpu limit")
        c.check(tolerates_gpu, where, "--device=cuda without a GPU toleration")
        c.check("cuda" in image_tag, where,
                f"--device=cuda with image {server['image']}, not a cuda build")
    else:
        c.check(device == "cpu", where, f"--device={device}")
        c.check(gpu_limit is None and not tolerates_gpu, where,
                "a CPU server asks for a GPU")
        c.check("cuda" not in image_tag, where,
                f"a CPU server runs image {server['image']}")
    expected_device = {"overlays/cpu": "cpu", "overlays/gpu": "cuda"}.get(name)
    if expected_device:
        c.check(flags.get("device") == expected_device, where,
                f"{name} does not pass --device={expected_device}")

    return {
        "sts_name": sts_name,
        "claims": claims,
        "listen_port": listen_port,
        "metrics_port": metrics_port,
        "state_dir": state_dir,
        "run_as_user": (server.get("securityContext") or {}).get(
            "runAsUser", pod_security.get("runAsUser")),
    }


def dockerfile_instructions(path):
    """[(INSTRUCTION, arguments)] of a Dockerfile, continuation lines joined."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def check_dockerfile(path, facts, known, c):
    where = os.path.basename(path)
    instructions = dockerfile_instructions(path)
    # The runtime stage: everything after the last FROM.
    last_from = max(i for i, (word, _) in enumerate(instructions)
                    if word == "FROM")
    runtime = instructions[last_from:]

    def values(word):
        found = []
        for w, rest in runtime:
            if w == word:
                found.extend(json.loads(rest) if rest.startswith("[") else rest.split())
        return found

    entrypoint = values("ENTRYPOINT")
    c.check(entrypoint and os.path.basename(entrypoint[0]) == SERVER, where,
            f"ENTRYPOINT {entrypoint} is not {SERVER}")
    exposed = {int(p.split("/")[0]) for p in values("EXPOSE")}
    c.check(exposed == {facts["listen_port"], facts["metrics_port"]}, where,
            f"EXPOSE {sorted(exposed)} is not the manifests' ports "
            f"{facts['listen_port']} and {facts['metrics_port']}")
    user = values("USER")
    c.check(user and user[-1].split(":")[0] == str(facts["run_as_user"]), where,
            f"USER {user} is not the pods' runAsUser {facts['run_as_user']}")
    c.check(facts["state_dir"] in values("VOLUME"), where,
            f"VOLUME {values('VOLUME')} is not the state directory "
            f"{facts['state_dir']}")
    # CMD: the default flags of `docker run`, the same ports and directory.
    cmd_flags = server_flags({"args": values("CMD")}, known, where + " CMD", c)
    for flag_name, expected in (
            ("listen", facts["listen_port"]),
            ("metrics_listen", facts["metrics_port"])):
        host, port = split_address(cmd_flags.get(flag_name))
        c.check(port == expected and host in ("0.0.0.0", "[::]", ""), where,
                f"CMD --{flag_name}={cmd_flags.get(flag_name)} does not bind "
                f"port {expected} on every interface")
    c.check(cmd_flags.get("state_dir") == facts["state_dir"], where,
            f"CMD --state_dir={cmd_flags.get('state_dir')} is not "
            f"{facts['state_dir']}")


def check_alerts(path, facts, c):
    """The volume alert's claim pattern matches the StatefulSet's claims."""
    with open(path) as f:
        rules = yaml.safe_load(f)
    patterns = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            patterns += re.findall(r'persistentvolumeclaim=~"([^"]*)"',
                                   rule.get("expr", ""))
    c.check(patterns, os.path.basename(path),
            "no alert on the state volumes (persistentvolumeclaim=~...)")
    for claim in facts["claims"]:
        for ordinal in (0, 7):
            name = f"{claim}-{facts['sts_name']}-{ordinal}"
            for pattern in patterns:
                c.check(re.fullmatch(pattern, name), os.path.basename(path),
                        f"persistentvolumeclaim=~\"{pattern}\" misses claim {name}")


def main():
    parser = argparse.ArgumentParser()
    for arg in ("kubectl", "k8s_dir", "server", "dockerfile", "alerts"):
        parser.add_argument("--" + arg, required=True)
    opts = parser.parse_args()
    c = Checker()

    helpfull = subprocess.run([opts.server, "--helpfull"], capture_output=True,
                              text=True, timeout=60)
    known = parse_helpfull(helpfull.stdout + helpfull.stderr)
    if not {"listen", "state_dir", "drain_timeout", "device"} <= known.keys():
        sys.exit(f"could not read the flags from {opts.server} --helpfull")
    print(f"{SERVER} has {len(known)} flags")
    version = subprocess.run([opts.kubectl, "version", "--client"],
                             capture_output=True, text=True)
    print(version.stdout.strip())

    kustomizations = sorted(
        os.path.relpath(root, opts.k8s_dir)
        for root, _, files in os.walk(opts.k8s_dir)
        if "kustomization.yaml" in files)
    for required in ("base", "overlays/cpu", "overlays/gpu"):
        c.check(required in kustomizations, "deploy/k8s", f"no {required}")
    facts = {}
    for name in kustomizations:
        rendered = subprocess.run(
            [opts.kubectl, "kustomize", os.path.join(opts.k8s_dir, name)],
            capture_output=True, text=True)
        if not c.check(rendered.returncode == 0, name,
                       f"kubectl kustomize failed: {rendered.stderr.strip()}"):
            continue
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        print(f"{name}: {', '.join(kinds)}")
        facts[name] = check_rendering(name, docs, known, c)

    if facts.get("base"):
        check_dockerfile(opts.dockerfile, facts["base"], known, c)
        check_alerts(opts.alerts, facts["base"], c)

    for failure in c.failures:
        print("FAIL " + failure)
    if c.failures:
        sys.exit(1)
    print(f"PASS: {len(kustomizations)} kustomizations rendered and checked")


if __name__ == "__main__":
    main()
