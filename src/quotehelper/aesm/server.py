"""The quote service's transport: an asyncio Unix-socket server speaking AESM framing.

One request per connection (AESM closes after replying). Robustness beyond AESM (§1.3, §8.4):
- a frame above MAX_FRAME, an unparseable payload, or a request AESM would not answer closes the
  connection unanswered; a client that stalls gets dropped at its read deadline; a client that never
  reads its reply is dropped at the write deadline. None of this touches other connections.
- the socket is bound under a temporary name, chmod-ed, then renamed over the final path (atomic);
  a flock on `<path>.lock` plus a connect probe make sure a live server (ours or aesmd) is never
  replaced, while a stale socket file is.
- SIGTERM/SIGINT: stop accepting, let in-flight requests finish (bounded), unlink our socket (only if
  the path still names our socket), stop the workers.

Responders are plain callables so the benchmark's echo baseline runs on this very transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from quotehelper.aesm.codes import AesmError
from quotehelper.aesm.framing import MAX_FRAME, encode_frame
from quotehelper.aesm.handlers import (
    GET_QUOTE_EX,
    BadFrame,
    Dispatcher,
    EngineCall,
    parse_request,
    run_engine_call,
)
from quotehelper.aesm.workers import PoolBusy, WorkerPool, failure_response
from quotehelper.errors import QuoteHelperError
from quotehelper.platform.engine import QuotingEngine

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/aesmd/aesm.socket"
DEFAULT_SOCKET_MODE = 0o666  # any local user may connect, like AESM's 0777 (x is meaningless on sockets)
SUN_PATH_MAX = 107

# What a responder returns for one request payload: reply bytes now, a future of them, or None (close).
Reply = bytes | asyncio.Future[bytes] | None
Responder = Callable[[bytes], Reply]
_LEN = struct.Struct("<I")


class SocketInUse(QuoteHelperError):
    """Another live server owns the socket path; we refuse to hijack it."""


# --- responders ---------------------------------------------------------------------------------------

class AesmResponder:
    """payload -> reply: inline answers on the event loop, engine calls through the worker pool.

    `inline_engine` (optional) is an engine opened in this process for the calls that are cheap once the
    attestation key exists (InitQuoteEx, GetQuoteSizeEx: in-memory lookups in the software platform), so
    a quote costs one process hop instead of three. Its successful answers are memoised per request
    payload: the software QE keeps its attestation key in memory for the life of the process, so these
    answers cannot change while this process runs (errors are never memoised). Leave it None for engines
    whose calls may block or change (DCAP loads enclaves, re-certifies keys): all calls go to the workers.
    """

    MEMO_LIMIT = 64  # distinct payloads differ only in key id and timeout fields; bounded anyway

    def __init__(self, dispatcher: Dispatcher, pool: WorkerPool, inline_engine: QuotingEngine | None = None) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.inline_engine = inline_engine
        self.busy_replies = 0
        self._memo: dict[tuple[int, bytes], bytes] = {}

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
        if self.inline_engine is not None and out.tag != GET_QUOTE_EX:
            return self._inline_call(out, self.inline_engine)
        try:
            fut = self.pool.submit_nowait(out)
        except PoolBusy:
            self.busy_replies += 1
            return encode_frame(failure_response(out.tag, AesmError.BUSY))
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def _finish(f: asyncio.Future[bytes]) -> None:
            if not done.done():
                done.set_result(encode_frame(f.result()))

        fut.add_done_callback(_finish)
        return done


    def _inline_call(self, call: EngineCall, engine: QuotingEngine) -> bytes:
        key = (call.tag, call.payload)
        frame = self._memo.get(key)
        if frame is None:
            res = run_engine_call(engine, call)
            frame = encode_frame(res.SerializeToString())
            (_, sub), = res.ListFields()
            if sub.errorCode == AesmError.SUCCESS and len(self._memo) < self.MEMO_LIMIT:
                self._memo[key] = frame
        return frame


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
        self.transport.pause_reading()  # type: ignore[union-attr]
        self._cancel_deadline()
        payload = bytes(self.buf[4: 4 + self.need])
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
        self._cancel_deadline()
        self.transport = None
        self.server.connections.discard(self)
        if not self.server.connections and self.server.idle is not None:
            self.server.idle.set()


# --- socket lifecycle ---------------------------------------------------------------------------------

def _probe_live(path: str) -> bool:
    """True if something accepts connections on `path` (ours, or a real aesmd)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        if e.errno == errno.EAGAIN:  # backlog full: definitely alive
            return True
        raise
    finally:
        s.close()


