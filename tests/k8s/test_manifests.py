"""Every kustomization under deploy/, rendered by the real `kubectl kustomize`, validated against the
Kubernetes 1.37 schemas (kubernetes-validate, offline, strict), and checked for what the design
promises: the commands and flags in the manifests exist, the webhook cannot block unrelated pods,
and SGX pods need no hostPath."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from quotehelper.cli import main as cli_main
from quotehelper.k8s import mutate

K8S_VERSION = "1.37.0"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("production", "simulate", "azure-legacy")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if found:
        return found
    msg = "kubectl not found (Debian: apt-get install kubernetes-client; or set KUBECTL)"
    if os.environ.get("CI"):
        pytest.fail(msg + ": CI must install it")
    pytest.skip(msg)


def render(path: Path) -> list[dict]:
    r = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    out = {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS}
    out["base"] = render(DEPLOY / "base")
    out["samples/sgx-test"] = render(DEPLOY / "samples" / "sgx-test")
    return out


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
            if c["image"].split(":")[0] != "quotehelper":
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


@pytest.mark.parametrize("name", [*OVERLAYS, "base", "samples/sgx-test"])
def test_every_object_validates_against_the_kubernetes_schemas(rendered, name):
    docs = rendered[name]
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], d["metadata"]
        else:
            assert d["metadata"].get("namespace"), f"{d['kind']}/{d['metadata']['name']} has no namespace"


@pytest.mark.parametrize("name", [*OVERLAYS, "samples/sgx-test"])
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


@pytest.mark.parametrize("name", OVERLAYS)
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
    assert c["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}}
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
    assert prod["nodeSelector"]["intel.feature.node.kubernetes.io/sgx"] == "true"
    assert {v["hostPath"]["type"] for v in prod["volumes"]} == {"Directory", "CharDevice"}
    sim = pod_spec(by(rendered["simulate"], "DaemonSet", "device-plugin"))
    assert "--simulate" in sim["containers"][0]["args"]
    assert "CharDevice" not in {v["hostPath"].get("type") for v in sim["volumes"]}  # runs without SGX
    assert {m["mountPath"] for m in sim["containers"][0]["volumeMounts"]} == {
        "/var/lib/kubelet/device-plugins", "/var/lib/quotehelper"}
    assert not [d for d in rendered["azure-legacy"] if d["kind"] == "DaemonSet" and
                d["metadata"]["name"] == "device-plugin"]


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


@pytest.mark.parametrize("overlay", ["simulate", "azure-legacy"])
def test_sample_job_admitted_through_the_webhook_is_a_valid_baseline_pod(rendered, overlay):
    """The sample Job's pod, mutated as the overlay's webhook would, has no hostPath (Pod Security
    baseline) unless the overlay delivers the socket by hostPath, and asks for what the nodes serve."""
    job = by(rendered["samples/sgx-test"], "Job", "sgx-test")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**job["spec"]["template"]["metadata"],
                                                           "name": "sgx-test-x", "namespace": "default"},
           "spec": job["spec"]["template"]["spec"]}
    args = pod_spec(by(rendered[overlay], "Deployment", "webhook"))["containers"][0]["args"]
    cfg = mutate.MutationConfig(
        socket_delivery=args[args.index("--socket-delivery") + 1] if "--socket-delivery" in args else "plugin",
        enclave_resource="--no-enclave-resource" not in args)
    patched = jsonpatch.apply_patch(pod, mutate.patch_for(pod, cfg))
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    c = patched["spec"]["containers"][0]
    assert {"name": "SGX_AESM_ADDR", "value": "1"} in c["env"]
    host_paths = [v for v in patched["spec"].get("volumes", []) if "hostPath" in v]
    if overlay == "simulate":
        assert not host_paths and c["resources"]["limits"]["sgx.intel.com/enclave"] == "1"
    else:
        assert host_paths and "sgx.intel.com/enclave" not in c["resources"]["limits"]
