"""The quote service's transport: AESM framing over a Unix stream socket, asyncio, one request per
connection (AESM closes after replying).

Robustness beyond AESM (§1.3, §8.4):
- a frame above MAX_FRAME, an unparseable payload, or a request AESM would not answer closes the
  connection unanswered; a client that stalls is dropped at its read deadline, one that never reads its
  reply at the write deadline. None of this touches other connections.
- `bind_atomically`: the socket is bound under a temporary name, chmod-ed, then renamed over the final
  path; a flock on `<path>.lock` plus a connect probe make sure a live server (ours or aesmd) is never
  replaced, while a stale socket file is.
- `AesmServer.stop()`: stop accepting, answer what the kernel already queued, let in-flight requests
  finish (bounded), abort the rest.

`AesmServer` serves on an already listening socket, so several worker processes can share one
(workers.py); responders are plain callables, so the benchmark's echo baseline runs on this very
transport.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

from quotehelper.aesm.codes import AesmError
from quotehelper.aesm.framing import MAX_FRAME, encode_frame
from quotehelper.aesm.handlers import (
    GET_QUOTE_EX,
    BadFrame,
    Dispatcher,
    EngineCall,
    engine_call_error,
    parse_request,
    run_engine_call,
)
from quotehelper.aesm.sockets import (  # noqa: F401 - re-exported: the server's public API
    DEFAULT_SOCKET,
    DEFAULT_SOCKET_MODE,
    ServiceSocket,
    SocketInUse,
    bind_atomically,
)
from quotehelper.platform.engine import QuotingEngine

log = logging.getLogger(__name__)


# What a responder returns for one request payload: reply bytes now, a future of them, or None (close).
Reply = bytes | asyncio.Future[bytes] | None
Responder = Callable[[bytes], Reply]
_LEN = struct.Struct("<I")


# --- responders ---------------------------------------------------------------------------------------

class AesmResponder:
    """payload -> reply, in the process that holds the engine.

    Calls that need no engine (key-id catalogue, SelectAttKeyID, the InitQuoteEx probe, legacy calls,
    anything failing AESM's own checks) are answered at once, so they never wait behind quotes. Engine
    calls join a bounded FIFO drained a few at a time per event-loop iteration (so accepts and cheap
    calls interleave with quoting); when the FIFO is full the answer is AESM_BUSY, so memory stays bounded.

    Successful InitQuoteEx/GetQuoteSizeEx answers are memoised per request payload when `memo` is set:
    right for engines that keep their attestation key for the life of the process (the software QE),
    wrong for ones that may re-certify it (leave `memo` off for DCAP).
    """

    MEMO_LIMIT = 64  # payloads differ only in key id and timeout; bounded anyway
    BATCH = 8  # engine calls per event-loop iteration

    def __init__(self, dispatcher: Dispatcher, engine: QuotingEngine, *, queue_limit: int = 64,
                 memo: bool = False) -> None:
        self.dispatcher = dispatcher
        self.engine = engine
        self.queue_limit = queue_limit
        self.memo = memo
        self.busy_replies = 0
        self._memo: dict[tuple[int, bytes], bytes] = {}
        self._queue: collections.deque[tuple[EngineCall, asyncio.Future[bytes]]] = collections.deque()
        self._scheduled = False

    def __call__(self, payload: bytes) -> Reply:
        try:
            req = parse_request(payload)
        except BadFrame:
            return None
        out = self.dispatcher.inline(req)
        if out is None:
            return None
        if not isinstance(out, EngineCall):
            return encode_frame(out.SerializeToString())
        if self.memo and out.tag != GET_QUOTE_EX:
            hit = self._memo.get((out.tag, out.payload))
            if hit is not None:
                return hit
        if len(self._queue) >= self.queue_limit:
            self.busy_replies += 1
            return encode_frame(failure_response(out, AesmError.BUSY))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._queue.append((out, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return fut

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _drain(self) -> None:
        try:
            for _ in range(min(self.BATCH, len(self._queue))):
                call, fut = self._queue.popleft()
                if fut.done():  # the client went away meanwhile
                    continue
                try:
                    fut.set_result(self._execute(call))
                except Exception:  # never leave a client waiting on a future nobody will complete
                    log.exception("engine call %d failed", call.tag)
                    fut.set_result(encode_frame(failure_response(call, AesmError.UNEXPECTED_ERROR)))
        finally:
            if self._queue:
                asyncio.get_running_loop().call_soon(self._drain)  # let I/O in before the next batch
            else:
                self._scheduled = False

    def _execute(self, call: EngineCall) -> bytes:
        res = run_engine_call(self.engine, call)
        frame = encode_frame(res.SerializeToString())
        if self.memo and call.tag != GET_QUOTE_EX and len(self._memo) < self.MEMO_LIMIT:
            (_, sub), = res.ListFields()
            if sub.errorCode == AesmError.SUCCESS:
                self._memo[(call.tag, call.payload)] = frame
        return frame


def failure_response(call: EngineCall, code: int) -> bytes:
    """The serialized error Response for an engine call, with the fields AESM always sends."""
    return engine_call_error(call, code).SerializeToString()


def echo_responder(payload: bytes) -> Reply:
    """The transport floor: the same framing, no protocol work."""
    return encode_frame(payload)


# --- per-connection protocol --------------------------------------------------------------------------

class _Connection(asyncio.Protocol):
    __slots__ = ("server", "transport", "buf", "need", "deadline", "answered")

    def __init__(self, server: AesmServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # payload length once the 4-byte header is in
        self.deadline: asyncio.TimerHandle | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        if len(srv.connections) >= srv.max_connections:
            srv.stats["rejected"] += 1
            transport.abort()
            return
        srv.connections.add(self)
        self.deadline = srv.loop.call_later(srv.read_timeout, self._expire, "read")

    def _expire(self, what: str) -> None:
        self.server.stats[f"{what}_timeouts"] += 1
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # one request per connection: anything after the first frame is ignored
        srv = self.server
        if srv.buffered + len(data) > srv.max_buffered:
            # Many half-sent frames at once: bound this process's memory; drop the one pushing it over.
            srv.stats["over_budget"] += 1
            self.transport.abort()  # type: ignore[union-attr]
            return
        srv.buffered += len(data)
        self.buf += data
        if self.need < 0:
            if len(self.buf) < 4:
                return
            (self.need,) = _LEN.unpack_from(self.buf)
            if self.need > self.server.max_frame:
                self.server.stats["oversized"] += 1
                self.transport.abort()  # type: ignore[union-attr]
                return
        if len(self.buf) - 4 < self.need:
            return
        self.answered = True
        # (no pause_reading: bytes after the frame are dropped in data_received, and one epoll_ctl is saved)
        self._cancel_deadline()
        payload = bytes(self.buf[4: 4 + self.need])
        srv.buffered -= len(self.buf)
        self.buf = bytearray()
        self.server.stats["requests"] += 1
        try:
            reply = self.server.responder(payload)
        except Exception:
            log.exception("responder failed")
            reply = None
        if isinstance(reply, asyncio.Future):
            reply.add_done_callback(self._reply_ready)
        else:
            self._send(reply)

    def eof_received(self) -> bool | None:
        if not self.answered:  # truncated frame (or nothing at all): close unanswered, as AESM does
            self.server.stats["truncated"] += 1
            self.transport.abort()  # type: ignore[union-attr]
        return True  # keep our write side open until the reply is out

    def _reply_ready(self, fut: asyncio.Future[bytes]) -> None:
        self._send(None if fut.cancelled() or fut.exception() else fut.result())

    def _send(self, reply: bytes | None) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if reply is None:
            self.server.stats["closed_unanswered"] += 1
            t.abort()
            return
        t.write(reply)
        if t.get_write_buffer_size():  # the client is not reading: give it the write deadline
            self.deadline = self.server.loop.call_later(self.server.write_timeout, self._expire, "write")
        t.close()  # flushes, then closes: the server side of "one request per connection"

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.buffered -= len(self.buf)
        self.buf = bytearray()
        self._cancel_deadline()
        self.transport = None
        self.server.connections.discard(self)
        if not self.server.connections and self.server.idle is not None:
            self.server.idle.set()


class AesmServer:
    """Serves `responder` on an already listening socket (several processes may share it)."""

    def __init__(self, sock: socket.socket, responder: Responder, *, read_timeout: float = 5.0,
                 write_timeout: float = 15.0, max_frame: int = MAX_FRAME, max_connections: int = 1024,
                 max_buffered: int = 32 << 20,
                 drain_timeout: float = 20.0, backlog: int = 1024) -> None:
        self.sock = sock
        self.backlog = backlog
        self.responder = responder
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.max_buffered = max_buffered  # bytes of unfinished requests held across all connections
        self.buffered = 0
        self.drain_timeout = drain_timeout
        self.connections: set[_Connection] = set()
        self.idle: asyncio.Event | None = None
        self.stats: dict[str, int] = {k: 0 for k in (
            "requests", "oversized", "truncated", "closed_unanswered", "read_timeouts", "write_timeouts",
            "rejected", "backlog_drained", "over_budget")}
        self._server: asyncio.AbstractServer | None = None
        self._stopping: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle = asyncio.Event()
        self._stopping = asyncio.Event()
        # asyncio closes the socket it serves on; keep our own descriptor to drain the backlog at stop.
        self._accept_sock = socket.socket(fileno=os.dup(self.sock.fileno()))
        self._accept_sock.setblocking(False)
        # asyncio re-runs listen() on the socket: pass the real backlog, or it silently drops to 100.
        self._server = await self.loop.create_unix_server(lambda: _Connection(self), sock=self.sock.dup(),
                                                          backlog=self.backlog)

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop accepting, serve what is already in the backlog, drain open connections (bounded)."""
        if self._server is None:
            return
        self._server.close()
        # Connections the kernel already queued for us would be reset when the listener closes; with the
        # path unlinked by the owner no new ones can arrive, so take them in and answer them.
        while True:
            try:
                conn, _ = self._accept_sock.accept()
            except (BlockingIOError, InterruptedError, OSError):
                break
            self.stats["backlog_drained"] += 1
            await self.loop.connect_accepted_socket(lambda: _Connection(self), conn)
        self._accept_sock.close()
        if self.connections:
            self.idle.clear()  # type: ignore[union-attr]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), self.drain_timeout)  # type: ignore[union-attr]
        for c in list(self.connections):  # whatever outlived the drain window
            if c.transport is not None:
                c.transport.abort()
        await self._server.wait_closed()
        self._server = None
