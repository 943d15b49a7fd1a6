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
- Tenants (tenant.py): each connection counts against its tenant's share of the worker's connections.

`AesmServer` serves on an already listening socket, so several worker processes can share one
(workers.py); responders are plain callables `(payload, tenant) -> reply` (the AESM one is in
responder.py), so the benchmark's echo baseline runs on this very transport.
"""

from __future__ import annotations

import _socket
import asyncio
import collections
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

from quotehelper.aesm.anticipate import Anticipation
from quotehelper.aesm.framing import encode_frame
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.responder import AesmResponder, Reply  # noqa: F401 - AesmResponder re-exported
from quotehelper.aesm.sockets import (  # noqa: F401 - re-exported: the server's public API
    DEFAULT_SOCKET,
    DEFAULT_SOCKET_MODE,
    ServiceSocket,
    SocketInUse,
)
from quotehelper.aesm.tenant import Tenant, TenantMix, TenantRegistry

log = logging.getLogger(__name__)


Responder = Callable[[bytes, Tenant], Reply]  # payload, who asks -> reply
_LEN = struct.Struct("<I")
REFUSED_LOG_INTERVAL = 10.0  # seconds between log lines about one tenant's refused connections


# --- responders ---------------------------------------------------------------------------------------

def echo_responder(payload: bytes, tenant: Tenant | None = None) -> Reply:
    """The transport floor: the same framing, no protocol work."""
    return encode_frame(payload)


# --- connections ---------------------------------------------------------------------------------------

_MSG_DONTWAIT = socket.MSG_DONTWAIT
_INLINE = 128  # accepted connections of a single tenant answered in the accepting callback itself
_PARK_MAX = 256  # refused connections kept open until a hold ends, per worker (file descriptors)
_RECV_SIZE = 65536


class _Conn:
    """A connection that could not be answered on the spot: waiting for (the rest of) its request, for an
    engine reply, or for the client to read a large reply."""

    __slots__ = ("sock", "fd", "buf", "need", "deadline", "out", "watch", "answered", "trailing", "tenant", "fut")

    def __init__(self, sock: _socket.socket, deadline: float, tenant: Tenant) -> None:
        self.sock = sock
        self.tenant = tenant
        self.fut: asyncio.Future[bytes] | None = None  # the engine reply it waits for, if any
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

    Tenants (tenant.py): every accepted connection is attributed to its peer's tenant (SO_PEERCRED, ~1.5 us
    cached). A tenant holding `options.tenant_connections` connections has further ones closed at once
    (by default half the worker's cap, so no tenant fills a worker and others always find room); when the
    worker's own cap is reached, the tenant holding the most gives up one of its connections to a tenant
    holding fewer. With `anticipation` (anticipate.py), after a reply to a light tenant the heavy tenants'
    connections wait in their queues until the hold ends, and their refused ones are closed only then.
    """

    def __init__(self, sock: socket.socket, responder: Responder, options: ServeOptions | None = None, *,
                 tenants: TenantRegistry | None = None, backlog: int = 1024,
                 anticipation: Anticipation | None = None) -> None:
        o = self.options = options or ServeOptions()
        self.sock = sock
        self.backlog = backlog
        self.responder = responder
        self.tenants = tenants or TenantRegistry(o)
        self.read_timeout = o.read_timeout
        self.write_timeout = o.write_timeout
        self.tick = min(0.1, o.read_timeout / 4, o.write_timeout / 4)
        self.max_frame = o.max_frame
        self.max_connections = o.max_connections
        self.tenant_connections = o.tenant_connections
        self.max_buffered = o.max_buffered  # bytes of unfinished requests held across all connections
        self.buffered = 0
        self.drain_timeout = o.drain_timeout
        self.connections: dict[int, _Conn] = {}  # fd -> waiting connection
        self.idle: asyncio.Event | None = None
        self.stats: dict[str, int] = {k: 0 for k in (
            "requests", "oversized", "truncated", "closed_unanswered", "read_timeouts", "write_timeouts",
            "rejected", "backlog_drained", "over_budget", "accept_errors", "tenant_cap", "evicted")}
        self._listen: socket.socket | None = None
        self._stopping: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        # The kernel's backlog is one FIFO for every tenant: behind a flood's hundreds of connections a
        # polite request would wait for all of them. So a readiness callback takes up to `_accept_batch`
        # connections out of it (accept + SO_PEERCRED, a few us each) into per-tenant queues, then
        # answers at most `_serve_batch` of them, one tenant after the other (round robin), and lets the
        # loop run (engine calls, replies, newly arrived connections) before the next ones. A tenant's
        # first connection in a batch, with none of its others waiting, is answered as it is accepted.
        self._accept_batch = 1024
        self._serve_batch = 32
        self._waiting: dict[Tenant, collections.deque[_socket.socket]] = {}  # accepted, not read yet
        self._ring: collections.deque[Tenant] = collections.deque()  # tenants with waiting connections
        self._nwaiting = 0
        self._serving = False  # a _serve_waiting call is scheduled
        # While tenants mix, no batch is answered in the accepting callback: connections wait in their
        # tenants' queues, 32 answered per loop turn, so a flood's connections wait in this process (where
        # other tenants' are answered first) rather than in the kernel's FIFO backlog.
        self._mix = TenantMix()  # accepted connections, denied tenants aside
        # While a light tenant is answered, heavy ones wait (anticipate.py; shared by the workers).
        self.anticipation = anticipation  # kept for the metrics after stop() clears _ant
        self._ant = anticipation
        self._resume: asyncio.TimerHandle | None = None  # serves the waiting ones when the hold ends
        self._parked: list[_socket.socket] = []  # refused during a hold, closed when it ends (_refuse)
        self._unpark: asyncio.TimerHandle | None = None
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
        batch: list[tuple[_socket.socket, Tenant]] = []
        early: set[Tenant] = set()
        ant = self._ant
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
            # family/type/proto given explicitly: no getsockname/getsockopt syscalls; the fd stays
            # blocking and every recv/send passes MSG_DONTWAIT (saves the fcntl).
            sock = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
            if draining:
                self.stats["backlog_drained"] += 1
                self._new_connection(sock)
            else:
                try:
                    tenant = self.tenants.identify(sock)
                except Exception:  # never lose the rest of the batch to one peer
                    log.exception("cannot identify a connection's tenant; closed it")
                    sock.close()
                    continue
                if tenant is not self._mix.last and not tenant.denied:  # denied ones are no one's competition
                    self._mix.seen(tenant, self.loop.time())
                if ant is not None and not tenant.denied and self._mix.active(now := self.loop.time()):
                    ant.seen(tenant, now)
                    if ant.waits(tenant, now):  # heavy, and a light tenant is being answered: queued
                        batch.append((sock, tenant))
                        continue
                # A tenant's first connection in this batch, with none of its others waiting, is answered
                # at once: it would be among the first of the round robin anyway, and waiting for the rest
                # of a flood's batch to be accepted cost a polite request milliseconds. At most
                # _serve_batch of them per callback, counted against its serve turn: many identities must
                # not turn one callback into hundreds of answers with nothing else running.
                if tenant.waiting == 0 and tenant not in early and len(early) < self._serve_batch:
                    early.add(tenant)
                    self._new_connection(sock, tenant)
                else:
                    batch.append((sock, tenant))
        if batch:
            first = batch[0][1]
            if not self._ring and len(batch) <= _INLINE and all(t is first for _, t in batch) \
                    and not self._mix.active(self.loop.time()):
                for sock, t in batch:  # one tenant and nobody waiting: nothing to order (the common case)
                    self._new_connection(sock, t)
            else:
                for sock, t in batch:
                    self._queue_connection(sock, t)
                self._serve_waiting(self._serve_batch - len(early))  # the early answers were this turn's too
        return taken

    def _queue_connection(self, sock: _socket.socket, tenant: Tenant) -> None:
        """An accepted connection waits in its tenant's queue (counted against the tenant's share and the
        worker's cap like a held one)."""
        q = self._waiting.get(tenant)
        if len(self.connections) + self._nwaiting >= self.max_connections and not self._make_room(tenant):
            self._refuse(sock, tenant, "rejected")
            return
        if tenant.conns + tenant.waiting >= self.tenant_connections:
            self._refuse(sock, tenant, "tenant_cap")
            return
        if q is None:
            q = self._waiting[tenant] = collections.deque()
        if not q:
            self._ring.append(tenant)
        q.append(sock)
        self._nwaiting += 1
        tenant.waiting += 1

    def _serve_waiting(self, budget: int | None = None) -> None:
        """Answers up to `budget` (default `_serve_batch`) waiting connections, one per tenant in turn;
        schedules itself again while some wait."""
        ring, waiting = self._ring, self._waiting
        ant = self._ant
        until = now = 0.0
        if ant is not None and ring:
            now = self.loop.time()
            until = ant.until(now)
        n = self._serve_batch if budget is None else budget
        passed = 0  # heavy tenants passed over in a row during a hold
        while n > 0 and ring:
            tenant = ring.popleft()
            if until and ant.waits(tenant, now):  # type: ignore[union-attr]
                ring.append(tenant)
                passed += 1
                if passed >= len(ring):  # only heavy ones wait: their turn comes when the hold ends
                    if self._resume is None:
                        self._resume = self.loop.call_at(until, self._hold_over)
                    return
                continue
            passed = 0
            n -= 1
            q = waiting[tenant]
            sock = q.popleft()
            self._nwaiting -= 1
            tenant.waiting -= 1
            if q:
                ring.append(tenant)
            else:
                del waiting[tenant]
            self._new_connection(sock, tenant)
        if ring and not self._serving:  # one chain of scheduled calls, however many callers
            self._serving = True
            self.loop.call_soon(self._serve_scheduled)

    def _serve_scheduled(self) -> None:
        self._serving = False
        self._serve_waiting()

    def _hold_over(self) -> None:
        self._resume = None
        self._serve_waiting()

    def _resume_accepting(self) -> None:
        if self._listen is not None and not self._stopping.is_set():  # type: ignore[union-attr]
            self.loop.add_reader(self._listen.fileno(), self._accept_ready)

    def _new_connection(self, sock: _socket.socket, tenant: Tenant | None = None) -> Tenant:
        if tenant is None:
            tenant = self.tenants.identify(sock)
        # Waiting connections hold their places (as in _queue_connection): an early answer while others
        # wait must not push the worker past max_connections, nor take a queued connection's place.
        if len(self.connections) + self._nwaiting >= self.max_connections and not self._make_room(tenant):
            self._refuse(sock, tenant, "rejected")
            return tenant
        if tenant.conns >= self.tenant_connections:  # this tenant's share of the worker is taken: its loss
            self._refuse(sock, tenant, "tenant_cap")
            return tenant
        try:
            data = sock.recv(_RECV_SIZE, _MSG_DONTWAIT)
        except BlockingIOError:  # request not here yet: wait for it
            conn = _Conn(sock, self.loop.time() + self.read_timeout, tenant)
            self._track(conn)
            self._watch(conn, 1)
            return tenant
        except OSError:
            sock.close()
            return tenant
        # Fast path: the whole request in the first read (the usual case).
        if len(data) >= 4:
            (n,) = _LEN.unpack_from(data)
            if n <= self.max_frame and len(data) >= 4 + n:
                self.stats["requests"] += 1
                trailing = len(data) > 4 + n or len(data) == _RECV_SIZE
                reply = self._respond(data[4: 4 + n], tenant)
                if reply is None or isinstance(reply, bytes):
                    self._send_and_close(sock, reply, trailing, tenant)
                    return tenant
                conn = _Conn(sock, self.loop.time() + self.read_timeout, tenant)
                conn.answered = True
                conn.trailing = trailing
                conn.fut = reply
                self._track(conn)
                reply.add_done_callback(lambda fut: self._reply_ready(conn, fut))
                return tenant
        conn = _Conn(sock, self.loop.time() + self.read_timeout, tenant)
        self._track(conn)
        if self._feed(conn, data):
            self._watch(conn, 1)
        return tenant

    def _refuse(self, sock: _socket.socket, tenant: Tenant, reason: str) -> None:
        self.stats[reason] += 1
        tenant.dropped[reason] = tenant.dropped.get(reason, 0) + 1
        ant = self._ant
        if ant is not None and len(self._parked) < _PARK_MAX and (until := ant.until(self.loop.time())) \
                and not ant.light(tenant):
            # During a hold, a heavy tenant's refused connection is closed when the hold ends: closed now,
            # its client would reconnect at once, and that churn is the CPU the hold is freeing
            self._parked.append(sock)
            if self._unpark is None:
                self._unpark = self.loop.call_at(until, self._close_parked)
        else:
            sock.close()
        now = self.loop.time()
        if now - tenant.log_at >= REFUSED_LOG_INTERVAL or not tenant.log_at:
            tenant.log_at = now
            log.warning("closed a connection of %s unanswered (%s): it holds %d of this worker's %d "
                        "(%d closed so far)", tenant.describe(), reason, tenant.conns, len(self.connections),
                        tenant.dropped[reason])

    def _close_parked(self) -> None:
        self._unpark = None
        parked, self._parked = self._parked, []
        for sock in parked:
            sock.close()

    def _make_room(self, tenant: Tenant) -> bool:
        """The worker is full: the tenant holding the most connections, if it holds more than `tenant`
        would, loses one that is not being answered: a waiting one first, else one whose queued engine
        call is cancelled."""
        def held(t: Tenant) -> int:
            return t.conns + t.waiting

        big = max(self.tenants.all(), key=held)
        if held(big) <= held(tenant) + 1:
            return False
        q = self._waiting.get(big)
        if q:
            q.pop().close()  # the newest: the others keep their place
            self._nwaiting -= 1
            big.waiting -= 1
            if not q:
                del self._waiting[big]
                self._ring.remove(big)
            self.stats["evicted"] += 1
            big.dropped["evicted"] = big.dropped.get("evicted", 0) + 1
            return True
        victim = next((c for c in self.connections.values() if c.tenant is big and not c.out), None)
        if victim is None:
            return False
        if victim.fut is not None:
            victim.fut.cancel()
        self._count_drop(victim, "evicted")
        self._drop(victim)
        return True

    def _count_drop(self, conn: _Conn, reason: str) -> None:
        self.stats[reason] += 1
        d = conn.tenant.dropped
        d[reason] = d.get(reason, 0) + 1

    def _track(self, conn: _Conn) -> None:
        self.connections[conn.fd] = conn
        conn.tenant.conns += 1
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
            self._count_drop(conn, "truncated")
            self._drop(conn)
            return False
        if self.buffered + len(data) > self.max_buffered:
            # Many half-sent frames at once: bound this process's memory; drop the one pushing it over.
            self._count_drop(conn, "over_budget")
            self._drop(conn)
            return False
        self.buffered += len(data)
        conn.buf += data
        if conn.need < 0:
            if len(conn.buf) < 4:
                return True
            (conn.need,) = _LEN.unpack_from(conn.buf)
            if conn.need > self.max_frame:
                self._count_drop(conn, "oversized")
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
        reply = self._respond(payload, conn.tenant)
        if isinstance(reply, asyncio.Future):
            conn.fut = reply
            reply.add_done_callback(lambda fut: self._reply_ready(conn, fut))
        else:
            self._reply(conn, reply)
        return False

    def _respond(self, payload: bytes, tenant: Tenant) -> Reply:
        try:
            return self.responder(payload, tenant)
        except Exception:
            log.exception("responder failed")
            return None

    # --- replying --------------------------------------------------------------------------------------

    def _send_and_close(self, sock: _socket.socket, reply: bytes | None, trailing: bool, tenant: Tenant) -> None:
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
        if self._ant is not None:
            self._answered(tenant)
        if sent < len(reply):  # a big reply the client has not read yet: track it with the write deadline
            conn = _Conn(sock, self.loop.time() + self.write_timeout, tenant)
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
        if self._ant is not None:
            self._answered(conn.tenant)
        if conn.trailing:
            _drain_input(conn.sock)
        self._drop(conn)  # reply out: the server side of "one request per connection"

    def _answered(self, tenant: Tenant) -> None:
        """A reply went out: if its tenant is light, heavy ones wait while its client reads the reply and
        sends its next step."""
        now = self.loop.time()
        if self._mix.active(now):
            self._ant.favour(tenant, now)  # type: ignore[union-attr]

    # --- closing ----------------------------------------------------------------------------------------

    def _drop(self, conn: _Conn) -> None:
        self._unwatch(conn)
        if self.connections.get(conn.fd) is conn:
            del self.connections[conn.fd]
            conn.tenant.conns -= 1
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
                self._count_drop(conn, "write_timeouts")
            elif not conn.answered:
                self._count_drop(conn, "read_timeouts")
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
        if self._ant is not None:  # answer everyone now
            self._ant.release()
            self._ant = None
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._unpark is not None:
            self._unpark.cancel()
        self._close_parked()
        while self._ring:  # accepted ones first: they were there before the backlog's
            self._serve_waiting()
            await asyncio.sleep(0)
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
