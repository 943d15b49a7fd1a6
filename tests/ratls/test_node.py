"""The attested-tls sample's two pods on a node, the way kubelet runs them: each "pod" in its own mount
namespace with exactly the device plugin's Allocate answer (the socket directory, read-only, and
SGX_AESM_ADDR), the sample's policy files and the exported trust mounted read-only, and the sample's
own container arguments. The quote service runs in its pod (tests/k8s/test_node_e2e.py's `node`).
Each side's certificate is quoted through the node's service; each judges the other; then one line
goes each way. Root and util-linux unshare are needed (skipped otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quotehelper.k8s.deviceplugin import api_pb2, sgx
from tests.k8s import test_node_e2e as e2e
from tests.k8s.kubelet import kubelet_merge
from tests.k8s.test_node_e2e import needs_namespaces, pod_argv

k8s_node = e2e.node  # its module-scoped fixture (device plugin + quote service pod), under this name

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "attested-tls"
POD_DIR = "/run/attested-tls"  # under the pod's fresh /run: nothing is created on the host's /etc


def sample_args(file: str) -> list[str]:
    (doc,) = [d for d in yaml.safe_load_all((SAMPLE / file).read_text()) if d["kind"] in ("Deployment", "Job")]
    args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a.replace("/etc/attested-tls", POD_DIR) for a in args]


def app_pod(k8s_node, trust: Path) -> api_pb2.ContainerAllocateResponse:
    alloc = kubelet_merge(k8s_node.grants[sgx.EPC_RESOURCE], k8s_node.grants[sgx.ENCLAVE_RESOURCE])
    alloc.mounts.add(container_path=f"{POD_DIR}/policy", host_path=str(SAMPLE), read_only=True)
    alloc.mounts.add(container_path=f"{POD_DIR}/trust", host_path=str(trust), read_only=True)
    return alloc


@pytest.fixture
def trust(k8s_node, tmp_path) -> Path:
    """What export-trust.sh puts in the ConfigMap: the node's simulated root CA and fresh collateral."""
    d = tmp_path / "trust"
    d.mkdir()
    (d / "root_ca.pem").write_bytes(k8s_node.plat.root_ca_pem())
    (d / "collateral.json").write_text(k8s_node.plat.collateral().to_dcap_qvl_json())
    return d


def run_pair(k8s_node, trust: Path, server_args: list[str], client_args: list[str]):
    cli = [sys.executable, "-m", "quotehelper.cli"]
    alloc = app_pod(k8s_node, trust)
    server = subprocess.Popen(pod_argv(alloc, cli + server_args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
        assert first.startswith("listening on "), first + server.stderr.read()
        port = first.rsplit(":", 1)[1].strip()
        client_args = [f"127.0.0.1:{port}" if a == "attested-tls-server:8443" else a for a in client_args]
        client = subprocess.run(pod_argv(alloc, cli + client_args), capture_output=True, text=True, timeout=120)
        return client, server.wait(60), server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def server_args(args: list[str]) -> list[str]:
    out = list(args)
    out[out.index("--listen") + 1] = "127.0.0.1:0"  # the pods share the host's network here
    return [*out, "--once"]


def test_the_sample_pods_attest_each_other_then_exchange_a_message(k8s_node, trust):
    needs_namespaces()
    client, server_rc, server_log = run_pair(k8s_node, trust, server_args(sample_args("server.yaml")),
                                             sample_args("client.yaml"))
    assert client.returncode == 0 and server_rc == 0, (client.stderr, server_log)
    assert client.stdout.strip() == "server got: hello from the client enclave"
    assert "MRENCLAVE " + "5e" * 32 in client.stderr and "MRENCLAVE " + "c1" * 32 in server_log
    assert "received: hello from the client enclave" in server_log


def test_a_client_enclave_the_server_policy_does_not_name_gets_no_data(k8s_node, trust):
    needs_namespaces()
    impostor = sample_args("client.yaml")
    impostor[impostor.index("--mr-enclave") + 1] = "07" * 32
    client, server_rc, server_log = run_pair(k8s_node, trust, server_args(sample_args("server.yaml")), impostor)
    assert server_rc == 3 and "POLICY_REJECTED" in server_log and "received:" not in server_log
    assert client.returncode != 0 and client.stdout == "" and "REFUSED_BY_PEER" in client.stderr
