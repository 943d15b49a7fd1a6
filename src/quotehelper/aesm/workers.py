"""Quoting on all cores: N serving processes that share one listening socket, under a supervisor.

AESM runs every quote request on one worker thread. Here each worker process opens the engine once
(e.g. `SimPlatform.open(dir).engine()`; the platform's sealed attestation key on disk is the shared
state), and accepts connections itself on the listening socket it inherited, so a request is read,
answered and quoted in one process: no hop between processes (measured first: with one acceptor and a
process hop per quote, the acceptor's event loop was the bottleneck, the hop cost as much as the ECDSA
work, and the quoting workers idled). The kernel spreads connections over the processes blocked in accept.

Backpressure and fairness live in each worker: `AesmServer` caps the connections one tenant may hold,
`AesmResponder` queues engine calls per tenant (deficit round robin, scheduler.py), answering AESM_BUSY to
the tenant over its share; calls that need no engine skip the queue.

The supervisor (`WorkerSupervisor`) starts the workers, replaces one that dies, and on shutdown sends
SIGTERM: a worker then stops accepting, answers what the kernel already queued for it and the requests
in flight, and exits. A worker whose supervisor disappears stops the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from quotehelper.aesm.anticipate import shared_hold_fd
from quotehelper.aesm.options import ServeOptions
from quotehelper.cpus import usable_cpus
from quotehelper.errors import QuoteHelperError

if TYPE_CHECKING:  # the supervisor stays light: protocol and engine modules load in the workers only
    from quotehelper.platform.engine import QuotingEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """A recipe for opening an engine in a worker process, named by import path so this layer does not
    depend on any particular engine: `target` is "module:qualname", called with `args`, then the method
    `then` (if any) is called on the result. Examples:
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


ServeConfig = ServeOptions  # the former name (STYLE.md §2.1)


# --- how many workers ----------------------------------------------------------------------------------

# The default never exceeds this: a node's quote demand is modest (applications quote at start-up and on
# attestation), each worker is a ~40 MB process, and with the DCAP engine each one loads its own QE3 and
# PCE into EPC, the memory a node-wide service exists to save. `--workers` goes higher when asked.
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    return min(usable_cpus(), MAX_DEFAULT_WORKERS)


# --- worker process side ------------------------------------------------------------------------------

async def _serve(listen: socket.socket, status: socket.socket, engine: QuotingEngine, cfg: ServeConfig,
                 index: int = 0, hold_fd: int | None = None) -> None:
    from quotehelper.aesm.anticipate import Anticipation
    from quotehelper.aesm.handlers import Dispatcher
    from quotehelper.aesm.responder import AesmResponder
    from quotehelper.aesm.server import AesmServer

    ant = Anticipation(cfg.anticipation, hold_fd) if cfg.anticipates else None
    responder = AesmResponder(Dispatcher(engine.supported_att_key_ids()), engine, cfg, ant)
    server = AesmServer(listen, responder, cfg, anticipation=ant)
    stop_metrics: Callable[[], None] | None = None
    if cfg.metrics:
        from quotehelper.aesm.metrics import WorkerMetrics, start_flushing
        stop_metrics = start_flushing(WorkerMetrics(index), responder, server, server.tenants)
    await server.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    status.setblocking(False)
    loop.add_reader(status.fileno(), server.request_stop)  # EOF: the supervisor is gone
    status.send(b"R")
    await server.wait_stopped()
    loop.remove_reader(status.fileno())
    await server.stop()
    if stop_metrics is not None:
        stop_metrics()  # the last counts, before exit


def warm_up(engine: QuotingEngine) -> None:
    """Initialise the QE and its attestation key before this worker serves. An application calls
    InitQuoteEx once and then quotes, and its connections land on any worker; engines that keep the key
    per process (DCAP) would otherwise answer ATT_KEY_NOT_INITIALIZED (42) from every worker that did not
    see the InitQuoteEx, and Intel's client does not re-init on its own. A failure here is only logged:
    the engine reports it again, as a wire code, to whoever asks."""
    try:
        key_ids = engine.supported_att_key_ids()
        if key_ids:
            engine.init_quote(key_ids[0])
    except Exception as e:  # noqa: BLE001 - any engine failure; the worker still serves
        log.warning("quoting engine not initialised at start: %s", e)


