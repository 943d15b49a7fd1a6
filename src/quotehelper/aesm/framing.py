"""AESM framing: u32 little-endian payload length, then the serialized protobuf (section 1.4).

Shared by the asyncio server, the blocking client and the benchmark's echo baseline, so the transport
floor is measured with exactly the framing the service uses.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from quotehelper.errors import QuoteHelperError

MAX_FRAME = 1 << 20  # 1 MiB: largest legit request is ~1.7 KB (GetQuoteEx) or an EPID SigRL
_LEN = struct.Struct("<I")


class FrameError(QuoteHelperError):
    """A frame that cannot be read: truncated, oversized, or the peer went away."""


def encode_frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def decode_length(header: bytes, cap: int = MAX_FRAME) -> int:
    (n,) = _LEN.unpack(header)
    if n > cap:
        raise FrameError(f"frame length {n} exceeds the {cap}-byte cap")
    return n


async def read_frame(reader: asyncio.StreamReader, cap: int = MAX_FRAME) -> bytes:
    """One frame from an asyncio stream; FrameError on EOF mid-frame or a length above `cap`."""
    try:
        header = await reader.readexactly(4)
        n = decode_length(header, cap)
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise FrameError(f"connection closed after {len(e.partial)} bytes of a frame part") from e


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise FrameError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, cap: int = MAX_FRAME) -> bytes:
    """One frame from a blocking socket (its timeout applies to each recv)."""
    n = decode_length(_recv_exactly(sock, 4), cap)
    return _recv_exactly(sock, n)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(encode_frame(payload))
