"""Fixtures: a software platform, the real service (asyncio server + worker processes) on a temp socket,
and raw-frame helpers that talk to it exactly as a C client would."""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotehelper.aesm import client as aesm_client
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.service import QuoteService
from quotehelper.aesm.workers import EngineSpec, WorkerSupervisor
from quotehelper.platform.sim import SimPlatform


@pytest.fixture(scope="session")
def aesm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aesm")


@pytest.fixture(scope="session")
def platform(aesm_root: Path) -> SimPlatform:
    plat = SimPlatform.create(aesm_root / "platform")
    plat.engine().init_quote(plat.engine().supported_att_key_ids()[0])  # the key exists, as after first use
    return plat


def engine_spec(plat: SimPlatform) -> EngineSpec:
    return EngineSpec("quotehelper.platform.sim:SimPlatform.open", (str(plat.platform_dir),), then="engine")


class ThreadedService:
    """The real service (socket owner + supervised worker processes) with its supervisor on an event loop
    in a background thread, so signals stay with pytest."""

    def __init__(self, sock: str, plat: SimPlatform, *, workers: int = 2, queue_limit: int = 64,
                 read_timeout: float = 1.0, mode: int = 0o666, options: ServeOptions | None = None) -> None:
        self.sock = sock
        options = options or ServeOptions(read_timeout=read_timeout, queue_limit=queue_limit, memo=True)
        self.service = QuoteService(sock, engine_spec(plat), mode=mode, workers=workers, config=options)
        self.read_timeout = options.read_timeout
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def supervisor(self) -> WorkerSupervisor:
        assert self.service.supervisor is not None
        return self.service.supervisor

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.service.start()
            try:
                self._ready.set()
                await self.service.stop_requested()
            finally:
                await self.service.stop()

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    def start(self) -> ThreadedService:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.service.request_stop)
        self._thread.join(60)


@pytest.fixture(scope="module")
def service(platform: SimPlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedService]:
    svc = ThreadedService(str(tmp_path_factory.mktemp("svc") / "aesm.socket"), platform).start()
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def _fresh_client_mode() -> Iterator[None]:
    # One process, one mode, in real apps; each test is its own "app" here.
    aesm_client.reset_process_mode()
    yield
    aesm_client.reset_process_mode()


def exchange(sock_path: str, data: bytes, timeout: float = 10.0, shut_write: bool = False) -> bytes:
    """Sends raw bytes, returns everything the server sends until it closes the connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        s.close()


class QuotingClients:
    """N application threads quoting in a loop through the client library, each enclave putting its own
    sequence number in the report data; `check()` proves every call returned once, in order, with its
    own request's data (nothing lost or duplicated)."""

    def __init__(self, sock: str, plat: SimPlatform, n: int, deadline: float = 30.0) -> None:
        self.sock, self.plat, self.n, self.deadline = sock, plat, n, deadline
        self.stop_event = threading.Event()
        self.results: dict[int, list[bytes]] = {i: [] for i in range(n)}
        self.requested: dict[int, int] = dict.fromkeys(range(n), 0)
        self.failures: list[BaseException] = []
        self.providers: list[aesm_client.OutOfProcessProvider] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        from quotehelper.sgx.quote import parse_quote

        provider = aesm_client.OutOfProcessProvider(self.sock, deadline=self.deadline)
        self.providers.append(provider)
        enclave = self.plat.enclave(mr_enclave=bytes([i]) * 32)
        try:
            while not self.stop_event.is_set():
                data = f"client {i} request {self.requested[i]}".encode()
                self.requested[i] += 1
                quote = provider.get_quote(enclave.report(provider.target_info(), data))
                self.results[i].append(parse_quote(quote).report_body.report_data[:len(data)])
        except BaseException as e:
            self.failures.append(e)

    def start(self) -> QuotingClients:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)

    def check(self) -> None:
        assert not self.failures, self.failures[:3]
        for i in range(self.n):
            assert self.requested[i] > 0
            assert self.results[i] == [f"client {i} request {k}".encode() for k in range(self.requested[i])]

    @property
    def retries(self) -> int:
        return sum(p.retries for p in self.providers)

    @property
    def retry_reasons(self) -> collections.Counter[str]:
        return sum((p.retry_reasons for p in self.providers), start=collections.Counter())
