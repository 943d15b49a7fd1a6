"""The project's error types. Every layer raises a subclass of QuoteHelperError."""

from __future__ import annotations


class QuoteHelperError(Exception):
    """Base of every error quotehelper raises on purpose."""


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
