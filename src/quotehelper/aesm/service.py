"""The quote service process: owns the socket path, runs the serving workers, stops cleanly on SIGTERM.

This process only supervises, so it imports neither protobuf nor any engine (measured: 20 MB resident
instead of 43 MB when it was the CLI process). `quotehelper serve` validates its options and then
replaces itself (exec, same pid) with `python -m quotehelper.aesm.entry service ...` (entry.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from quotehelper import logs
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.sockets import DEFAULT_SOCKET_MODE, ServiceSocket
from quotehelper.aesm.workers import EngineSpec, WorkerSupervisor

if TYPE_CHECKING:  # prometheus_client loads only with --metrics-addr
    from quotehelper.aesm.metrics import MetricsEndpoint

log = logging.getLogger(__name__)


class QuoteService:
    """Socket + supervised workers. `start()`, then `stop()` (what SIGTERM triggers in `run`)."""

    def __init__(self, socket_path: str, spec: EngineSpec, *, mode: int = DEFAULT_SOCKET_MODE,
                 workers: int | None = None, config: ServeOptions | None = None, backlog: int = 1024,
                 metrics_addr: tuple[str, int] | None = None, take_over: bool = False) -> None:
        self.socket_path = socket_path
        self.take_over = take_over  # replace a running quotehelper service's socket (bind_unpublished)
        self.spec = spec
        self.mode = mode
        self.workers = workers
        self.config = config or ServeOptions()
        self.backlog = backlog
        self.metrics_addr = metrics_addr  # (host, port) of /metrics; None: no metrics, no files, no port
        self.metrics: MetricsEndpoint | None = None
        self.socket: ServiceSocket | None = None
        self.supervisor: WorkerSupervisor | None = None
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Refuses a live server's path, unless take_over and that server is a quotehelper service. Published
        # at the path only once the workers are up: clients never wait on a service still starting.
        self.socket = ServiceSocket(self.socket_path, self.mode, self.backlog, take_over=self.take_over,
                                    publish=False)
        config = self.config
        on_exit = None
        if self.metrics_addr is not None:
            from quotehelper import __version__
            from quotehelper.aesm.metrics import MetricsEndpoint, engine_label

            self.metrics = MetricsEndpoint(
                self.metrics_addr, engine=engine_label(self.spec.target), version=__version__,
                restarts=lambda: self.supervisor.restarts if self.supervisor else 0,
                workers=lambda: len(self.supervisor.pids()) if self.supervisor else 0,
                tenants=config.metrics_tenants)
            try:
                self.metrics.start()  # before the workers: they inherit PROMETHEUS_MULTIPROC_DIR
            except BaseException:
                self.metrics = None
                self.socket.close()
                raise
            config = dataclasses.replace(config, metrics=True)
            on_exit = self._worker_exited
        self.supervisor = WorkerSupervisor(self.spec, self.socket.sock, self.workers, config, on_exit=on_exit)
        try:
            await self.supervisor.start()
            self.socket.publish()
        except BaseException:
            await self.supervisor.stop()
            self.socket.close()
            self._close_metrics()
            raise
        log.info("serving AESM protocol on %s (mode %o) with %d worker(s)", self.socket_path, self.mode,
                 self.supervisor.size)
        self._watcher = asyncio.create_task(self._watch_socket(), name="socket-watch")

    async def _watch_socket(self, every: float = 0.5) -> None:
        """After a take-over, claim the lock once the previous service is gone; once taken over ourselves,
        say so and stop watching (we answer what we accepted and exit on SIGTERM, as the orchestrator
        expects; a lock we hold is released then)."""
        sock = self.socket
        assert sock is not None
        while True:
            if sock.replaced():  # the lock is then for the service at the path, not for us
                log.warning("%s was taken over by another service; no new connections reach this one, "
                            "waiting for SIGTERM", self.socket_path)
                return
            if not sock.holds_lock and sock.claim_lock():
                log.info("previous service gone; %s.lock is ours", self.socket_path)
            await asyncio.sleep(every)

    def _worker_exited(self, pid: int, _code: int) -> None:
        if self.metrics is not None:
            self.metrics.worker_exited(pid)

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def request_stop(self) -> None:
        self._stop.set()

    async def stop_requested(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Unlink the path (no new clients), let every worker drain, then release the socket."""
        if self.socket is None:
            return
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self.socket.unlink()
        try:
            if self.supervisor is not None:
                await self.supervisor.stop()
        finally:
            self.socket.close()
            self.socket = None
            self._close_metrics()  # after the workers' last flush; removes the multiprocess directory

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


def exec_args(socket_path: str, spec: EngineSpec, *, mode: int, workers: int | None, config: ServeOptions,
              verbose: bool = False, metrics_addr: str | None = None, take_over: bool = False) -> list[str]:
    """argv that runs this module as the service (what `quotehelper serve` execs into)."""
    args = [sys.executable, "-m", "quotehelper.aesm.entry", "service", "--socket", socket_path, "--mode", f"{mode:o}",
            "--spec", json.dumps({"target": spec.target, "args": list(spec.args), "then": spec.then}),
            "--config", json.dumps(dataclasses.asdict(config))]
    if workers:
        args += ["--workers", str(workers)]
    if metrics_addr:
        args += ["--metrics-addr", metrics_addr]
    if verbose:
        args.append("--verbose")
    if take_over:
        args.append("--take-over")
    return args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m quotehelper.aesm.entry service",
                                 description="The quote service (normally started by `quotehelper serve`).")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--mode", default=f"{DEFAULT_SOCKET_MODE:o}")
    ap.add_argument("--spec", required=True, help="engine spec JSON: target, args, then")
    ap.add_argument("--config", default="{}", help="ServeOptions JSON")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--metrics-addr", default=None, help="HOST:PORT to serve Prometheus /metrics on")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--take-over", action="store_true", help="replace a running quotehelper service's socket")
    a = ap.parse_args(argv)
    # serve's -v/-vv and --log-format arrive through the environment too (quotehelper.logs)
    logs.configure(logs.level_from_env(logging.INFO if a.verbose else logging.WARNING))
    spec_d = json.loads(a.spec)
    spec = EngineSpec(spec_d["target"], tuple(spec_d.get("args", ())), spec_d.get("then"))
    mode = int(a.mode, 8)
    metrics_addr = None
    if a.metrics_addr:
        from quotehelper.aesm.metrics import parse_addr
        try:
            metrics_addr = parse_addr(a.metrics_addr)
        except ValueError as e:
            ap.error(str(e))
    service = QuoteService(a.socket, spec, mode=mode, workers=a.workers, config=ServeOptions(**json.loads(a.config)),
                           metrics_addr=metrics_addr, take_over=a.take_over)

    def ready() -> None:
        assert service.supervisor is not None
        metrics = ""
        if service.metrics is not None:
            host = service.metrics.addr[0]
            metrics = f", metrics on http://{f'[{host}]' if ':' in host else host}:{service.metrics.port}/metrics"
        print(f"quotehelper serve: {a.socket} (mode {mode:o}), {service.supervisor.size} worker(s), "
              f"engine {spec.target}, pid {os.getpid()}{metrics}", file=sys.stderr, flush=True)

    try:
        asyncio.run(service.run(ready))
    except Exception as e:  # a clean one-line error, like the CLI's, for start-up failures
        if isinstance(e, OSError | ValueError) or type(e).__module__.startswith("quotehelper"):
            print(f"Error: {e}", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
