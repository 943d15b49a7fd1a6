"""Every kustomization under deploy/, rendered by the real `kubectl kustomize` (kustomize v5, no
deprecation warnings), validated strictly against the schemas of the oldest and newest Kubernetes
versions the README supports (kubernetes-validate, offline), and checked for what the design and the
README promise: one image reference everywhere, priority classes admissible without cluster-wide
changes, node selection by labels nobody sets by hand, the AKS add-on's resources left to it, the
commands and flags in the manifests exist, the webhook cannot block unrelated pods, SGX pods need no
hostPath."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from quotehelper.cli import main as cli_main
from quotehelper.k8s import mutate

K8S_VERSIONS = ("1.30.0", "1.37.0")  # the README's oldest (the webhook's matchConditions) and newest
K8S_VERSION = K8S_VERSIONS[-1]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("production", "simulate", "azure-legacy", "aks", "aks-azure-quote-helper", "intel-plugin")
WITH_QUOTE_SERVICE = ("production", "simulate", "azure-legacy", "aks", "intel-plugin")
# Overlays for nodes whose Intel-style SGX device plugin is someone else's (the AKS add-on's, Intel's).
EXTERNAL_PLUGIN = ("aks", "aks-azure-quote-helper", "intel-plugin")
SAMPLES = tuple(sorted(f"samples/{k.parent.name}" for k in DEPLOY.glob("samples/*/kustomization.yaml")))
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
WORKLOADS = ("DaemonSet", "Deployment", "Job", "StatefulSet", "ReplicaSet", "CronJob", "Pod")
# Labels that software sets on every node by itself (kubelet, the cloud provider, NFD, sgx-epchook):
# a node replaced or added by the cloud carries them with no one labelling it.
AUTOMATIC_NODE_LABELS = {"kubernetes.io/os", "kubernetes.io/arch", "node.kubernetes.io/instance-type",
                         "intel.feature.node.kubernetes.io/sgx", "sgx.intel.com/capable"}
INTEL_STYLE_RESOURCES = {"sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision"}


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if found:
        return found
    msg = "kubectl not found (it embeds kustomize; or set KUBECTL)"
    if os.environ.get("CI"):
        pytest.fail(msg + ": CI must install it")
    pytest.skip(msg)


def render(path: Path) -> list[dict]:
    r = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # kustomize v5 warns on stderr about deprecated fields (bases, patchesStrategicMerge, vars, ...).
    assert not re.search(r"(?i)warn|deprecat", r.stderr), f"{path}: {r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def with_component(tmp: Path, overlay: str, component: str) -> Path:
    """A kustomization a user would write: an overlay plus one of deploy/components."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, tmp)],
        "components": [os.path.relpath(DEPLOY / "components" / component, tmp)]}))
    return tmp


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS}
    out["base"] = render(DEPLOY / "base")
    for name in SAMPLES:
        out[name] = render(DEPLOY / name)
    out["production+servicemonitor"] = render(
        with_component(tmp_path_factory.mktemp("sm"), "production", "servicemonitor"))
    return out


def test_kustomize_is_v5():
    r = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, timeout=60)
    found = re.search(r"Kustomize Version: v(\d+)", r.stdout)
    assert found and int(found.group(1)) >= 5, r.stdout + r.stderr


