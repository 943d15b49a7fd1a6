"""The quote service's transport: AESM framing over a Unix stream socket, non-blocking sockets driven by
the asyncio loop (no asyncio transports: see AesmServer), one request per connection (AESM closes
after replying).

Robustness beyond AESM (§1.3, §8.4):
- a frame above MAX_FRAME, an unparseable payload, or a request AESM would not answer closes the
  connection unanswered; a client that stalls is dropped at its read deadline, one that never reads its
  reply at the write deadline (both checked every `tick`, at most 0.1 s late). None of this touches
  other connections.
- `ServiceSocket` (sockets.py): bound under a temporary name, chmod-ed, renamed over the final path
  once the workers are up; a flock on `<path>.lock` plus a connect probe make sure a live server is
  never replaced (with `take_over`, only another quotehelper service is, never aesmd), while a stale
  socket file is.
- `AesmServer.stop()`: stop accepting, answer what the kernel already queued, let in-flight requests
  finish (bounded), abort the rest.

`AesmServer` serves on an already listening socket, so several worker processes can share one
(workers.py); responders are plain callables, so the benchmark's echo baseline runs on this very
transport.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.codes import AesmError, aesm_name
from quotehelper.aesm.framing import MAX_FRAME, encode_frame
from quotehelper.aesm.handlers import (
    GET_QUOTE_EX,
    GET_QUOTE_SIZE_EX,
    INIT_QUOTE_EX,
    BadFrame,
    Dispatcher,
    EngineCall,
    engine_call_error,
    parse_request,
    run_engine_call,
)
from quotehelper.aesm.metrics import CALL_LABELS, LEGACY, UNPARSEABLE, LatencyBuckets
from quotehelper.aesm.sockets import (  # noqa: F401 - re-exported: the server's public API
    DEFAULT_SOCKET,
    DEFAULT_SOCKET_MODE,
    ServiceSocket,
    SocketInUse,
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

    Replies that are a function of the request bytes alone are kept in a small table keyed by those
    bytes, so a repeated request costs one dict lookup (no protobuf parse): every inline answer (the
    dispatcher's state is fixed for its lifetime), and, when `memo` is set, successful
    InitQuoteEx/GetQuoteSizeEx answers - right for engines that keep their attestation key for the life
    of the process (the software QE), wrong for ones that may re-certify it (leave `memo` off for DCAP).
    """

    MEMO_LIMIT = 64  # entries; payloads differ only in key id and timeout. Oldest evicted first.
    MEMO_MAX_PAYLOAD = 2048  # requests above this (e.g. a long SelectAttKeyID list) are not kept
    BATCH = 32  # engine calls per event-loop iteration (32 x ~36 us: cheap calls wait at most ~1.2 ms)

    def __init__(self, dispatcher: Dispatcher, engine: QuotingEngine, *, queue_limit: int = 64,
                 memo: bool = False) -> None:
        self.dispatcher = dispatcher
        self.engine = engine
        self.queue_limit = queue_limit
        self.memo = memo
        self.busy_replies = 0
        # (call, code name) -> requests since the last metrics flush; plain dict so counting costs ~0.1 us
        self.counts: dict[tuple[str, str], int] = {}
        self.quote_latency = LatencyBuckets()
        self._peak_queue = 0
        self._replies: dict[bytes, tuple[bytes, tuple[str, str]]] = {}  # payload -> (frame, counts key)
        self._queue: collections.deque[tuple[EngineCall, asyncio.Future[bytes], bytes]] = collections.deque()
        self._scheduled = False

    def _remember(self, payload: bytes, frame: bytes, key: tuple[str, str]) -> None:
        if len(payload) > self.MEMO_MAX_PAYLOAD:
            return
        if len(self._replies) >= self.MEMO_LIMIT:
            del self._replies[next(iter(self._replies))]
        self._replies[payload] = (frame, key)

    def _count(self, key: tuple[str, str]) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def __call__(self, payload: bytes) -> Reply:
        hit = self._replies.get(payload)
        if hit is not None:
            counts = self.counts
            key = hit[1]
            counts[key] = counts.get(key, 0) + 1
            return hit[0]
        try:
            req = parse_request(payload)
        except BadFrame:
            self._count(UNPARSEABLE)
            return None
        out = self.dispatcher.inline(req)
        if out is None:
            self._count(UNPARSEABLE)
            return None
        if not isinstance(out, EngineCall):
            key = counts_key(out)
            self._count(key)
            frame = encode_frame(out.SerializeToString())
            self._remember(payload, frame, key)
            return frame
        depth = len(self._queue)
        if depth >= self.queue_limit:
            self.busy_replies += 1
            self._count((_ENGINE_CALL_LABELS[out.tag], "AESM_BUSY"))
            return encode_frame(failure_response(out, AesmError.BUSY))
        if depth >= self._peak_queue:
            self._peak_queue = depth + 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._queue.append((out, fut, payload))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return fut

    @property
    def queued(self) -> int:
        return len(self._queue)

    def take_peak_queue(self) -> int:
        """The deepest the engine queue got since the previous call."""
        peak, self._peak_queue = self._peak_queue, len(self._queue)
        return peak

    def _drain(self) -> None:
        try:
            for _ in range(min(self.BATCH, len(self._queue))):
                call, fut, payload = self._queue.popleft()
                if fut.done():  # the client went away meanwhile
                    continue
                try:
                    fut.set_result(self._execute(call, payload))
                except Exception:  # never leave a client waiting on a future nobody will complete
                    log.exception("engine call %d failed", call.tag)
                    self._count((_ENGINE_CALL_LABELS[call.tag], "AESM_UNEXPECTED_ERROR"))
                    fut.set_result(encode_frame(failure_response(call, AesmError.UNEXPECTED_ERROR)))
        finally:
            if self._queue:
                asyncio.get_running_loop().call_soon(self._drain)  # let I/O in before the next batch
            else:
                self._scheduled = False

    def _execute(self, call: EngineCall, payload: bytes) -> bytes:
        res = run_engine_call(self.engine, call, self.quote_latency.observe)
        frame = encode_frame(res.SerializeToString())
        code = getattr(res, _ENGINE_RES_FIELD[call.tag]).errorCode
        key = _engine_key(call.tag, code)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if self.memo and call.tag != GET_QUOTE_EX and code == AesmError.SUCCESS and payload not in self._replies:
            self._remember(payload, frame, key)
        return frame


