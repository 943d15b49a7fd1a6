"""Why a collateral fetch failed: one exception type with a stable code, the URL, the HTTP status and
what was being fetched ("no TCB info for FMSPC 00906ED50000 at <url>: 404")."""

from __future__ import annotations

import enum

from quotehelper.errors import CodedError


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
    CACHE_UNUSABLE = "CACHE_UNUSABLE"            # the cache directory or its database cannot be used


class PcsError(CodedError):
    """A failed fetch: `code` a PcsCode; `detail` is JSON-serialisable: url, status, what, and the
    code-specific facts."""

    code: PcsCode
