"""Why a collateral fetch failed: one exception type with a stable code, the URL, the HTTP status and
what was being fetched ("no TCB info for FMSPC 00906ED50000 at <url>: 404")."""

from __future__ import annotations

import enum
from typing import Any

from quotehelper.errors import QuoteHelperError


class PcsCode(enum.Enum):
    """Stable codes; the value is what JSON output carries. Never rename."""

    NOT_FOUND = "NOT_FOUND"                      # 404: unknown FMSPC / platform, or not cached by a PCCS
    UNAUTHORIZED = "UNAUTHORIZED"                # 401: API key / token missing or wrong
    BAD_REQUEST = "BAD_REQUEST"                  # 400: the server refused our parameters
    HTTP_ERROR = "HTTP_ERROR"                    # any other non-2xx status
    UNAVAILABLE = "UNAVAILABLE"                  # connection refused/reset, 503 or 429 until the deadline
    TIMEOUT = "TIMEOUT"                          # the caller's deadline passed
    TLS_UNTRUSTED = "TLS_UNTRUSTED"              # the server's certificate is not trusted (self-signed PCCS)
    BAD_RESPONSE = "BAD_RESPONSE"                # truncated/malformed body, missing issuer-chain header
    VERIFICATION_FAILED = "VERIFICATION_FAILED"  # signature, chain, dates or FMSPC of what was fetched
    NOT_CACHED = "NOT_CACHED"                    # offline mode and the cache lacks (valid) collateral
    UNSUPPORTED_QUOTE = "UNSUPPORTED_QUOTE"      # the quote does not say which collateral it needs
    BAD_OPTION = "BAD_OPTION"                    # a PcsOptions value is unusable


class PcsError(QuoteHelperError):
    """A failed fetch. `detail` is JSON-serialisable: url, status, what, and the code-specific facts."""

    def __init__(self, code: PcsCode, message: str, detail: dict[str, Any] | None = None) -> None:
        self.code = code
        self.message = message
        self.detail = dict(detail or {})
        super().__init__(f"{code.value}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "detail": self.detail}
