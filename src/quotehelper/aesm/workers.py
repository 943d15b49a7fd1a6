"""Quoting on all cores: a pool of worker processes, each holding its own engine, fed by the server.

AESM runs every quote request on one thread. Here each worker process opens the engine once
(`engine_factory()`, e.g. SimPlatform.open(dir).engine(); the platform's sealed attestation key on disk
is the shared state) and executes engine calls sent to it over a socketpair, with the service's own
framing: 1 tag byte (the Request field number) + the serialized sub-message; the reply is a serialized
Response. A worker answers strictly in order, so the parent matches replies to a FIFO of futures, and
several requests may be in flight to one worker (pipelining); a worker drains every complete frame it
has received before replying, and sends the replies in one write (batching the process hop).

Backpressure: at most `queue_limit` engine calls are admitted at once across the pool; beyond that
`submit` raises `PoolBusy` and the server answers AESM_BUSY (18). Memory stays bounded by that limit.
A worker that dies is replaced; the calls it held get one more try (engine calls are idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.codes import AesmError
from quotehelper.aesm.framing import MAX_FRAME, FrameError, encode_frame
from quotehelper.aesm.handlers import (
    GET_QUOTE_EX,
    GET_QUOTE_SIZE_EX,
    INIT_QUOTE_EX,
    EngineCall,
    run_engine_call,
)
from quotehelper.errors import QuoteHelperError
from quotehelper.platform.engine import QuotingEngine

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EngineSpec:
    """A picklable recipe for opening an engine in a worker process, named by import path so this layer
    does not depend on any particular engine: `target` is "module:qualname", called with `args`, then
    the method `then` (if any) is called on the result. Examples:
    EngineSpec("quotehelper.platform.sim:SimPlatform.open", ("/path",), then="engine") and
    EngineSpec("quotehelper.platform.dcap_ql:DcapQlEngine").
    """

    target: str
    args: tuple = ()
    then: str | None = None

    def __call__(self) -> QuotingEngine:
        module_name, _, qualname = self.target.partition(":")
        obj: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        result = obj(*self.args)  # type: ignore[operator]
        return getattr(result, self.then)() if self.then else result  # type: ignore[no-any-return]
_LEN = struct.Struct("<I")
_RESPONSE_FIELD = {INIT_QUOTE_EX: "initQuoteExRes", GET_QUOTE_SIZE_EX: "getQuoteSizeExRes",
                   GET_QUOTE_EX: "getQuoteExRes"}


class PoolBusy(QuoteHelperError):
    """Every slot of the bounded queue is taken: answer AESM_BUSY."""


def failure_response(tag: int, code: int) -> bytes:
    """A serialized Response carrying only errorCode in the sub-message matching `tag`."""
    res = pb.Response()
    getattr(res, _RESPONSE_FIELD[tag]).errorCode = int(code)
    return res.SerializeToString()


# --- worker process side ------------------------------------------------------------------------------

def _split_frames(buf: bytearray) -> list[bytes]:
    """Removes and returns every complete frame at the head of `buf`."""
    frames = []
    pos = 0
    while len(buf) - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if n > MAX_FRAME:
            raise FrameError(f"worker frame of {n} bytes")
        if len(buf) - pos - 4 < n:
            break
        frames.append(bytes(buf[pos + 4: pos + 4 + n]))
        pos += 4 + n
    del buf[:pos]
    return frames


def worker_main(sock: socket.socket, engine_factory: Callable[[], QuotingEngine]) -> None:
    """Entry point of a worker process: open the engine once, then serve engine calls until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    engine = engine_factory()
    sock.sendall(b"R")  # ready: the engine is open (slow start-up stays out of request latency)
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return
        buf += chunk
        out = []
        for frame in _split_frames(buf):
            call = EngineCall(frame[0], frame[1:])
            out.append(encode_frame(run_engine_call(engine, call).SerializeToString()))
        if out:
            sock.sendall(b"".join(out))


# --- parent side --------------------------------------------------------------------------------------

@dataclass
class _Job:
    call: EngineCall
    fut: asyncio.Future[bytes]  # the serialized Response, ready to frame
    attempts: int = 0

    def answer(self, code: int) -> None:
        if not self.fut.done():
            self.fut.set_result(failure_response(self.call.tag, code))


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: collections.deque[_Job] = field(default_factory=collections.deque)
    pump: asyncio.Task[None] | None = None
    outbox: list[bytes] = field(default_factory=list)  # frames queued in this loop iteration