def by(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def parse_cli(argv: list[str]) -> None:
    """Parses argv with the real `quotehelper` command tree (no command runs): a flag in a manifest
    that the CLI does not have fails here, not in a cluster."""
    with click.Context(cli_main) as ctx:
        cmd = cli_main.get_command(ctx, argv[0])
    if cmd is None:
        raise click.UsageError(f"no such command {argv[0]!r}")
    cmd.make_context(argv[0], list(argv[1:]))


def quotehelper_invocations(docs: list[dict]):
    for d in docs:
        if d["kind"] not in ("DaemonSet", "Deployment", "Job"):
            continue
        spec = pod_spec(d)
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1] != "quotehelper":
                continue
            if "command" not in c:
                yield f"{d['metadata']['name']}/{c['name']}", c["args"]
            elif c["command"] == ["/bin/sh", "-c"]:  # a script: each quotehelper invocation in it
                for part in " ".join(c["args"]).split("&&"):
                    words = shlex.split(part)
                    if words and words[0] == "quotehelper":
                        yield f"{d['metadata']['name']}/{c['name']}/script", words[1:]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                cmd = ((c.get(probe) or {}).get("exec") or {}).get("command")
                if cmd:
                    assert cmd[0] == "quotehelper", cmd
                    yield f"{d['metadata']['name']}/{c['name']}/{probe}", cmd[1:]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", [*OVERLAYS, "base", *SAMPLES, "production+servicemonitor"])
def test_every_object_validates_against_the_kubernetes_schemas(rendered, name, version):
    docs = rendered[name]
    assert docs
    for d in docs:
        if d["apiVersion"] == "monitoring.coreos.com/v1":  # a CRD: no schema in Kubernetes' own
            assert d["kind"] == "ServiceMonitor" and d["spec"]["endpoints"] and d["spec"]["selector"]
        else:
            kubernetes_validate.validate(d, version, strict=True)
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], d["metadata"]
        else:
            assert d["metadata"].get("namespace"), f"{d['kind']}/{d['metadata']['name']} has no namespace"


def configured_image(deploy: Path = DEPLOY) -> str:
    (entry,) = yaml.safe_load((deploy / "image" / "kustomization.yaml").read_text())["images"]
    return f"{entry['newName']}:{entry['newTag']}"


def containers(docs: list[dict]):
    for d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        spec = d["spec"] if d["kind"] == "Pod" else (
            d["spec"]["jobTemplate"]["spec"]["template"]["spec"] if d["kind"] == "CronJob" else pod_spec(d))
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{d['kind']}/{d['metadata']['name']}/{c['name']}", c


def test_the_image_reference_is_fully_qualified():
    image = configured_image()
    host = image.split("/")[0]
    assert "/" in image and ("." in host or ":" in host or host == "localhost"), image  # never Docker Hub's
    assert re.fullmatch(r"[^:@]+:[\w][\w.-]*", image), image


@pytest.mark.parametrize("name", [*OVERLAYS, "base", *SAMPLES])
def test_every_container_runs_the_configured_image(rendered, name):
    seen = list(containers(rendered[name]))
    assert seen
    image = configured_image()
    assert {where: c["image"] for where, c in seen} == {where: image for where, _ in seen}
    assert {c.get("imagePullPolicy") for _, c in seen} == {"IfNotPresent"}


