"""The project's error types. Every layer raises a subclass of QuoteHelperError."""

from __future__ import annotations

import enum
from typing import Any


class QuoteHelperError(Exception):
    """Base of every error quotehelper raises on purpose."""


class CodedError(QuoteHelperError):
    """Base of a layer's one error type: a stable `code` (an Enum whose value JSON carries), a message,
    and a JSON-serialisable `detail` (STYLE.md §2.3)."""

    def __init__(self, code: enum.Enum, message: str, detail: dict[str, Any] | None = None) -> None:
        self.code = code
        self.message = message
        self.detail = dict(detail or {})
        super().__init__(f"{code.value}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "detail": self.detail}


class FormatError(QuoteHelperError, ValueError):
    """Bytes that do not form the named SGX structure.

    Names the structure, the field and the absolute offset so a user can find the bad byte.
    """

    def __init__(self, structure: str, field: str, offset: int, reason: str) -> None:
        self.structure = structure
        self.field = field
        self.offset = offset
        self.reason = reason
        super().__init__(f"{structure}.{field} at offset {offset}: {reason}")
