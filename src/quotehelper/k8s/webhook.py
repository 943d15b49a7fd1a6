"""The mutating admission webhook: an HTTPS server answering AdmissionReview v1 with a JSON Patch.

POST /mutate  AdmissionReview v1 (pods, CREATE) -> AdmissionReview v1 response (`mutate.py` decides)
GET  /healthz 200 "ok" (the Deployment's probes)
A pod that did not opt in is always allowed unchanged; malformed input gets HTTP 400 and a reason, and
never takes the server down (each request has a body-size cap and a socket timeout).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s.mutate import MutationConfig, opted_in, patch_for

log = logging.getLogger("quotehelper.k8s.webhook")

ADMISSION_API = "admission.k8s.io/v1"
MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit is about 3 MiB
REQUEST_TIMEOUT = 10.0


class AdmissionError(QuoteHelperError):
    """The request is not an AdmissionReview v1 we can answer."""


def review(body: dict[str, Any], cfg: MutationConfig) -> dict[str, Any]:
    """The AdmissionReview answering `body`."""
    if body.get("apiVersion") != ADMISSION_API or body.get("kind") != "AdmissionReview":
        raise AdmissionError(f"expected apiVersion {ADMISSION_API} kind AdmissionReview, got "
                             f"{body.get('apiVersion')!r} {body.get('kind')!r}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise AdmissionError("AdmissionReview.request.uid missing")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    kind = request.get("kind") or {}
    pod = request.get("object")
    if (kind.get("kind") == "Pod" and kind.get("group", "") == "" and request.get("operation") == "CREATE"
            and isinstance(pod, dict) and opted_in(pod)):
        try:
            ops = patch_for(pod, cfg)
        except (QuoteHelperError, ValueError, TypeError, AttributeError) as e:
            # An opted-in pod we cannot wire would fail later in a less obvious way: say why now.
            response.update(allowed=False, status={"code": 422, "message": f"quotehelper: {e}"})
        else:
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
            name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName")
            log.info("pod %s/%s: %d patch operations", request.get("namespace"), name, len(ops))
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}


class _Handler(BaseHTTPRequestHandler):
    server_version = "quotehelper-webhook"
    timeout = REQUEST_TIMEOUT  # socket timeout: a stalled client cannot pin a thread forever
    cfg: MutationConfig  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        log.warning("%s %s: %s", self.command, self.path, message)
        self._reply(status, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:  # noqa: N802
        if self.path in ("/healthz", "/readyz"):
            self._reply(200, b"ok", "text/plain")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/mutate":
            return self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes (max {MAX_BODY})")
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise AdmissionError("body is not a JSON object")
            answer = review(body, self.cfg)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, f"body is not JSON: {e}")
        except AdmissionError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        self._reply(200, json.dumps(answer).encode())


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshakes that fail (port scanners, wrong CA) land here; one line, not a traceback.
        log.debug("connection from %s failed", client_address, exc_info=True)


def make_server(host: str, port: int, cert: Path, key: Path, cfg: MutationConfig) -> WebhookServer:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    handler = type("Handler", (_Handler,), {"cfg": cfg})
    server = WebhookServer((host, port), handler)
    # No handshake in accept(): it happens on the first read, in the connection's own thread and under
    # its socket timeout, so a client that connects and stalls cannot hold up the accept loop.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def serve_in_thread(server: WebhookServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    t.start()
    return t