_ENGINE_CALL_LABELS = {INIT_QUOTE_EX: "InitQuoteEx", GET_QUOTE_SIZE_EX: "GetQuoteSizeEx", GET_QUOTE_EX: "GetQuoteEx"}
_ENGINE_RES_FIELD = {INIT_QUOTE_EX: "initQuoteExRes", GET_QUOTE_SIZE_EX: "getQuoteSizeExRes",
                     GET_QUOTE_EX: "getQuoteExRes"}


@functools.lru_cache(maxsize=256)
def _engine_key(tag: int, code: int) -> tuple[str, str]:
    # Cached: naming the code through the enum costs ~1 us, a cache hit ~0.1.
    return _ENGINE_CALL_LABELS[tag], aesm_name(code)


def counts_key(res: pb.Response) -> tuple[str, str]:
    """(call label, result code name) of a Response: the labels of the requests counter."""
    (field, sub), = res.ListFields()
    return CALL_LABELS.get(field.name, LEGACY), aesm_name(sub.errorCode)


def failure_response(call: EngineCall, code: int) -> bytes:
    """The serialized error Response for an engine call, with the fields AESM always sends."""
    return engine_call_error(call, code).SerializeToString()


def echo_responder(payload: bytes) -> Reply:
    """The transport floor: the same framing, no protocol work."""
    return encode_frame(payload)


