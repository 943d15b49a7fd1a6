"""The quote service process: owns the socket path, runs the serving workers, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from quotehelper.aesm.server import DEFAULT_SOCKET_MODE, ServiceSocket
from quotehelper.aesm.workers import EngineSpec, ServeConfig, WorkerSupervisor

log = logging.getLogger(__name__)


class QuoteService:
    """Socket + supervised workers. `start()`, then `stop()` (what SIGTERM triggers in `run`)."""

    def __init__(self, socket_path: str, spec: EngineSpec, *, mode: int = DEFAULT_SOCKET_MODE,
                 workers: int | None = None, config: ServeConfig | None = None, backlog: int = 1024) -> None:
        self.socket_path = socket_path
        self.spec = spec
        self.mode = mode
        self.workers = workers
        self.config = config or ServeConfig()
        self.backlog = backlog
        self.socket: ServiceSocket | None = None
        self.supervisor: WorkerSupervisor | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self.socket = ServiceSocket(self.socket_path, self.mode, self.backlog)  # refuses a live server's path
        self.supervisor = WorkerSupervisor(self.spec, self.socket.sock, self.workers, self.config)
        try:
            await self.supervisor.start()
        except BaseException:
            await self.supervisor.stop()
            self.socket.close()
            raise
        log.info("serving AESM protocol on %s (mode %o) with %d worker(s)", self.socket_path, self.mode,
                 self.supervisor.size)

    def request_stop(self) -> None:
        self._stop.set()

    async def stop_requested(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Unlink the path (no new clients), let every worker drain, then release the socket."""
        if self.socket is None:
            return
        self.socket.unlink()
        if self.supervisor is not None:
            await self.supervisor.stop()
        self.socket.close()
        self.socket = None

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """start(); serve until SIGTERM/SIGINT; stop()."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before start: a SIGTERM during start-up drains too
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            if ready is not None:
                ready()
            await self.stop_requested()
            log.info("stopping: draining workers")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