def worker_main(listen_fd: int, status_fd: int, spec: EngineSpec, cfg: ServeConfig, index: int = 0,
                hold_fd: int | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    listen = socket.socket(fileno=listen_fd)
    status = socket.socket(fileno=status_fd)
    engine = spec()
    warm_up(engine)
    asyncio.run(_serve(listen, status, engine, cfg, index, hold_fd))


# --- supervisor side ----------------------------------------------------------------------------------

@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    status: socket.socket
    watcher: asyncio.Task[None] | None = field(default=None)


class WorkerSupervisor:
    """Runs `workers` serving processes on `listen` and keeps that many alive until stopped."""

    def __init__(self, spec: EngineSpec, listen: socket.socket, workers: int | None = None,
                 config: ServeConfig | None = None, on_exit: Callable[[int, int], None] | None = None) -> None:
        self.spec = spec
        self.listen = listen
        self.size = max(1, workers or default_workers())
        self.config = config or ServeConfig()
        self._workers: list[_Worker | None] = [None] * self.size
        self._closing = False
        self.restarts = 0
        self.on_exit = on_exit
        # The workers' shared anticipatory hold (anticipate.py), inherited by every worker started
        self.hold_fd: int | None = None
        if self.config.anticipates:
            try:
                self.hold_fd = shared_hold_fd()
            except OSError as e:  # no memfd_create (seccomp, old kernel): each worker holds on its own
                log.warning("no shared anticipation state (%s): each worker keeps its own", e)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(i) for i in range(self.size)))

    async def _spawn(self, index: int) -> None:
        # A fresh interpreter (`python -m quotehelper.aesm.entry worker`), not fork: no copied event loop or
        # locks, no re-import of the caller's __main__.
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = json.dumps({"target": self.spec.target, "args": list(self.spec.args), "then": self.spec.then,
                           "config": asdict(self.config), "index": index, "hold_fd": self.hold_fd})
        fds = (self.listen.fileno(), child.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "quotehelper.aesm.entry", "worker", str(fds[0]), str(fds[1]), args,
                pass_fds=fds if self.hold_fd is None else (*fds, self.hold_fd), stdin=asyncio.subprocess.DEVNULL)
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        try:
            ready = await loop.sock_recv(parent, 1)
        except OSError:
            ready = b""
        if ready != b"R":
            parent.close()
            code = await proc.wait()
            raise QuoteHelperError(f"quoting worker {index} failed to start (exit code {code})")
        w = _Worker(index, proc, parent)
        w.watcher = asyncio.create_task(self._watch(w), name=f"worker-watch-{index}")
        self._workers[index] = w

    async def _watch(self, w: _Worker) -> None:
        code = await w.process.wait()
        w.status.close()
        if self.on_exit is not None:
            self.on_exit(w.process.pid, code)
        if self._closing or self._workers[w.index] is not w:
            return
        log.error("quoting worker %d (pid %d) exited with %d; replacing it", w.index, w.process.pid, code)
        self._workers[w.index] = None
        self.restarts += 1
        delay = 0.05
        while not self._closing:
            try:
                await self._spawn(w.index)
                return
            except QuoteHelperError:
                log.exception("could not replace quoting worker %d", w.index)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its connections), wait, kill stragglers."""
        self._closing = True
        live = [w for w in self._workers if w is not None]
        for w in live:
            with contextlib.suppress(ProcessLookupError):
                w.process.send_signal(signal.SIGTERM)
        for w in live:
            try:
                await asyncio.wait_for(w.process.wait(), self.config.drain_timeout + 5)
            except TimeoutError:
                w.process.kill()
                await w.process.wait()
            if w.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await w.watcher
        self._workers = [None] * self.size
        if self.hold_fd is not None:
            os.close(self.hold_fd)
            self.hold_fd = None


def worker_entry(argv: list[str]) -> None:
    """`python -m quotehelper.aesm.entry worker LISTEN_FD STATUS_FD JSON` (started by WorkerSupervisor)."""
    from quotehelper import logs

    logs.configure()  # the level and format the service was started with (environment)
    listen_fd, status_fd, spec = int(argv[0]), int(argv[1]), json.loads(argv[2])
    cfg = ServeConfig(**spec["config"])
    worker_main(listen_fd, status_fd, EngineSpec(spec["target"], tuple(spec["args"]), spec["then"]), cfg,
                spec.get("index", 0), spec.get("hold_fd"))

