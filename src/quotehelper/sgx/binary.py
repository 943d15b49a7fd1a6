"""A bounds-checked little-endian reader that reports errors as FormatError."""

from __future__ import annotations

import struct

from quotehelper.errors import FormatError


class Reader:
    """Reads fields from `data` starting at `base`; offsets in errors are absolute."""

    def __init__(self, data: bytes, structure: str, base: int = 0, end: int | None = None) -> None:
        self.data = data if type(data) is bytes else bytes(data)  # no copy of a whole quote per structure
        self.structure = structure
        self.pos = base
        self.end = len(self.data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(
                self.structure, field, self.pos,
                f"needs {n} bytes, only {max(self.end - self.pos, 0)} left",
            )
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return struct.unpack("<H", self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return struct.unpack("<I", self.take(4, field))[0]

    def u64(self, field: str) -> int:
        return struct.unpack("<Q", self.take(8, field))[0]

    def error(self, field: str, reason: str, offset: int | None = None) -> FormatError:
        return FormatError(self.structure, field, self.pos if offset is None else offset, reason)


def expect_len(data: bytes, size: int, structure: str) -> None:
    if len(data) != size:
        raise FormatError(structure, "<whole>", 0, f"length {len(data)}, expected {size}")


def fixed(value: bytes, size: int, structure: str, field: str) -> bytes:
    """Checks a fixed-size byte field before encoding."""
    if len(value) != size:
        raise FormatError(structure, field, 0, f"length {len(value)}, expected {size}")
    return bytes(value)
