"""Normalise what callers pass at the public API's edge: paths, times and quotes.

Every layer (verify, pcs, ratls, the CLI) calls these three helpers instead of checking types itself,
so one spelling of an input is accepted everywhere and anything else raises `InputError` (a
`ValueError`) or `InputTypeError` (also a `TypeError`) naming the argument. Imports nothing from
the rest of the package but `errors`, so any layer may use it.
"""

from __future__ import annotations

import os
import string
from datetime import UTC, datetime
from pathlib import Path

from quotehelper.errors import QuoteHelperError

PathLike = str | os.PathLike[str]
TimeLike = int | float | datetime
QuoteLike = bytes | bytearray | memoryview | str

_HEX = frozenset(string.hexdigits)


class InputError(QuoteHelperError, ValueError):
    """A value of the right type that cannot be used (empty path, naive datetime, odd-length hex, ...)."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        self.message = message
        super().__init__(f"{what}: {message}")


class InputTypeError(InputError, TypeError):
    """A value of a type the argument does not take."""


def _type_name(v: object) -> str:
    return type(v).__name__


def as_path(p: PathLike, what: str = "path") -> Path:
    """`str` or `os.PathLike[str]` -> `Path`. Raises InputTypeError (bytes, None, int, ...) or InputError (empty)."""
    if isinstance(p, Path):
        return p
    if not isinstance(p, str | os.PathLike) or isinstance(p, bytes):
        raise InputTypeError(what, f"expected a str or os.PathLike path, got {_type_name(p)}")
    s = os.fspath(p)
    if not isinstance(s, str):
        raise InputTypeError(what, f"expected a text path, got {_type_name(s)}")
    if not s:
        raise InputError(what, "empty path")
    if "\0" in s:
        raise InputError(what, "path contains a NUL character")
    return Path(s)


def as_utc(t: TimeLike, what: str = "time") -> datetime:
    """Unix seconds (int or float) or an aware `datetime` -> an aware UTC `datetime`.

    A naive datetime is refused (InputError): it is ambiguous, and guessing UTC or local time is wrong
    half the time. `bool` and other types raise InputTypeError; a time outside the years 1..9999 raises
    InputError.
    """
    if isinstance(t, datetime):
        if t.tzinfo is None or t.tzinfo.utcoffset(t) is None:
            raise InputError(what, "naive datetime (no tzinfo): pass an aware datetime, e.g. "
                                   "datetime(..., tzinfo=timezone.utc), or unix seconds")
        try:
            return t.astimezone(UTC)
        except (OverflowError, ValueError) as e:
            raise InputError(what, f"out of range: {t.isoformat()}") from e
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise InputTypeError(what, f"expected unix seconds (int or float) or an aware datetime, got {_type_name(t)}")
    try:
        return datetime.fromtimestamp(t, UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise InputError(what, f"{t!r} unix seconds is outside the years 1..9999") from e


def parse_time(text: str, what: str = "time") -> datetime:
    """Command-line time: unix seconds (digits, optionally with a fraction) or ISO 8601 -> aware UTC.

    ISO 8601 without a zone means UTC here: on a command line the user typed it, and every example in
    the docs is UTC. Raises InputError.
    """
    v = text.strip()
    try:
        return as_utc(float(v) if "." in v else int(v), what)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
    try:
        t = datetime.fromisoformat(v)
    except ValueError as e:
        raise InputError(what, f"{text!r} is neither unix seconds nor ISO 8601") from e
    return as_utc(t.replace(tzinfo=UTC) if t.tzinfo is None else t, what)


def as_quote_bytes(q: QuoteLike, what: str = "quote") -> bytes:
    """Raw quote bytes, or the same as hex text (whitespace and a leading `0x` ignored) -> `bytes`.

    Raises InputTypeError for other types and InputError for text that is not even-length hex or is empty.
    """
    if isinstance(q, bytes):
        return q
    if isinstance(q, bytearray | memoryview):
        return bytes(q)
    if not isinstance(q, str):
        raise InputTypeError(what, f"expected bytes or hex text, got {_type_name(q)}")
    s = "".join(q.split())
    if s[:2].lower() == "0x":
        s = s[2:]
    if not s:
        raise InputError(what, "empty")
    if not _HEX.issuperset(s) or len(s) % 2:
        raise InputError(what, "text is not hex (even number of 0-9a-f digits)")
    return bytes.fromhex(s)