def test_the_image_is_set_in_one_place(tmp_path):
    """Changing deploy/image changes every container of every overlay and sample, and nothing else."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kust = copy / "image" / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("newName: localhost/quotehelper", "newName: registry.example.com/qh/quotehelper")
                    .replace("newTag: 0.1.0", "newTag: 9.9.9"))
    assert configured_image(copy) == "registry.example.com/qh/quotehelper:9.9.9"
    for name in [*(f"overlays/{o}" for o in OVERLAYS), *SAMPLES]:
        images = {c["image"] for _, c in containers(render(copy / name))}
        assert images == {"registry.example.com/qh/quotehelper:9.9.9"}, name


SYSTEM_PRIORITY_CLASSES = {"system-node-critical", "system-cluster-critical"}


def priority_denials(docs: list[dict]) -> list[str]:
    """What an API server that limits the system-* classes to namespaces with a covering quota (GKE's
    default; any cluster with them under the ResourceQuota admission's limitedResources) would refuse:
    a pod at such a class outside kube-system with no ResourceQuota in its namespace that selects that
    class by scope and caps pods."""
    quotas = [d for d in docs if d["kind"] == "ResourceQuota"]
    denials = []
    for d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        cls = pod_spec(d).get("priorityClassName")
        ns = d["metadata"]["namespace"]
        if cls not in SYSTEM_PRIORITY_CLASSES or ns == "kube-system":
            continue
        covered = any(
            q["metadata"]["namespace"] == ns and ({"pods", "count/pods"} & set(q["spec"]["hard"]))
            and any(e["scopeName"] == "PriorityClass" and e["operator"] == "In" and cls in e["values"]
                    for e in q["spec"].get("scopeSelector", {}).get("matchExpressions", []))
            for q in quotas)
        if not covered:
            denials.append(f"{d['kind']}/{d['metadata']['name']} ({cls} in {ns}): insufficient quota to match these scopes")
    return denials


@pytest.mark.parametrize("name", OVERLAYS)
def test_priority_classes_are_admissible_without_cluster_wide_changes(rendered, name):
    docs = rendered[name]
    assert priority_denials(docs) == []
    assert not [d for d in docs if d["kind"] == "PriorityClass"]  # nothing cluster-wide to create
    classes = {pod_spec(d).get("priorityClassName") for d in docs if d["kind"] == "DaemonSet"}
    assert classes <= {"system-node-critical"}
    if classes:
        # Without the namespace's quota the same pods would be refused: the check above is not vacuous.
        assert priority_denials([d for d in docs if d["kind"] != "ResourceQuota"])
        (quota,) = [d for d in docs if d["kind"] == "ResourceQuota"]
        assert int(quota["spec"]["hard"]["pods"]) >= 2 * 2 * 5000  # 2 DaemonSets + surge, on 5000 nodes


def node_matches(spec: dict, labels: dict[str, str]) -> bool:
    """kube-scheduler's nodeSelector + required node affinity (In / Exists operators) on a node's labels."""
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True

    def term_matches(term: dict) -> bool:
        for e in term.get("matchExpressions", []):
            assert e["operator"] in ("In", "Exists"), e
            if e["key"] not in labels or (e["operator"] == "In" and labels[e["key"]] not in e["values"]):
                return False
        return True
    return any(term_matches(t) for t in required["nodeSelectorTerms"])


def selection_keys(spec: dict) -> set[str]:
    keys = set(spec.get("nodeSelector") or {})
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution")) or {"nodeSelectorTerms": []}
    for t in required["nodeSelectorTerms"]:
        keys |= {e["key"] for e in t.get("matchExpressions", [])}
    return keys


LINUX = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
NODES = {  # what a fresh node carries with nobody labelling it
    "plain VM": {**LINUX, "node.kubernetes.io/instance-type": "Standard_D4s_v5"},
    "AKS DCsv3": {**LINUX, "node.kubernetes.io/instance-type": "Standard_DC4s_v3"},
    "AKS DCsv2": {**LINUX, "node.kubernetes.io/instance-type": "Standard_DC2s_v2"},
    "SGX node, NFD": {**LINUX, "node.kubernetes.io/instance-type": "m6i.large",
                      "intel.feature.node.kubernetes.io/sgx": "true"},
    "SGX node, sgx-epchook": {**LINUX, "node.kubernetes.io/instance-type": "bare", "sgx.intel.com/capable": "true"},
}
SELECTS = {
    "production": {"SGX node, NFD", "SGX node, sgx-epchook"},
    "simulate": set(NODES),
    "azure-legacy": {"AKS DCsv3", "AKS DCsv2"},
    "aks": {"AKS DCsv3", "AKS DCsv2"},
    "intel-plugin": {"SGX node, NFD", "SGX node, sgx-epchook"},
}


@pytest.mark.parametrize("name", WITH_QUOTE_SERVICE)
def test_node_selection_survives_node_replacement(rendered, name):
    """Each overlay's DaemonSets pick exactly the nodes meant for them, by labels that a replaced or
    added node carries without anyone labelling it."""
    for d in rendered[name]:
        if d["kind"] != "DaemonSet":
            continue
        spec = pod_spec(d)
        assert selection_keys(spec) <= AUTOMATIC_NODE_LABELS, (name, d["metadata"]["name"], selection_keys(spec))
        picked = {node for node, labels in NODES.items() if node_matches(spec, labels)}
        assert picked == SELECTS[name], (name, d["metadata"]["name"], picked)


def test_external_plugin_overlays_leave_the_sgx_resources_to_it(rendered):
    """aks (the confcom add-on's sgx-plugin) and intel-plugin (Intel's): nothing of ours registers a
    resource that plugin serves, and the webhook never renames sgx.intel.com/epc."""
    for name in EXTERNAL_PLUGIN:
        docs = rendered[name]
        # No device plugin of ours: nothing registers a resource the add-on's sgx-plugin already serves.
        assert not [argv for _, argv in quotehelper_invocations(docs) if argv[0] == "device-plugin"]
        assert not [d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "device-plugin"]
        args = pod_spec(by(docs, "Deployment", "webhook"))["containers"][0]["args"]
        cfg = webhook_config(args)
        assert cfg.epc_resource == "sgx.intel.com/epc" and cfg.socket_delivery == "hostPath" and cfg.enclave_resource
    for name in ("aks", "intel-plugin"):
        (c,) = pod_spec(by(rendered[name], "DaemonSet", "quote-helper"))["containers"]
        assert {k for k in c["resources"]["limits"] if "/" in k} == INTEL_STYLE_RESOURCES
    assert not [d for d in rendered["aks-azure-quote-helper"] if d["kind"] == "DaemonSet"]  # AKS's serves


def test_a_start_refused_over_another_service_shows_in_log_and_status(rendered, tmp_path):
    """With AKS's quote helper (or aesmd) on the socket ours refuses to start, says why on stderr, and
    exits non-zero; the manifests make kubelet put that last log line into the pod's status."""
    for name in WITH_QUOTE_SERVICE:
        (c,) = pod_spec(by(rendered[name], "DaemonSet", "quote-helper"))["containers"]
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    from quotehelper.platform.sim import SimPlatform
    SimPlatform.create(tmp_path / "platform")
    path = tmp_path / "aesm.socket"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen()
    try:
        r = subprocess.run([sys.executable, "-m", "quotehelper.cli", "serve", "--socket", str(path), "--take-over",
                            "--platform", str(tmp_path / "platform"), "--workers", "1"],
                           capture_output=True, text=True, timeout=60)
    finally:
        other.close()
    assert r.returncode != 0
    assert "refusing to take it over" in r.stderr, r.stderr


def test_webhook_has_a_disruption_budget(rendered):
    for name in OVERLAYS:
        docs = rendered[name]
        dep = by(docs, "Deployment", "webhook")
        pdb = by(docs, "PodDisruptionBudget", "quotehelper-webhook")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert 1 <= pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]