# --- connections ---------------------------------------------------------------------------------------

_MSG_DONTWAIT = socket.MSG_DONTWAIT
_RECV_SIZE = 65536


class _Conn:
    """A connection that could not be answered on the spot: waiting for (the rest of) its request, for an
    engine reply, or for the client to read a large reply."""

    __slots__ = ("sock", "fd", "buf", "need", "deadline", "out", "watch", "answered", "trailing")

    def __init__(self, sock: _socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.need = -1  # payload length once the 4-byte header is in
        self.deadline = deadline
        self.out = b""  # unsent part of the reply
        self.watch = 0  # 0: none, 1: reader registered, 2: writer registered
        self.answered = False
        self.trailing = False  # bytes after the frame arrived: drain them before closing


class AesmServer:
    """Serves `responder` on an already listening socket (several processes may share it).

    Raw non-blocking sockets on the asyncio loop (measured: asyncio transports + protocols cost ~80 us of
    CPU per connection here, more than the quote's protocol work). The common case costs accept, recv,
    send, close: a client that has sent its request by the time it is accepted is answered in the accept
    callback without ever being registered with the event loop. Only connections that must wait (partial
    request, queued engine call, client not reading) are tracked; their read/write deadlines are checked
    by one sweep every `tick` seconds instead of one timer per connection.
    """

    def __init__(self, sock: socket.socket, responder: Responder, *, read_timeout: float = 5.0,
                 write_timeout: float = 15.0, max_frame: int = MAX_FRAME, max_connections: int = 1024,
                 max_buffered: int = 32 << 20,
                 drain_timeout: float = 20.0, backlog: int = 1024) -> None:
        self.sock = sock
        self.backlog = backlog
        self.responder = responder
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.tick = min(0.1, read_timeout / 4, write_timeout / 4)
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.max_buffered = max_buffered  # bytes of unfinished requests held across all connections
        self.buffered = 0
        self.drain_timeout = drain_timeout
        self.connections: dict[int, _Conn] = {}  # fd -> waiting connection
        self.idle: asyncio.Event | None = None
        self.stats: dict[str, int] = {k: 0 for k in (
            "requests", "oversized", "truncated", "closed_unanswered", "read_timeouts", "write_timeouts",
            "rejected", "backlog_drained", "over_budget", "accept_errors")}
        self._listen: socket.socket | None = None
        self._stopping: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._accept_batch = 32  # connections taken per readiness callback, so queued work interleaves
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle = asyncio.Event()
        self._stopping = asyncio.Event()
        # Our own descriptor: the caller keeps (and closes) `sock`.
        self._listen = socket.socket(fileno=os.dup(self.sock.fileno()))
        self._listen.setblocking(False)
        self._listen.listen(self.backlog)
        self.loop.add_reader(self._listen.fileno(), self._accept_ready)

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()

    # --- accepting -----------------------------------------------------------------------------------

    def _accept_ready(self) -> None:
        self._accept_some(self._accept_batch, draining=False)

    def _accept_some(self, limit: int, draining: bool) -> int:
        lsock = self._listen
        assert lsock is not None
        taken = 0
        while taken < limit:
            try:
                fd, _ = lsock._accept()  # type: ignore[attr-defined]  # fd only: no Python socket wrapper yet
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            except OSError as e:  # EMFILE/ENFILE/ENOBUFS: back off instead of spinning on a readable listener
                self.stats["accept_errors"] += 1
                log.warning("accept failed: %s; pausing accepts for 0.1 s", e)
                if not draining:
                    self.loop.remove_reader(lsock.fileno())
                    self.loop.call_later(0.1, self._resume_accepting)
                break
            taken += 1
            if draining:
                self.stats["backlog_drained"] += 1
            # family/type/proto given explicitly: no getsockname/getsockopt syscalls; the fd stays
            # blocking and every recv/send passes MSG_DONTWAIT (saves the fcntl).
            self._new_connection(_socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd))
        return taken

    def _resume_accepting(self) -> None:
        if self._listen is not None and not self._stopping.is_set():  # type: ignore[union-attr]
            self.loop.add_reader(self._listen.fileno(), self._accept_ready)

    def _new_connection(self, sock: _socket.socket) -> None:
        if len(self.connections) >= self.max_connections:
            self.stats["rejected"] += 1
            sock.close()
            return
        try:
            data = sock.recv(_RECV_SIZE, _MSG_DONTWAIT)
        except BlockingIOError:  # request not here yet: wait for it
            conn = _Conn(sock, self.loop.time() + self.read_timeout)
            self._track(conn)
            self._watch(conn, 1)
            return
        except OSError:
            sock.close()
            return
        # Fast path: the whole request in the first read (the usual case).
        if len(data) >= 4:
            (n,) = _LEN.unpack_from(data)
            if n <= self.max_frame and len(data) >= 4 + n:
                self.stats["requests"] += 1
                trailing = len(data) > 4 + n or len(data) == _RECV_SIZE
                reply = self._respond(data[4: 4 + n])
                if reply is None or isinstance(reply, bytes):
                    self._send_and_close(sock, reply, trailing)
                    return
                conn = _Conn(sock, self.loop.time() + self.read_timeout)
                conn.answered = True
                conn.trailing = trailing
                self._track(conn)
                reply.add_done_callback(lambda fut: self._reply_ready(conn, fut))
                return
        conn = _Conn(sock, self.loop.time() + self.read_timeout)
        self._track(conn)
        if self._feed(conn, data):
            self._watch(conn, 1)

    def _track(self, conn: _Conn) -> None:
        self.connections[conn.fd] = conn
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.tick, self._sweep)

    # --- reading ---------------------------------------------------------------------------------------

    def _watch(self, conn: _Conn, what: int) -> None:
        if conn.watch == what:
            return
        self._unwatch(conn)
        if what == 1:
            self.loop.add_reader(conn.fd, self._readable, conn)
        elif what == 2:
            self.loop.add_writer(conn.fd, self._writable, conn)
        conn.watch = what

    def _unwatch(self, conn: _Conn) -> None:
        if conn.watch == 1:
            self.loop.remove_reader(conn.fd)
        elif conn.watch == 2:
            self.loop.remove_writer(conn.fd)
        conn.watch = 0

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_SIZE, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        self._feed(conn, data)  # stops watching once the frame is complete (one request per connection)

    def _feed(self, conn: _Conn, data: bytes) -> bool:
        """Adds request bytes; returns True while more are needed (False once answered or dropped)."""
        if not data:  # EOF before a whole frame (or nothing at all): close unanswered, as AESM does
            self.stats["truncated"] += 1
            self._drop(conn)
            return False
        if self.buffered + len(data) > self.max_buffered:
            # Many half-sent frames at once: bound this process's memory; drop the one pushing it over.
            self.stats["over_budget"] += 1
            self._drop(conn)
            return False
        self.buffered += len(data)
        conn.buf += data
        if conn.need < 0:
            if len(conn.buf) < 4:
                return True
            (conn.need,) = _LEN.unpack_from(conn.buf)
            if conn.need > self.max_frame:
                self.stats["oversized"] += 1
                self._drop(conn)
                return False
        if len(conn.buf) - 4 < conn.need:
            return True
        conn.answered = True
        conn.trailing = len(conn.buf) > 4 + conn.need
        payload = bytes(conn.buf[4: 4 + conn.need])
        self.buffered -= len(conn.buf)
        conn.buf = bytearray()
        self._unwatch(conn)
        self.stats["requests"] += 1
        reply = self._respond(payload)
        if isinstance(reply, asyncio.Future):
            reply.add_done_callback(lambda fut: self._reply_ready(conn, fut))
        else:
            self._reply(conn, reply)
        return False

    def _respond(self, payload: bytes) -> Reply:
        try:
            return self.responder(payload)
        except Exception:
            log.exception("responder failed")
            return None

    # --- replying --------------------------------------------------------------------------------------

    def _send_and_close(self, sock: _socket.socket, reply: bytes | None, trailing: bool) -> None:
        """The fast path's reply: nobody tracks this socket; it is closed here whatever happens."""
        if reply is None:
            self.stats["closed_unanswered"] += 1
            sock.close()
            return
        try:
            sent = sock.send(reply, _MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client went away
            sock.close()
            return
        if sent < len(reply):  # a big reply the client has not read yet: track it with the write deadline
            conn = _Conn(sock, self.loop.time() + self.write_timeout)
            conn.answered = True
            conn.trailing = trailing
            conn.out = reply[sent:]
            self._track(conn)
            self._watch(conn, 2)
            return
        if trailing:
            _drain_input(sock)
        sock.close()

    def _reply_ready(self, conn: _Conn, fut: asyncio.Future[bytes]) -> None:
        if self.connections.get(conn.fd) is not conn:  # dropped meanwhile (deadline, stop)
            return
        self._reply(conn, None if fut.cancelled() or fut.exception() else fut.result())

    def _reply(self, conn: _Conn, reply: bytes | None) -> None:
        if reply is None:
            self.stats["closed_unanswered"] += 1
            self._drop(conn)
            return
        conn.out = reply
        conn.deadline = self.loop.time() + self.write_timeout
        self._writable(conn)

    def _writable(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        if sent < len(conn.out):
            conn.out = conn.out[sent:]
            self._watch(conn, 2)
            return
        if conn.trailing:
            _drain_input(conn.sock)
        self._drop(conn)  # reply out: the server side of "one request per connection"

    # --- closing ----------------------------------------------------------------------------------------

    def _drop(self, conn: _Conn) -> None:
        self._unwatch(conn)
        if self.connections.get(conn.fd) is conn:
            del self.connections[conn.fd]
        self.buffered -= len(conn.buf)
        conn.buf = bytearray()
        conn.sock.close()
        if not self.connections and self.idle is not None:
            self.idle.set()

    def _sweep(self) -> None:
        """Read and write deadlines of every waiting connection, once per tick."""
        self._sweeper = None
        now = self.loop.time()
        for conn in [c for c in self.connections.values() if c.deadline <= now]:
            if conn.out:
                self.stats["write_timeouts"] += 1
            elif not conn.answered:
                self.stats["read_timeouts"] += 1
            else:  # waiting for the engine: its reply is on the way (the queue is bounded)
                continue
            self._drop(conn)
        if self.connections:
            self._sweeper = self.loop.call_later(self.tick, self._sweep)

    async def stop(self) -> None:
        """Stop accepting, serve what is already in the backlog, drain open connections (bounded)."""
        if self._listen is None:
            return
        self.loop.remove_reader(self._listen.fileno())
        # Connections the kernel already queued for us would be reset when the listener closes; with the
        # path unlinked by the owner no new ones can arrive, so take them in and answer them.
        while self._accept_some(1024, draining=True):
            await asyncio.sleep(0)  # let the engine queue and writes progress between batches
        self._listen.close()
        self._listen = None
        if self.connections:
            self.idle.clear()  # type: ignore[union-attr]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), self.drain_timeout)  # type: ignore[union-attr]
        for c in list(self.connections.values()):  # whatever outlived the drain window
            self._drop(c)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def _drain_input(sock: _socket.socket) -> None:
    """Reads what the client sent after its request, so closing does not turn the reply's EOF into a
    connection reset (a Unix socket closed with unread input resets its peer)."""
    for _ in range(16):
        try:
            if not sock.recv(_RECV_SIZE, _MSG_DONTWAIT):
                return
        except OSError:
            return
