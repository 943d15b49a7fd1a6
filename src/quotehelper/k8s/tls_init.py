"""The webhook's init step: one TLS Secret for all replicas, and its CA in the webhook configuration.

1. Read the Secret; if it is missing, generate a CA + serving certificate and create it (on a 409
   another replica won the race: use theirs); if it is unusable (wrong names, expiring within 30 days,
   unparseable), replace it.
2. Write ca.crt / tls.crt / tls.key for the server.
3. Set `caBundle` of every webhook in the MutatingWebhookConfiguration that points at our Service
   (a JSON Patch guarded by a `test` of the resourceVersion, retried on conflict).
No cert-manager, no manual step, and nothing else in the cluster is touched.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from cryptography import x509

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s import tls
from quotehelper.k8s.kubeapi import KubeApi, KubeApiError

log = logging.getLogger("quotehelper.k8s.tls")

RENEW_BEFORE = dt.timedelta(days=30)
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"


def usable(material: tls.TlsMaterial, dns_name: str, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        ca = x509.load_pem_x509_certificate(material.ca_pem)
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return False
    return dns_name in names.get_values_for_type(x509.DNSName) and \
        min(cert.not_valid_after_utc, ca.not_valid_after_utc) - now > RENEW_BEFORE


def _secret(name: str, namespace: str, m: tls.TlsMaterial, resource_version: str | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": {"app.kubernetes.io/part-of": "quotehelper"}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta,
            "data": {"ca.crt": b64(m.ca_pem), "tls.crt": b64(m.cert_pem), "tls.key": b64(m.key_pem)}}


def _from_secret(obj: dict) -> tls.TlsMaterial | None:
    data = obj.get("data") or {}
    try:
        return tls.TlsMaterial(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))
    except (KeyError, ValueError):
        return None


def ensure_secret(api: KubeApi, namespace: str, service: str, secret: str,
                  now: dt.datetime | None = None) -> tls.TlsMaterial:
    now = now or dt.datetime.now(dt.UTC)
    names = tls.service_dns_names(service, namespace)
    path = f"/api/v1/namespaces/{namespace}/secrets/{secret}"
    for _ in range(3):
        status, obj = api.request("GET", path)
        if status == 200:
            current = _from_secret(obj)
            if current is not None and usable(current, names[2], now):
                return current
            log.info("secret %s/%s unusable or expiring: replacing it", namespace, secret)
            fresh = tls.generate(names, now=now)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            status, _ = api.request("PUT", path, _secret(secret, namespace, fresh, rv))
            if status != 409:
                return fresh
            continue  # someone else replaced it first: read theirs
        fresh = tls.generate(names, now=now)
        status, _ = api.request("POST", f"/api/v1/namespaces/{namespace}/secrets",
                                _secret(secret, namespace, fresh))
        if status != 409:
            log.info("created secret %s/%s", namespace, secret)
            return fresh
    raise QuoteHelperError(f"secret {namespace}/{secret} keeps changing under us; giving up")


def set_ca_bundle(api: KubeApi, config: str, namespace: str, service: str, ca_pem: bytes) -> int:
    """Returns how many webhooks were updated (0: all already carried this CA)."""
    bundle = base64.b64encode(ca_pem).decode()
    for _ in range(5):
        status, obj = api.request("GET", MWC_PATH + config)
        if status == 404:
            raise QuoteHelperError(f"MutatingWebhookConfiguration {config} not found")
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                      "value": obj["metadata"]["resourceVersion"]}]
        ours = 0
        for i, hook in enumerate(obj.get("webhooks") or []):
            svc = (hook.get("clientConfig") or {}).get("service") or {}
            if (svc.get("name"), svc.get("namespace")) != (service, namespace):
                continue
            ours += 1
            if hook["clientConfig"].get("caBundle") != bundle:
                ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle})
        if not ours:
            raise QuoteHelperError(f"no webhook in {config} points at service {namespace}/{service}")
        if len(ops) == 1:
            return 0
        try:
            status, _ = api.request("PATCH", MWC_PATH + config, ops, "application/json-patch+json")
        except KubeApiError as e:
            if e.status != 422:  # a failed `test` op: the object changed between GET and PATCH
                raise
            continue
        if status != 409:
            return len(ops) - 1
    raise QuoteHelperError(f"MutatingWebhookConfiguration {config} keeps changing under us; giving up")


def run(api: KubeApi, *, namespace: str, service: str, secret: str, webhook_config: str, out: Path) -> str:
    material = ensure_secret(api, namespace, service, secret)
    material.write(out)
    n = set_ca_bundle(api, webhook_config, namespace, service, material.ca_pem)
    return f"TLS material in {out} (secret {namespace}/{secret}); caBundle set on {n} webhook(s) of {webhook_config}"