def test_servicemonitor_component_scrapes_the_quote_service(rendered):
    docs = rendered["production+servicemonitor"]
    sm = by(docs, "ServiceMonitor", "quote-helper")
    svc = by(docs, "Service", "quote-helper-metrics")
    ds = by(docs, "DaemonSet", "quote-helper")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (c,) = pod_spec(ds)["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (endpoint,) = sm["spec"]["endpoints"]
    (svc_port,) = svc["spec"]["ports"]
    assert endpoint["port"] == svc_port["name"] and svc_port["targetPort"] in ports
    assert svc_port["port"] == ports[svc_port["targetPort"]]
    assert not [d for d in rendered["production"] if d["kind"] == "ServiceMonitor"]  # optional


def webhook_config(args: list[str]) -> mutate.MutationConfig:
    """The MutationConfig the webhook builds from these args, parsed by the real command."""
    with click.Context(cli_main) as ctx:
        cmd = cli_main.get_command(ctx, args[0])
    params = cmd.make_context(args[0], list(args[1:]), resilient_parsing=True).params
    return mutate.MutationConfig(epc_resource=params["epc_resource"], socket_delivery=params["socket_delivery"],
                                 enclave_resource=params["enclave_resource"],
                                 default_epc_mib=params["default_epc_mib"])


@pytest.mark.parametrize("name", [*OVERLAYS, *SAMPLES])
def test_commands_and_flags_in_the_manifests_exist(rendered, name):
    seen = list(quotehelper_invocations(rendered[name]))
    assert seen
    for where, argv in seen:
        try:
            parse_cli(argv)
        except click.BadParameter as e:
            if "does not exist" not in e.message:  # a path made at run time (the sample's quote file)
                pytest.fail(f"{name} {where}: {argv}: {e.format_message()}")
        except click.ClickException as e:
            pytest.fail(f"{name} {where}: {argv}: {e.format_message()}")


def test_a_wrong_flag_would_be_caught():
    with pytest.raises(click.ClickException):
        parse_cli(["health", "--no-such-flag"])


@pytest.mark.parametrize("name", WITH_QUOTE_SERVICE)
def test_quote_helper_daemonset(rendered, name):
    docs = rendered[name]
    ds = by(docs, "DaemonSet", "quote-helper")
    # Zero-gap updates: surge a new pod that takes the socket over, then retire the old one.
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    spec = pod_spec(ds)
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["aesmd-socket"]["hostPath"] == {"path": "/var/run/aesmd", "type": "DirectoryOrCreate"}
    (c,) = spec["containers"]
    # root (the image's user is 65532) for the root-owned host directory, with no capabilities
    assert c["securityContext"] == {"runAsUser": 0, "runAsGroup": 0, "readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"][:2] == ["quotehelper", "health"]
    assert c["args"][0] == "serve" and "--take-over" in c["args"]
    # No preStop: SIGTERM alone drains, and a hook waiting for the socket to go would wait for the
    # successor's socket until the grace period ran out.
    assert "lifecycle" not in c
    # It serves into the host's /var/run/aesmd through its own mount, at a path no device-plugin grant
    # uses (kubelet would pass two mounts at /var/run/aesmd: the enclave grant's and this one).
    sock = c["args"][c["args"].index("--socket") + 1]
    own = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert own[os.path.dirname(sock)] == "aesmd-socket"
    assert not set(own) & {"/var/run/aesmd", "/run/aesmd", "/dev/sgx_enclave", "/dev/sgx_provision"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        cmd = c[probe]["exec"]["command"]
        assert cmd[cmd.index("--socket") + 1] == sock
    limits = c["resources"]["limits"]
    if name == "azure-legacy":
        assert limits.get("kubernetes.azure.com/sgx_epc_mem_in_MiB") == "1" and "sgx.intel.com/enclave" not in limits
    elif name in EXTERNAL_PLUGIN:
        assert limits["sgx.intel.com/epc"] == "1Mi" and limits["sgx.intel.com/enclave"] == "1"
    else:
        assert limits["sgx.intel.com/enclave"] == "1" and limits["sgx.intel.com/provision"] == "1"
    engine = c["args"][c["args"].index("--engine") + 1]
    assert engine == ("sim" if name == "simulate" else "dcap")
    probe_engine = c["livenessProbe"]["exec"]["command"]
    assert ("--platform" in probe_engine) == (name == "simulate")
    # Metrics: the port `serve` listens on is the container port named `metrics` and the scrape annotation's.
    metrics_port = int(c["args"][c["args"].index("--metrics-addr") + 1].rpartition(":")[2])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == metrics_port
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(metrics_port)


def test_device_plugin_per_overlay(rendered):
    prod = pod_spec(by(rendered["production"], "DaemonSet", "device-plugin"))
    assert prod["containers"][0]["securityContext"]["runAsUser"] == 0  # kubelet's directory is root's
    assert {v["hostPath"]["type"] for v in prod["volumes"]} == {"Directory", "CharDevice"}
    sim = pod_spec(by(rendered["simulate"], "DaemonSet", "device-plugin"))
    assert "--simulate" in sim["containers"][0]["args"]
    assert "CharDevice" not in {v["hostPath"].get("type") for v in sim["volumes"]}  # runs without SGX
    assert {m["mountPath"] for m in sim["containers"][0]["volumeMounts"]} == {
        "/var/lib/kubelet/device-plugins", "/var/lib/quotehelper"}
    for name in ("azure-legacy", *EXTERNAL_PLUGIN):  # the cluster's own plugin serves
        assert not [d for d in rendered[name] if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "device-plugin"]


@pytest.mark.parametrize("name", OVERLAYS)
def test_webhook_cannot_block_unrelated_workloads(rendered, name):
    docs = rendered[name]
    mwc = by(docs, "MutatingWebhookConfiguration", "quotehelper")
    svc = by(docs, "Service", "quotehelper-webhook")
    dep = by(docs, "Deployment", "webhook")
    for hook in mwc["webhooks"]:
        assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                  "resources": ["pods"], "scope": "Namespaced"}]
        excluded = hook["namespaceSelector"]["matchExpressions"][0]
        assert excluded["operator"] == "NotIn" and {"kube-system", "quotehelper"} <= set(excluded["values"])
        assert hook["objectSelector"]["matchExpressions"][0]["operator"] == "NotIn"
        cond = hook["matchConditions"][0]["expression"]
        assert "quotehelper.io/quote-provider" in cond and "sgx.intel.com/quote-provider" in cond
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref["path"]) == (svc["metadata"]["name"],
                                                                  svc["metadata"]["namespace"], "/mutate")
        assert ref["port"] == svc["spec"]["ports"][0]["port"]
    spec = pod_spec(dep)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    port_names = {p["name"] for p in spec["containers"][0]["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in port_names
    # The init step edits exactly this configuration and this Service's Secret, which RBAC allows.
    init_args = spec["initContainers"][0]["args"]
    assert init_args[init_args.index("--webhook-config") + 1] == mwc["metadata"]["name"]
    assert init_args[init_args.index("--service") + 1] == svc["metadata"]["name"]
    role = by(docs, "ClusterRole", "quotehelper-webhook-cabundle")
    assert role["rules"][0]["resourceNames"] == [mwc["metadata"]["name"]]
    assert {s["name"] for s in by(docs, "RoleBinding", "webhook-tls")["subjects"]} == {spec["serviceAccountName"]}


@pytest.mark.parametrize("overlay", ["simulate", "azure-legacy", "aks", "intel-plugin"])
def test_sample_job_admitted_through_the_webhook_is_a_valid_baseline_pod(rendered, overlay):
    """The sample Job's pod, mutated as the overlay's webhook would, has no hostPath (Pod Security
    baseline) unless the overlay delivers the socket by hostPath, and asks for what the nodes serve."""
    job = by(rendered["samples/sgx-test"], "Job", "sgx-test")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**job["spec"]["template"]["metadata"],
                                                           "name": "sgx-test-x", "namespace": "default"},
           "spec": job["spec"]["template"]["spec"]}
    cfg = webhook_config(pod_spec(by(rendered[overlay], "Deployment", "webhook"))["containers"][0]["args"])
    patched = jsonpatch.apply_patch(pod, mutate.patch_for(pod, cfg))
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
    c = patched["spec"]["containers"][0]
    assert {"name": "SGX_AESM_ADDR", "value": "1"} in c["env"]
    host_paths = [v for v in patched["spec"].get("volumes", []) if "hostPath" in v]
    limits = c["resources"]["limits"]
    if overlay == "simulate":
        assert not host_paths and limits["sgx.intel.com/enclave"] == "1"
    elif overlay == "azure-legacy":
        assert host_paths and "sgx.intel.com/enclave" not in limits
    else:  # the plugin's resource names only (the sample's legacy MiB request is translated into them)
        assert host_paths and {k for k in limits if "/" in k} <= INTEL_STYLE_RESOURCES
        assert limits["sgx.intel.com/epc"] == "10Mi" and limits["sgx.intel.com/enclave"] == "1"