class WorkerPool:
    """N engine worker processes behind one bounded queue."""

    def __init__(self, engine_factory: EngineSpec, workers: int | None = None,
                 queue_limit: int | None = None) -> None:
        self.engine_factory = engine_factory
        self.size = max(1, workers or os.cpu_count() or 1)
        self.queue_limit = queue_limit if queue_limit is not None else 64 * self.size
        self._workers: list[_Worker | None] = [None] * self.size
        self._in_flight = 0
        self._parked: list[_Job] = []
        self._closing = False
        self.restarts = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(i) for i in range(self.size)))

    async def _spawn(self, index: int) -> None:
        # A fresh interpreter (`python -m quotehelper.aesm.workers`), not fork/multiprocessing: no copied
        # event loop or locks, no re-import of the caller's __main__, and a small resident set.
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = json.dumps({"target": self.engine_factory.target, "args": list(self.engine_factory.args),
                           "then": self.engine_factory.then})
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "quotehelper.aesm.workers", str(child.fileno()), spec,
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=MAX_FRAME + 4)
        try:
            ready = await reader.readexactly(1)
        except asyncio.IncompleteReadError as e:
            writer.close()
            code = await proc.wait()
            raise QuoteHelperError(f"quoting worker {index} failed to open its engine (exit code {code})") from e
        if ready != b"R":
            raise QuoteHelperError(f"quoting worker {index} sent {ready!r} instead of ready")
        w = _Worker(index, proc, reader, writer)
        w.pump = asyncio.create_task(self._pump(w), name=f"worker-pump-{index}")
        self._workers[index] = w

    async def _pump(self, w: _Worker) -> None:
        """Matches the worker's in-order replies to the jobs waiting for them."""
        buf = bytearray()
        try:
            while True:
                chunk = await w.reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("worker closed its socket")
                buf += chunk
                for payload in _split_frames(buf):  # every reply that arrived, in one wake-up
                    job = w.pending.popleft()
                    if not job.fut.done():
                        job.fut.set_result(payload)  # relayed as is: no parse/re-serialize in the parent
        except (FrameError, ConnectionError, IndexError) as e:
            if not self._closing:
                log.error("quoting worker %d (pid %s) went away: %s", w.index, w.process.pid, e)
        finally:
            orphans = list(w.pending)
            w.pending.clear()
            w.writer.close()
            if self._closing or self._workers[w.index] is not w:
                for job in orphans:
                    job.answer(AesmError.SERVICE_UNAVAILABLE)
            else:
                # Engine calls are idempotent: give each orphan one more try on a live worker (or on the
                # replacement); a call that kills two workers is answered AESM_UNEXPECTED_ERROR.
                self._workers[w.index] = None
                self.restarts += 1
                for job in orphans:
                    if job.attempts >= 2:
                        job.answer(AesmError.UNEXPECTED_ERROR)
                    else:
                        self._dispatch(job)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.process.wait(), 5)
                try:
                    await self._spawn(w.index)
                except QuoteHelperError:
                    log.exception("could not replace quoting worker %d", w.index)
                parked, self._parked = self._parked, []
                for job in parked:
                    self._dispatch(job)

    def _dispatch(self, job: _Job) -> None:
        live = [w for w in self._workers if w is not None]
        if not live:
            if self._closing or len(self._parked) >= self.queue_limit:
                job.answer(AesmError.SERVICE_UNAVAILABLE)
            else:
                self._parked.append(job)  # a replacement worker is starting
            return
        w = min(live, key=lambda x: len(x.pending))
        job.attempts += 1
        w.pending.append(job)
        if not w.outbox:  # batch the hop: one write per worker per event-loop iteration
            asyncio.get_running_loop().call_soon(self._flush, w)
        w.outbox.append(encode_frame(bytes([job.call.tag]) + job.call.payload))

    @staticmethod
    def _flush(w: _Worker) -> None:
        if w.outbox and not w.writer.is_closing():
            w.writer.write(b"".join(w.outbox))
        w.outbox.clear()

    def submit_nowait(self, call: EngineCall) -> asyncio.Future[bytes]:
        """Queues `call` on the least-loaded worker; PoolBusy when the bounded queue is full."""
        if self._in_flight >= self.queue_limit:
            raise PoolBusy(f"{self._in_flight} engine calls in flight (limit {self.queue_limit})")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        fut.add_done_callback(self._release)
        self._dispatch(_Job(call, fut))
        return fut

    def _release(self, _fut: asyncio.Future[bytes]) -> None:
        self._in_flight -= 1

    async def submit(self, call: EngineCall) -> bytes:
        return await self.submit_nowait(call)

    async def close(self) -> None:
        """Stops every worker (after in-flight calls were answered by the server's drain)."""
        self._closing = True
        for w in self._workers:
            if w is None:
                continue
            w.writer.close()  # EOF: the worker's loop returns
        for w in self._workers:
            if w is None:
                continue
            if w.pump is not None:
                w.pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w.pump
            try:
                await asyncio.wait_for(w.process.wait(), 5)
            except TimeoutError:
                w.process.kill()
                await w.process.wait()
        self._workers = [None] * self.size


def _main(argv: list[str]) -> None:
    """`python -m quotehelper.aesm.workers FD SPEC_JSON` (started by WorkerPool, not by hand)."""
    fd, spec = int(argv[0]), json.loads(argv[1])
    sock = socket.socket(fileno=fd)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the service went away
        worker_main(sock, EngineSpec(spec["target"], tuple(spec["args"]), spec["then"]))


if __name__ == "__main__":
    _main(sys.argv[1:])
