"""The webhook's TLS init step against a small in-memory API server speaking real HTTPS + JSON."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonpatch
import pytest

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s import tls, tls_init
from quotehelper.k8s.kubeapi import KubeApi, KubeApiError

TOKEN = "test-token"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/quotehelper"
SECRETS = "/api/v1/namespaces/quotehelper/secrets"


class FakeApiServer:
    def __init__(self, tmp_path) -> None:
        self.objects: dict[str, dict] = {MWC: {"metadata": {"name": "quotehelper", "resourceVersion": "1"},
                                               "webhooks": [
            {"name": "pods.quotehelper.io", "clientConfig": {"service": {"name": "quotehelper-webhook",
                                                                         "namespace": "quotehelper"}}},
            {"name": "other.example.com", "clientConfig": {"url": "https://elsewhere.example.com/x"}}]}}
        self.log: list[tuple[str, str]] = []
        self.version = 1
        material = tls.generate(["localhost"], ip_addresses=["127.0.0.1"])
        material.write(tmp_path / "apiserver")
        self.ca = material.ca_pem
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self) -> None:
                fake.log.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.reply(401, {"message": "Unauthorized"})
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                obj = fake.objects.get(self.path)
                if self.command == "GET":
                    return self.reply(200, obj) if obj else self.reply(404, {"message": "not found"})
                if self.command == "POST" and self.path == SECRETS:
                    path = f"{SECRETS}/{body['metadata']['name']}"
                    if path in fake.objects:
                        return self.reply(409, {"message": "AlreadyExists"})
                    return self.reply(201, fake.store(path, body))
                if self.command == "PUT" and obj:
                    if body["metadata"].get("resourceVersion") != obj["metadata"]["resourceVersion"]:
                        return self.reply(409, {"message": "Conflict"})
                    return self.reply(200, fake.store(self.path, body))
                if self.command == "PATCH" and obj:
                    assert self.headers["Content-Type"] == "application/json-patch+json"
                    try:
                        new = jsonpatch.apply_patch(obj, body)
                    except jsonpatch.JsonPatchTestFailed:
                        return self.reply(422, {"message": "test failed"})
                    return self.reply(200, fake.store(self.path, new))
                return self.reply(405, {"message": "unsupported"})

            do_GET = do_POST = do_PUT = do_PATCH = handle_any  # noqa: N815

        import ssl

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp_path / "apiserver" / "tls.crt", tmp_path / "apiserver" / "tls.key")
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def store(self, path: str, obj: dict) -> dict:
        self.version += 1
        obj = json.loads(json.dumps(obj))
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.objects[path] = obj
        return obj

    def api(self, tmp_path, token: str = TOKEN) -> KubeApi:
        (tmp_path / "token").write_text(token + "\n")
        return KubeApi("127.0.0.1", self.server.server_address[1], tmp_path / "token", ca_data=self.ca)


@pytest.fixture
def apiserver(tmp_path):
    fake = FakeApiServer(tmp_path)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def run(api, out):
    return tls_init.run(api, namespace="quotehelper", service="quotehelper-webhook",
                        secret="quotehelper-webhook-tls", webhook_config="quotehelper", out=out)


def test_first_replica_creates_the_secret_and_sets_the_ca_bundle(apiserver, tmp_path):
    api = apiserver.api(tmp_path)
    assert "caBundle set on 1 webhook(s)" in run(api, tmp_path / "r1")
    secret = apiserver.objects[f"{SECRETS}/quotehelper-webhook-tls"]
    assert secret["type"] == "kubernetes.io/tls"
    ca = (tmp_path / "r1" / "ca.crt").read_bytes()
    assert base64.b64decode(secret["data"]["ca.crt"]) == ca
    hooks = apiserver.objects[MWC]["webhooks"]
    assert base64.b64decode(hooks[0]["clientConfig"]["caBundle"]) == ca
    assert "caBundle" not in hooks[1]["clientConfig"]  # another vendor's webhook is left alone
    m = tls.TlsMaterial.read(tmp_path / "r1")
    assert tls_init.usable(m, "quotehelper-webhook.quotehelper.svc", dt.datetime.now(dt.UTC))

    # A second replica reuses the same Secret; the configuration already carries the CA: no PATCH.
    apiserver.log.clear()
    assert "caBundle set on 0 webhook(s)" in run(api, tmp_path / "r2")
    assert (tmp_path / "r2" / "tls.key").read_bytes() == (tmp_path / "r1" / "tls.key").read_bytes()
    assert [m for m, _ in apiserver.log] == ["GET", "GET"]


def test_expiring_secret_is_replaced(apiserver, tmp_path):
    api = apiserver.api(tmp_path)
    old = tls.generate(tls.service_dns_names("quotehelper-webhook", "quotehelper"), days=10)
    apiserver.store(f"{SECRETS}/quotehelper-webhook-tls",
                    tls_init._secret("quotehelper-webhook-tls", "quotehelper", old))
    run(api, tmp_path / "out")
    assert (tmp_path / "out" / "ca.crt").read_bytes() != old.ca_pem
    assert ("PUT", f"{SECRETS}/quotehelper-webhook-tls") in apiserver.log


def test_errors_are_precise(apiserver, tmp_path):
    with pytest.raises(KubeApiError, match="HTTP 401"):
        run(apiserver.api(tmp_path, token="wrong"), tmp_path / "out")
    api = apiserver.api(tmp_path)
    apiserver.objects[MWC]["webhooks"] = apiserver.objects[MWC]["webhooks"][1:]
    with pytest.raises(QuoteHelperError, match="no webhook in quotehelper points at service"):
        run(api, tmp_path / "out")
    del apiserver.objects[MWC]
    with pytest.raises(QuoteHelperError, match="MutatingWebhookConfiguration quotehelper not found"):
        run(api, tmp_path / "out")
