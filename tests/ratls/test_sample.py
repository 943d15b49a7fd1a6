"""deploy/samples/attested-tls, rendered by the real `kubectl kustomize`. tests/k8s/test_manifests.py
checks it with every sample (schemas, image, the CLI flags in it); here: what is particular to it, the
two policies naming each other's MRENCLAVE and both pods' admission through the webhook."""

from __future__ import annotations

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from quotehelper.k8s import mutate
from quotehelper.verify import Policy
from tests.k8s.test_manifests import (
    DEPLOY,
    K8S_VERSION,
    by,
    pod_spec,
    render,
)

SAMPLE = DEPLOY / "samples" / "attested-tls"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render(SAMPLE)


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_each_side_trusts_exactly_the_others_enclave(docs):
    server = pod_spec(by(docs, "Deployment", "attested-tls-server"))["containers"][0]["args"]
    client = pod_spec(by(docs, "Job", "attested-tls-client"))["containers"][0]["args"]
    policies = by(docs, "ConfigMap", "attested-tls-policy")["data"]
    policy = {name: Policy.from_dict(yaml.safe_load(text)) for name, text in policies.items()}
    assert policy["server-policy.yaml"].mr_enclave == (bytes.fromhex(_arg(client, "--mr-enclave")),)
    assert policy["client-policy.yaml"].mr_enclave == (bytes.fromhex(_arg(server, "--mr-enclave")),)
    assert _arg(server, "--policy").endswith("server-policy.yaml") and _arg(client, "--policy").endswith("client-policy.yaml")
    svc = by(docs, "Service", "attested-tls-server")
    assert _arg(client, "connect") == f"{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "attested-tls-server"), ("Job", "attested-tls-client")])
def test_pods_opt_in_with_the_annotation_only_and_pass_the_simulate_webhook(docs, kind, name):
    obj = by(docs, kind, name)
    template = obj["spec"]["template"]
    assert template["metadata"]["annotations"] == {"quotehelper.io/quote-provider": "aesm"}
    spec = template["spec"]
    assert not any("hostPath" in v for v in spec["volumes"])
    assert all("SGX_AESM_ADDR" not in str(c.get("env")) for c in spec["containers"])  # the webhook adds it
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": f"{name}-x",
                                                           "namespace": "default"}, "spec": spec}
    patched = jsonpatch.apply_patch(pod, mutate.patch_for(pod, mutate.MutationConfig()))
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    c = patched["spec"]["containers"][0]
    assert {"name": "SGX_AESM_ADDR", "value": "1"} in c["env"] and c["resources"]["limits"]["sgx.intel.com/enclave"] == "1"
