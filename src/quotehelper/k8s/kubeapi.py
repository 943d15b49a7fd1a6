"""The few Kubernetes API calls the webhook's TLS init step makes, over plain HTTPS (no client library).

In a pod: the API server from KUBERNETES_SERVICE_HOST/PORT, trusted through the service account's
ca.crt, authenticated with its token (re-read per request: projected tokens rotate).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quotehelper.errors import QuoteHelperError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiError(QuoteHelperError):
    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


@dataclass
class KubeApi:
    host: str
    port: int
    token_file: Path
    ca_file: Path | None = None
    ca_data: bytes | None = None
    timeout: float = 10.0

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (SERVICE_ACCOUNT / "token").exists():
            raise QuoteHelperError("not running in a pod with a service account token "
                                   "(KUBERNETES_SERVICE_HOST unset or no token mounted)")
        return cls(host, int(port), SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt")

    def _context(self) -> ssl.SSLContext:
        if self.ca_data is not None:
            return ssl.create_default_context(cadata=self.ca_data.decode())
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
        """(status, decoded JSON body); raises KubeApiError for statuses other than 2xx, 404 and 409."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._context(),
                                           timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token_file.read_text().strip()}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise KubeApiError(method, path, 0, f"connection to {self.host}:{self.port} failed: {e}") from e
        finally:
            conn.close()
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw[:200].decode(errors="replace")}
        if resp.status in (404, 409) or 200 <= resp.status < 300:
            return resp.status, decoded
        raise KubeApiError(method, path, resp.status, str(decoded.get("message", decoded)))
