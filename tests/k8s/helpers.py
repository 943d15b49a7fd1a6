"""Pods and AdmissionReviews shared by the webhook tests."""

from __future__ import annotations

import uuid

K8S_VERSION = "1.37.0"


def seed_pod(annotated: bool = True) -> dict:
    """The pod of the AKS out-of-process sample Job (`sgx-test`): EPC in MiB, env and hostPath by hand."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "sgx-test-", "namespace": "default", "labels": {"app": "sgx-test"}},
        "spec": {
            "containers": [{
                "name": "sgxtest", "image": "example.invalid/sgx-quote-sample:1.0",
                "env": [{"name": "SGX_AESM_ADDR", "value": "1"}],
                "resources": {"limits": {"kubernetes.azure.com/sgx_epc_mem_in_MiB": "10"}},
                "volumeMounts": [{"name": "var-run-aesmd", "mountPath": "/var/run/aesmd"}],
            }],
            "restartPolicy": "Never",
            "volumes": [{"name": "var-run-aesmd", "hostPath": {"path": "/var/run/aesmd"}}],
        },
    }
    if annotated:
        pod["metadata"]["annotations"] = {"quotehelper.io/quote-provider": "aesm"}
    return pod


def plain_pod(annotations: dict | None = None, **resources) -> dict:
    c = {"name": "app", "image": "example.invalid/app:1"}
    if resources:
        c["resources"] = resources
    meta = {"name": "app", "namespace": "default"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [c, {"name": "sidecar", "image": "example.invalid/side:1"}]}}


def admission_review(pod: dict, operation: str = "CREATE") -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "default", "operation": operation, "object": pod,
                        "userInfo": {"username": "test"}, "dryRun": False}}