def bind_atomically(path: str, mode: int, backlog: int) -> tuple[socket.socket, int, int]:
    """Binds a listening socket at `path`; returns (socket, lock fd, socket inode).

    Bound under a temporary name, chmod-ed, then renamed over `path`, so clients never see a socket
    file with the wrong mode or a moment with no socket at all when a stale one is replaced.
    """
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise QuoteHelperError(f"socket path is {len(path)} bytes, the limit is {SUN_PATH_MAX}: {path}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise SocketInUse(f"another quotehelper service holds {path}.lock") from None
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise QuoteHelperError(f"{path} exists and is not a socket; refusing to replace it")
            if _probe_live(path):
                raise SocketInUse(f"a live server is listening on {path} (aesmd?); refusing to take it over")
        tmp = f"{path}.{os.getpid()}~"
        if len(os.fsencode(tmp)) > SUN_PATH_MAX:
            tmp = os.path.join(parent, f".q{os.getpid()}~")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(tmp)
            os.chmod(tmp, mode)
            sock.listen(backlog)
            os.replace(tmp, path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        sock.setblocking(False)
        return sock, lock_fd, os.stat(path).st_ino
    except BaseException:
        os.close(lock_fd)
        raise


class AesmServer:
    """Serves `responder` on a Unix socket until stopped."""

    def __init__(self, socket_path: str | Path, responder: Responder, *, mode: int = DEFAULT_SOCKET_MODE,
                 read_timeout: float = 5.0, write_timeout: float = 15.0, max_frame: int = MAX_FRAME,
                 max_connections: int = 4096, backlog: int = 1024, drain_timeout: float = 20.0) -> None:
        self.socket_path = str(socket_path)
        self.responder = responder
        self.mode = mode
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.backlog = backlog
        self.drain_timeout = drain_timeout
        self.connections: set[_Connection] = set()
        self.idle: asyncio.Event | None = None
        self.stats: dict[str, int] = {k: 0 for k in (
            "requests", "oversized", "truncated", "closed_unanswered", "read_timeouts", "write_timeouts",
            "rejected")}
        self._server: asyncio.AbstractServer | None = None
        self._lock_fd = -1
        self._ino = 0
        self._stopping: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle = asyncio.Event()
        self._stopping = asyncio.Event()
        sock, self._lock_fd, self._ino = bind_atomically(self.socket_path, self.mode, self.backlog)
        self._server = await self.loop.create_unix_server(lambda: _Connection(self), sock=sock,
                                                          backlog=self.backlog)
        log.info("serving AESM protocol on %s (mode %o)", self.socket_path, self.mode)

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, remove our socket file."""
        if self._server is None:
            return
        self._server.close()  # no new connections from here on
        self._unlink_socket()
        if self.connections:
            self.idle.clear()  # type: ignore[union-attr]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), self.drain_timeout)  # type: ignore[union-attr]
        for c in list(self.connections):  # whatever outlived the drain window
            if c.transport is not None:
                c.transport.abort()
        await self._server.wait_closed()
        self._server = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _unlink_socket(self) -> None:
        # Only remove the path if it is still our socket (a successor may have replaced it).
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.socket_path).st_ino == self._ino:
                os.unlink(self.socket_path)


async def run_service(server: AesmServer, pool: WorkerPool | None = None,
                      ready: Callable[[], None] | None = None) -> None:
    """Starts workers and server, runs until SIGTERM/SIGINT, then drains and stops both."""
    loop = asyncio.get_running_loop()
    if pool is not None:
        await pool.start()
    try:
        await server.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        if ready is not None:
            ready()
        await server.wait_stopped()
        log.info("stopping: draining %d connection(s)", len(server.connections))
        await server.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if pool is not None:
            await pool.close()
