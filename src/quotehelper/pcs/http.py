"""HTTP transport for collateral: an injectable getter (aiohttp by default) and the retry policy.

Retried inside the caller's deadline, with jittered exponential backoff: connection errors (refused,
reset, DNS, server gone mid-body), 503 and 429. A `Retry-After` (seconds or an HTTP date) is honoured,
and a wait that would pass the deadline fails at once instead of sleeping. Nothing else is retried: a
404, 401 or 400 will not change by asking again, and an untrusted TLS certificate needs the user.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from quotehelper.pcs.errors import PcsCode, PcsError

if TYPE_CHECKING:
    import aiohttp  # imported when a request is made: ~0.3 s (it loads the CA store), not needed otherwise

MAX_BODY = 16 * 1024 * 1024  # the largest real collateral (platform CA CRL) is a few kB; pckcerts tens of kB
_RETRY_STATUSES = (429, 503)


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    headers: Mapping[str, str]  # case-insensitive lookup (aiohttp's CIMultiDictProxy, or a dict in tests)
    body: bytes

    def header(self, *names: str) -> str | None:
        """The first of `names` present (case-insensitive), else None."""
        lower = {k.lower(): v for k, v in self.headers.items()}
        for n in names:
            if n.lower() in lower:
                return lower[n.lower()]
        return None


class Getter(Protocol):
    """One HTTP GET. Raises PcsError for transport failures (UNAVAILABLE, TIMEOUT, TLS_UNTRUSTED)."""

    async def get(self, url: str, headers: Mapping[str, str], timeout_s: float) -> Response: ...

    async def close(self) -> None: ...


def ssl_context(ca_bundle: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """TLS settings: verification on by default (system CAs), `ca_bundle` adds a PEM file of trusted CAs
    (e.g. a PCCS's self-signed certificate), `insecure` turns verification off (named so, on purpose)."""
    if insecure:
        return False
    if ca_bundle is None:
        return True
    try:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as e:
        raise PcsError(PcsCode.BAD_OPTION, f"cannot load the CA bundle {ca_bundle}: {e}",
                       {"ca_bundle": ca_bundle}) from e
    return ctx


class AiohttpGetter:
    """The default getter: one aiohttp session (connection reuse), bodies capped at MAX_BODY."""

    def __init__(self, *, ca_bundle: str | None = None, insecure: bool = False) -> None:
        self._ssl = ssl_context(ca_bundle, insecure)
        self._session: aiohttp.ClientSession | None = None

    async def get(self, url: str, headers: Mapping[str, str], timeout_s: float) -> Response:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16))
        try:
            # No redirects: a collateral service that answers elsewhere is a misconfiguration (and an API key
            # must not travel to another host).
            async with self._session.get(url, headers=dict(headers), allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=max(timeout_s, 0.001))) as r:
                chunks, size = [], 0
                async for chunk in r.content.iter_chunked(65536):  # the whole body, however it arrives
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise PcsError(PcsCode.BAD_RESPONSE, f"response from {url} exceeds {MAX_BODY} bytes",
                                       {"url": url, "status": r.status})
                    chunks.append(chunk)
                body = b"".join(chunks)
                if r.content_length is not None and len(body) != r.content_length:
                    raise _transport(url, f"body truncated ({len(body)} of {r.content_length} bytes)")
                return Response(str(r.url), r.status, r.headers, body)
        except aiohttp.ClientConnectorCertificateError as e:
            raise PcsError(PcsCode.TLS_UNTRUSTED, f"TLS certificate of {url} is not trusted ({e.certificate_error}); "
                           "give its CA with --ca-bundle FILE, or --insecure for a test PCCS", {"url": url}) from e
        except aiohttp.ClientSSLError as e:
            raise PcsError(PcsCode.TLS_UNTRUSTED, f"TLS handshake with {url} failed (is it an HTTPS server?): {e}",
                           {"url": url}) from e
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
            raise _transport(url, f"body truncated: connection lost while reading the response ({e})") from e
        except aiohttp.ClientConnectionError as e:
            raise _transport(url, f"cannot connect: {e}") from e
        except aiohttp.ClientResponseError as e:  # headers too large or too many, a malformed status line
            raise PcsError(PcsCode.BAD_RESPONSE, f"unreadable answer from {url}: {e.message}",
                           {"url": url, "status": e.status}) from e
        except (aiohttp.ClientError, ValueError) as e:  # e.g. an invalid URL (port out of range)
            raise PcsError(PcsCode.BAD_OPTION, f"cannot request {url}: {type(e).__name__}: {e}", {"url": url}) from e
        except TimeoutError as e:
            raise PcsError(PcsCode.TIMEOUT, f"no complete answer from {url} within {timeout_s:.1f} s",
                           {"url": url}) from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _transport(url: str, why: str) -> PcsError:
    return PcsError(PcsCode.UNAVAILABLE, f"{url}: {why}", {"url": url, "transport": True})


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    v = value.strip()
    if re.fullmatch(r"[0-9]{1,9}", v):  # ASCII digits only (str.isdigit() takes '²')
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    first_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, first * 2^attempt)] (attempt counts from 0)."""
        return random.uniform(0, min(self.max_backoff_s, self.first_backoff_s * 2 ** attempt))


async def get_with_retry(getter: Getter, url: str, *, what: str, deadline: float,
                         headers: Mapping[str, str] | None = None,
                         policy: RetryPolicy = RetryPolicy()) -> Response:
    """GET `url` until a final answer or `deadline` (time.monotonic()). Returns any final response
    (2xx or not: the caller names the failure); raises PcsError(UNAVAILABLE/TIMEOUT) when only
    retryable answers came before the deadline."""
    attempt = 0
    last_status: int | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PcsError(PcsCode.TIMEOUT, f"{what}: deadline passed before {url} answered",
                           {"url": url, "what": what, "attempts": attempt})
        wait: float | None
        try:
            r = await getter.get(url, headers or {}, left)
        except PcsError as e:
            if e.code is PcsCode.TIMEOUT and attempt and last_status is not None:
                # the last try ran out of time after answers that said "later": say what they said
                raise PcsError(PcsCode.UNAVAILABLE, f"{what} at {url}: {last_status} after {attempt} attempts, "
                               "then the deadline passed", {"url": url, "status": last_status, "what": what,
                                                            "attempts": attempt + 1}) from e
            if e.code is PcsCode.TIMEOUT:
                raise PcsError(PcsCode.TIMEOUT, f"{what}: {e.message}", {**e.detail, "what": what}) from e
            if e.code is not PcsCode.UNAVAILABLE:
                raise PcsError(e.code, f"{what}: {e.message}", {**e.detail, "what": what}) from e
            last: PcsError | Response = e
            wait = None
        else:
            if r.status not in _RETRY_STATUSES:
                return r
            last, wait = r, retry_after_seconds(r.header("Retry-After"))
            last_status = r.status
        # Retry-After 0 or a past date must not turn into a busy loop: never less than the first backoff
        delay = policy.backoff(attempt) if wait is None else max(wait, policy.first_backoff_s)
        attempt += 1
        if time.monotonic() + delay >= deadline:
            if isinstance(last, PcsError):
                raise PcsError(PcsCode.UNAVAILABLE, f"{what}: {last.message} (gave up after {attempt} attempts "
                               "within the deadline)", {**last.detail, "what": what, "attempts": attempt})
            hint = f", Retry-After {wait:.0f} s is past the deadline" if wait is not None else ""
            raise PcsError(PcsCode.UNAVAILABLE, f"{what} at {url}: {last.status} after {attempt} attempts{hint}",
                           {"url": url, "status": last.status, "what": what, "attempts": attempt})
        await asyncio.sleep(delay)
