"""The mutating admission webhook: an HTTPS server answering AdmissionReview v1 with a JSON Patch.

POST /mutate  AdmissionReview v1 (pods, CREATE) -> AdmissionReview v1 response (`mutate.py` decides)
GET  /healthz 200 "ok" (the Deployment's probes)

A pod that did not opt in is always allowed unchanged. Every request gets an HTTP answer, never a
dropped connection: malformed input 400 with a reason, an oversized body 413, a request not complete
within its deadline 408, a bug of ours 500. Connections beyond `max_connections` (counted from the
accept, TLS handshakes included) are closed before any TLS, at no cost. Limits (`WebhookLimits`): body size,
JSON nesting depth, integer digits, one deadline for the whole request (TLS handshake, headers, body,
answer) and a bound on open connections. The server is one asyncio loop on one thread, so slow clients
cost a little memory each, never a thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s.mutate import MutationConfig, opted_in, patch_for

log = logging.getLogger("quotehelper.k8s.webhook")

ADMISSION_API = "admission.k8s.io/v1"
MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit is about 3 MiB
REQUEST_TIMEOUT = 10.0      # the API server's default webhook timeout is 10 s as well


@dataclass(frozen=True)
class WebhookLimits:
    """Bounds on what one client can make the webhook do. Times in seconds, sizes in bytes."""

    max_body: int = MAX_BODY
    max_depth: int = 64          # a Pod is about 12 levels deep; json's own limit is ~1000 (RecursionError)
    max_int_digits: int = 20     # int64 needs 19 digits and a sign
    deadline: float = REQUEST_TIMEOUT  # the whole request, from its first byte (or the accept) to the answer
    idle: float = 60.0           # a kept-alive connection waiting for its next request
    max_connections: int = 64    # open connections, handshakes included (~300 KB each); beyond: closed at once
    max_header_bytes: int = 16 * 1024


class AdmissionError(QuoteHelperError):
    """The request is not an AdmissionReview v1 we can answer."""


class WebhookError(QuoteHelperError):
    """The webhook cannot start (TLS files, address)."""


def _bounded_int(limit: int) -> Any:
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > limit:
            raise AdmissionError(f"integer of {len(text)} digits (max {limit})")
        return int(text)
    return parse


def _refuse_constant(name: str) -> Any:
    raise AdmissionError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_body(raw: bytes, limits: WebhookLimits = WebhookLimits()) -> dict[str, Any]:  # noqa: B008
    """Request body -> JSON object, within the limits. Raises AdmissionError saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AdmissionError(f"body is not UTF-8 (byte {e.start})") from e
    try:
        body = json.loads(text, parse_int=_bounded_int(limits.max_int_digits), parse_constant=_refuse_constant)
    except RecursionError as e:
        raise AdmissionError(f"body is nested deeper than {limits.max_depth} levels") from e
    except json.JSONDecodeError as e:
        raise AdmissionError(f"body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except ValueError as e:  # a float beyond range, for instance
        raise AdmissionError(f"body is not usable JSON: {e}"[:200]) from e
    if not isinstance(body, dict):
        raise AdmissionError("body is not a JSON object")
    if _depth(body) > limits.max_depth:
        raise AdmissionError(f"body is nested deeper than {limits.max_depth} levels")
    return body


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def review(body: dict[str, Any], cfg: MutationConfig) -> dict[str, Any]:
    """The AdmissionReview answering `body` (a parsed AdmissionReview v1). Raises AdmissionError for a body
    that is not one; any other shape inside it (a string where an object belongs) is answered."""
    if body.get("apiVersion") != ADMISSION_API or body.get("kind") != "AdmissionReview":
        raise AdmissionError(f"expected apiVersion {ADMISSION_API} kind AdmissionReview, got "
                             f"{body.get('apiVersion')!r:.60} {body.get('kind')!r:.60}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise AdmissionError("AdmissionReview.request.uid missing")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    kind = _obj(request.get("kind"))  # a string here is no Pod: allowed unchanged
    pod = request.get("object")
    if (kind.get("kind") == "Pod" and kind.get("group", "") == "" and request.get("operation") == "CREATE"
            and isinstance(pod, dict) and opted_in(pod)):
        try:
            ops = patch_for(pod, cfg)
        except (QuoteHelperError, ValueError, TypeError, AttributeError, KeyError) as e:
            # An opted-in pod we cannot wire would fail later in a less obvious way: say why now.
            response.update(allowed=False, status={"code": 422, "message": f"quotehelper: {e}"[:1000]})
        else:
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
            meta = _obj(pod.get("metadata"))
            log.info("pod %s/%s: %d patch operations", request.get("namespace"),
                     meta.get("name") or meta.get("generateName"), len(ops))
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}


def answer(raw: bytes, cfg: MutationConfig, limits: WebhookLimits = WebhookLimits()) -> tuple[int, dict[str, Any]]:  # noqa: B008
    """(HTTP status, JSON answer) for a POST /mutate body: 200 AdmissionReview, 400 with an `error`, or 500
    if we have a bug. Never raises."""
    try:
        return 200, review(parse_body(raw, limits), cfg)
    except AdmissionError as e:
        return 400, {"error": str(e)}
    except Exception as e:  # our bug: still an answer (failurePolicy decides), and a log with the cause
        log.exception("internal error answering an AdmissionReview")
        return 500, {"error": f"internal error: {type(e).__name__}"}


class _Reply(Exception):
    """Ends a request with this status and message (and closes the connection)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebhookServer:
    """The webhook's HTTPS server: `serve_forever()` on a thread, `shutdown()` from another, then
    `server_close()`. `server_address` is the bound (host, port)."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext, cfg: MutationConfig, limits: WebhookLimits) -> None:
        self.socket, self.tls, self.cfg, self.limits = sock, tls, cfg, limits
        self.server_address = sock.getsockname()[:2]
        self.active = 0
        # Connections still waiting for (the rest of) a request, oldest first: at the bound the oldest is
        # dropped for a new one, so stalled clients cannot hold every slot (a slowloris) against a live one.
        self.waiting: dict[asyncio.StreamWriter, None] = {}
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()

    # ---- life cycle -----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._done.set()

    def shutdown(self) -> None:
        self._started.wait(10)
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._done.wait(10)

    def server_close(self) -> None:
        self.socket.close()
        if not self._loop.is_running():
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._loop.set_exception_handler(lambda _loop, ctx: log.debug("connection: %s", ctx.get("message")))
        # TLS is started per connection, after the connection bound: asyncio gives every TLS connection a
        # 256 KiB buffer, so 1,000 stalled handshakes cost ~330 MB if accepted blindly (measured).
        server = await asyncio.start_server(self._client, sock=self.socket, limit=self.limits.max_header_bytes)
        self._started.set()
        async with server:
            await self._stop.wait()

    # ---- one connection -------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        if self.active >= self.limits.max_connections:
            if not self.waiting:
                writer.transport.abort()  # every slot is answering a request: refused before any TLS
                return
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            oldest.transport.abort()  # its task sees the connection lost and frees its slot
        self.active += 1
        self.waiting[writer] = None
        raw_transport = writer.transport
        try:
            deadline = loop.time() + self.limits.deadline  # the first request: counted from the accept
            async with asyncio.timeout_at(deadline):
                await writer.start_tls(self.tls)
            if writer.transport is None:  # lost during the handshake (e.g. dropped for a new one)
                return
            try:
                while True:
                    if deadline is None:  # kept alive: the next request's deadline starts at its first byte
                        async with asyncio.timeout(self.limits.idle):
                            first = await reader.read(1)
                        deadline = loop.time() + self.limits.deadline
                    else:
                        first = b""
                    if not await self._request(reader, writer, first, deadline):
                        return
                    self.waiting[writer] = None  # kept alive: waiting again
                    deadline = None
            finally:
                writer.close()
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            raw_transport.abort()  # a handshake past its deadline, an idle timeout, or a client gone
        finally:
            if writer.transport is None:  # CPython 3.11 leaves None after a lost TLS connection, and
                writer._transport = raw_transport  # StreamWriter.__del__ then trips over it
            self.active -= 1
            self.waiting.pop(writer, None)

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes,
                       deadline: float) -> bool:
        """Reads and answers one request; True to keep the connection for another."""
        try:
            async with asyncio.timeout_at(deadline):
                method, path, headers, keep = await self._head(reader, first)
                status, body, ctype = await self._route(reader, writer, method, path, headers)
        except _Reply as r:
            await self._send(writer, r.status, {"error": str(r)}, deadline + 1.0, keep=False)
            return False
        except TimeoutError:
            await self._send(writer, HTTPStatus.REQUEST_TIMEOUT, {"error": f"request not complete within "
                             f"{self.limits.deadline:g} s"}, asyncio.get_running_loop().time() + 1.0, keep=False)
            return False
        except asyncio.IncompleteReadError:
            return False  # the client closed mid-request: nobody to answer
        return await self._send(writer, status, body, deadline + 1.0, keep=keep, content_type=ctype)

    async def _head(self, reader: asyncio.StreamReader, first: bytes) -> tuple[str, str, dict[str, str], bool]:
        total = 0
        lines = []
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as e:
                raise _Reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header line too long") from e
            if not lines:
                line = first + line
            total += len(line)
            if total > self.limits.max_header_bytes:
                raise _Reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large")
            if line in (b"\r\n", b"\n"):
                break
            lines.append(line.decode("latin-1").rstrip("\r\n"))
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Reply(HTTPStatus.BAD_REQUEST, "not an HTTP/1.x request line")
        headers: dict[str, str] = {}
        for h in lines[1:]:
            name, sep, value = h.partition(":")
            if not sep or not name or name != name.strip():
                raise _Reply(HTTPStatus.BAD_REQUEST, "malformed header line")
            headers[name.lower()] = value.strip()
        conn = headers.get("connection", "").lower()
        keep = (parts[2] == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
        return parts[0], parts[1], headers, keep

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str,
                     headers: dict[str, str]) -> tuple[HTTPStatus, Any, str]:
        if "transfer-encoding" in headers:
            raise _Reply(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
        length_text = headers.get("content-length", "0" if method in ("GET", "HEAD") else "")
        if not length_text.isdigit() or len(length_text) > 12:
            raise _Reply(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        length = int(length_text)
        if length > self.limits.max_body:
            raise _Reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes (max {self.limits.max_body})")
        raw = await reader.readexactly(length) if length else b""
        self.waiting.pop(writer, None)  # a whole request: answering it, no longer evictable
        route = path.split("?", 1)[0]
        if method == "GET" and route in ("/healthz", "/readyz"):
            return HTTPStatus.OK, "ok", "text/plain"
        if route != "/mutate" or method != "POST":
            return HTTPStatus.NOT_FOUND, {"error": f"no such path {path[:100]}"}, "application/json"
        if not headers.get("content-type", "").startswith("application/json"):
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "Content-Type must be application/json"}, \
                "application/json"
        if not length:
            return HTTPStatus.BAD_REQUEST, {"error": "empty body"}, "application/json"
        status, out = answer(raw, self.cfg, self.limits)
        if status != 200:
            log.warning("POST %s: %s", route, out.get("error"))
        return HTTPStatus(status), out, "application/json"

    async def _send(self, writer: asyncio.StreamWriter, status: HTTPStatus, body: Any, deadline: float,
                    keep: bool, content_type: str = "application/json") -> bool:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        head = (f"HTTP/1.1 {status.value} {status.phrase}\r\nServer: quotehelper-webhook\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n")
        try:
            async with asyncio.timeout_at(deadline):
                writer.write(head.encode("latin-1") + data)
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            return False
        return keep


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    for what, p in (("certificate", cert), ("key", key)):
        if not p.is_file():
            raise WebhookError(f"TLS {what} {p} not found (write both with `quotehelper webhook-tls`)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise WebhookError(f"TLS certificate {cert} and key {key} are not a usable pair ({e.__class__.__name__}: "
                           f"{getattr(e, 'reason', None) or e})") from e
    return ctx


def make_server(host: str, port: int, cert: Path, key: Path, cfg: MutationConfig,
                limits: WebhookLimits | None = None) -> WebhookServer:
    """Binds (host, port) and loads the TLS pair. Raises WebhookError naming a missing or bad TLS file,
    OSError for the address."""
    ctx = _tls_context(Path(cert), Path(key))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return WebhookServer(sock, ctx, cfg, limits or WebhookLimits())


def serve_in_thread(server: WebhookServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True, name="webhook")
    t.start()
    return t
