"""The admission webhook over real HTTPS (test CA), and the pods its JSON Patches produce."""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import socket
import ssl
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest

from quotehelper.k8s import mutate, tls, webhook
from quotehelper.k8s.quantity import QuantityError, bytes_to_mib, mib_count, parse_quantity
from tests.k8s.helpers import K8S_VERSION, admission_review, plain_pod, seed_pod


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> tuple[Path, tls.TlsMaterial]:
    m = tls.generate([*tls.service_dns_names("quotehelper-webhook", "quotehelper"), "localhost"],
                     ip_addresses=["127.0.0.1"])
    d = tmp_path_factory.mktemp("tls")
    m.write(d)
    return d, m


@pytest.fixture(scope="module", params=["plugin", "hostPath"])
def server(request, material):
    d, m = material
    cfg = mutate.MutationConfig(socket_delivery=request.param)
    srv = webhook.make_server("127.0.0.1", 0, d / "tls.crt", d / "tls.key", cfg)
    webhook.serve_in_thread(srv)
    yield srv, m, cfg
    srv.shutdown()
    srv.server_close()


def post(server, body: bytes | dict, *, content_type: str = "application/json",
         headers: dict | None = None) -> tuple[int, dict]:
    srv, m, _ = server
    ctx = ssl.create_default_context(cadata=m.ca_pem.decode())
    conn = http.client.HTTPSConnection("localhost", srv.server_address[1], context=ctx, timeout=10)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", "/mutate", body=data, headers={"Content-Type": content_type, **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def mutate_over_https(server, pod: dict) -> tuple[list, dict]:
    """POST the pod; check the AdmissionReview answer; apply the patch; validate the result."""
    req = admission_review(pod)
    status, answer = post(server, req)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    resp = answer["response"]
    assert resp["uid"] == req["request"]["uid"] and resp["allowed"] is True
    if "patch" not in resp:
        assert "patchType" not in resp
        return [], pod
    assert resp["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(resp["patch"]))
    patched = jsonpatch.apply_patch(pod, ops)
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    # Idempotent: the patched pod, reviewed again, gets no patch.
    again = post(server, admission_review(patched))[1]["response"]
    assert "patch" not in again, json.loads(base64.b64decode(again["patch"]))
    return ops, patched


def container(pod: dict, name: str) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def test_seed_pod_opted_in(server):
    _, _, cfg = server
    pod = seed_pod()
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    ops, patched = mutate_over_https(server, pod)
    c = container(patched, "sgxtest")
    assert c["resources"]["limits"] == {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "10",
                                        "sgx.intel.com/enclave": "1"}
    assert c["env"] == [{"name": "SGX_AESM_ADDR", "value": "1"}]  # not duplicated
    if cfg.socket_delivery == "hostPath":  # its own mount kept, no second one
        assert c["volumeMounts"] == pod["spec"]["containers"][0]["volumeMounts"]
        assert patched["spec"]["volumes"] == pod["spec"]["volumes"]
        assert [op["path"] for op in ops] == ["/spec/containers/0/resources"]
    else:  # the plugin mounts the socket: the hand-made hostPath goes (baseline-compliant pod)
        assert "volumeMounts" not in c and "volumes" not in patched["spec"]
        assert {op["op"] for op in ops if op["path"] != "/spec/containers/0/resources"} == {"remove"}


def test_hand_wired_socket_removed_only_where_unused():
    """Plugin mode: the hostPath socket volume stays while a container the webhook does not wire (here an
    init container) still mounts it; other volumes and mounts are never touched."""
    pod = seed_pod()
    spec = pod["spec"]
    spec["containers"][0]["volumeMounts"].append({"name": "data", "mountPath": "/data"})
    spec["volumes"].append({"name": "data", "emptyDir": {}})
    spec["initContainers"] = [{"name": "init", "image": "example.invalid/init:1",
                               "volumeMounts": [{"name": "var-run-aesmd", "mountPath": "/var/run/aesmd"}]}]
    patched = jsonpatch.apply_patch(pod, mutate.patch_for(pod))
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    assert patched["spec"]["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["var-run-aesmd", "data"]
    assert mutate.patch_for(patched) == []


def test_seed_pod_not_opted_in_is_untouched(server):
    ops, patched = mutate_over_https(server, seed_pod(annotated=False))
    assert ops == [] and patched == seed_pod(annotated=False)


@pytest.mark.parametrize("annotations", [None, {"quotehelper.io/quote-provider": "something-else"},
                                         {"sgx.intel.com/quote-provider": "app"}, {"unrelated": "aesm"}])
def test_pods_that_did_not_opt_in_are_never_touched(server, annotations):
    pod = plain_pod(annotations, limits={"sgx.intel.com/epc": "10Mi"})
    assert mutate_over_https(server, pod) == ([], pod)


def test_intel_annotation_and_bytes_epc_become_mib(server):
    _, _, cfg = server
    pod = plain_pod({"sgx.intel.com/quote-provider": "aesmd"},
                    limits={"sgx.intel.com/epc": "10Mi", "cpu": "1"}, requests={"sgx.intel.com/epc": "10Mi"})
    ops, patched = mutate_over_https(server, pod)
    app = container(patched, "app")
    assert app["resources"] == {
        "limits": {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "10", "sgx.intel.com/enclave": "1", "cpu": "1"},
        "requests": {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "10", "sgx.intel.com/enclave": "1"}}
    assert app["env"] == [{"name": "SGX_AESM_ADDR", "value": "1"}]
    # Only the SGX container is wired; the sidecar is left alone.
    assert container(patched, "sidecar") == container(pod, "sidecar")
    if cfg.socket_delivery == "hostPath":
        assert app["volumeMounts"] == [{"name": "aesmd-socket", "mountPath": "/var/run/aesmd"}]
        assert patched["spec"]["volumes"] == [
            {"name": "aesmd-socket", "hostPath": {"path": "/var/run/aesmd", "type": "DirectoryOrCreate"}}]
    else:  # the device plugin's Allocate mounts the socket: no hostPath in the pod
        assert "volumeMounts" not in app and "volumes" not in patched["spec"]


def test_both_epc_names_keep_the_larger_amount(server):
    pod = plain_pod({"quotehelper.io/quote-provider": "aesm"},
                    limits={"sgx.intel.com/epc": "12582913", "kubernetes.azure.com/sgx_epc_mem_in_MiB": "8"})
    _, patched = mutate_over_https(server, pod)
    # 12582913 bytes is 12 MiB + 1 byte: rounded up to 13, larger than 8.
    assert container(patched, "app")["resources"]["limits"] == {
        "kubernetes.azure.com/sgx_epc_mem_in_MiB": "13", "sgx.intel.com/enclave": "1"}


def test_opted_in_without_sgx_resources_wires_every_container(server):
    pod = plain_pod({"quotehelper.io/quote-provider": "aesm"})
    ops, patched = mutate_over_https(server, pod)
    for c in patched["spec"]["containers"]:
        assert c["resources"] == {"limits": {"sgx.intel.com/enclave": "1"}}
        assert {"name": "SGX_AESM_ADDR", "value": "1"} in c["env"]


def test_already_mutated_pod_gets_no_patch(server):
    """A pod wired earlier (by this webhook, or by hand as Intel's webhook would): enclave, env, EPC
    under the served name, and the socket volume + mount where the webhook delivers the socket."""
    _, _, cfg = server
    pod = plain_pod({"sgx.intel.com/quote-provider": "aesmd"},
                    limits={"kubernetes.azure.com/sgx_epc_mem_in_MiB": "10", "sgx.intel.com/enclave": "1"})
    app = container(pod, "app")
    app["env"] = [{"name": "SGX_AESM_ADDR", "value": "1"}]
    if cfg.socket_delivery == "hostPath":
        app["volumeMounts"] = [{"name": "aesmd-socket", "mountPath": "/var/run/aesmd"}]
        pod["spec"]["volumes"] = [{"name": "aesmd-socket",
                                   "hostPath": {"path": "/var/run/aesmd", "type": "DirectoryOrCreate"}}]
    assert mutate_over_https(server, pod) == ([], pod)


def test_default_epc_for_containers_asking_for_none():
    cfg = mutate.MutationConfig(default_epc_mib=4)
    pod = plain_pod({"quotehelper.io/quote-provider": "aesm"}, limits={"sgx.intel.com/enclave": "1"})
    new = mutate.mutate(pod, cfg)
    assert container(new, "app")["resources"]["limits"] == {"sgx.intel.com/enclave": "1",
                                                           "kubernetes.azure.com/sgx_epc_mem_in_MiB": "4"}
    assert "resources" not in container(new, "sidecar")  # not an SGX container
    assert mutate.patch_for(new, cfg) == []
    asked = plain_pod({"quotehelper.io/quote-provider": "aesm"}, limits={"sgx.intel.com/epc": "1Mi"})
    assert container(mutate.mutate(asked, cfg), "app")["resources"]["limits"][
        "kubernetes.azure.com/sgx_epc_mem_in_MiB"] == "1"


def test_translation_towards_intel_bytes_name():
    cfg = mutate.MutationConfig(epc_resource="sgx.intel.com/epc")
    pod = seed_pod()
    new = mutate.mutate(pod, cfg)
    assert new["spec"]["containers"][0]["resources"]["limits"] == {"sgx.intel.com/epc": "10Mi",
                                                                   "sgx.intel.com/enclave": "1"}
    assert mutate.patch_for(new, cfg) == []
    assert pod == seed_pod()  # the input is not modified


def test_legacy_nodes_get_no_enclave_resource_and_a_hostpath_socket():
    cfg = mutate.MutationConfig(socket_delivery="hostPath", enclave_resource=False)
    pod = plain_pod({"quotehelper.io/quote-provider": "aesm"}, limits={"sgx.intel.com/epc": "4Mi"})
    ops = mutate.patch_for(pod, cfg)
    patched = jsonpatch.apply_patch(pod, ops)
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    app = container(patched, "app")
    assert app["resources"] == {"limits": {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "4"}}
    assert app["volumeMounts"] == [{"name": "aesmd-socket", "mountPath": "/var/run/aesmd"}]
    assert mutate.patch_for(patched, cfg) == []


def test_non_pod_update_and_bad_requests(server):
    # UPDATE of an opted-in pod, and other kinds: allowed, no patch.
    status, answer = post(server, admission_review(seed_pod(), operation="UPDATE"))
    assert status == 200 and answer["response"]["allowed"] and "patch" not in answer["response"]
    dep = admission_review(seed_pod())
    dep["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert "patch" not in post(server, dep)[1]["response"]

    assert post(server, b"{not json")[0] == 400
    assert post(server, b"[]")[0] == 400
    status, answer = post(server, {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"})
    assert status == 400 and "admission.k8s.io/v1" in answer["error"]
    assert post(server, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})[0] == 400
    assert post(server, b"{}", content_type="text/plain")[0] == 415
    assert post(server, b"{}", headers={"Content-Length": str(64 * 1024 * 1024)})[0] == 413

    # An opted-in pod with an EPC amount that is not a quantity: denied with the reason.
    bad = plain_pod({"quotehelper.io/quote-provider": "aesm"}, limits={"sgx.intel.com/epc": "lots"})
    status, answer = post(server, admission_review(bad))
    assert status == 200 and answer["response"]["allowed"] is False
    assert "lots" in answer["response"]["status"]["message"]

    # A client that connects and says nothing does not block others (handshake in its own thread).
    idle = socket.create_connection(server[0].server_address)
    try:
        assert mutate_over_https(server, seed_pod())[0]
    finally:
        idle.close()
    # Plain HTTP on the TLS port is refused, and the server still answers afterwards.
    raw = socket.create_connection(server[0].server_address)
    raw.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    raw.settimeout(5)
    with contextlib.suppress(OSError):
        raw.recv(100)
    raw.close()
    assert post(server, admission_review(seed_pod()))[0] == 200


def test_healthz(server):
    srv, m, _ = server
    conn = http.client.HTTPSConnection("localhost", srv.server_address[1],
                                       context=ssl.create_default_context(cadata=m.ca_pem.decode()), timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok"
    conn.close()


def test_tls_material_names_and_chain(material):
    from cryptography import x509

    _, m = material
    cert = x509.load_pem_x509_certificate(m.cert_pem)
    ca = x509.load_pem_x509_certificate(m.ca_pem)
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "quotehelper-webhook.quotehelper.svc" in names.get_values_for_type(x509.DNSName)


def test_quantities():
    assert parse_quantity("10Mi") == 10 * 1024 * 1024
    assert parse_quantity("1.5Gi") == 3 * 512 * 1024 * 1024
    assert parse_quantity("1e6") == 10**6 and parse_quantity("2k") == 2000 and parse_quantity(7) == 7
    assert bytes_to_mib("512Ki") == 1 and bytes_to_mib("0") == 0 and bytes_to_mib("10M") == 10
    assert mib_count("10") == 10 and mib_count(10) == 10
    for bad in ("", "Mi", "10XB", "1.2.3", True):
        with pytest.raises(QuantityError):
            parse_quantity(bad)


def test_mutate_does_not_alias_input():
    pod = plain_pod({"quotehelper.io/quote-provider": "aesm"}, limits={"sgx.intel.com/epc": "1Mi"})
    before = copy.deepcopy(pod)
    mutate.patch_for(pod)
    assert pod == before
