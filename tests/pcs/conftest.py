"""Servers for the collateral tests: the simulated PCS on a loopback port (real HTTP), a replay server for
real PCS/PCCS responses, and a fault-injecting proxy in front of the simulated PCS."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from quotehelper.pcs.simserver import SimPcsConfig, make_app
from quotehelper.platform.sim import SimPlatform
from quotehelper.verify import TrustAnchor, Verifier, VerifyOptions


class ServerThread:
    """An aiohttp application on 127.0.0.1:<free port>, served from its own thread and loop."""

    def __init__(self, app: web.Application, ssl_context: Any = None, port: int = 0) -> None:
        self.app, self.ssl, self.port = app, ssl_context, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.ssl else 'http'}://127.0.0.1:{port}"
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def down() -> None:
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class SimEnv:
    platform: SimPlatform
    quote: bytes
    server: ServerThread
    root: TrustAnchor
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def verifier(self) -> Verifier:
        return Verifier(VerifyOptions(trusted_roots=(self.root,)))


def counting(app: web.Application, log: list[str]) -> web.Application:
    @web.middleware
    async def count(req: web.Request, handler: Callable) -> web.StreamResponse:
        log.append(req.path_qs)
        return await handler(req)
    app.middlewares.insert(0, count)
    return app


@pytest.fixture
def make_sim_env(tmp_path: Path) -> Iterator[Callable[..., SimEnv]]:
    servers: list[ServerThread] = []

    def make(name: str = "p", **platform_options: Any) -> SimEnv:
        platform = SimPlatform.create(tmp_path / name, **platform_options)
        log: list[str] = []
        server = ServerThread(counting(make_app(SimPcsConfig(platform.pki_dir)), log))
        servers.append(server)
        return SimEnv(platform, platform.quote(b"quotehelper pcs test".ljust(64, b"\0")), server,
                      TrustAnchor.from_bytes(platform.root_ca_der()), log)

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def sim_env(make_sim_env: Callable[..., SimEnv]) -> SimEnv:
    return make_sim_env()


# ---- a fault-injecting proxy ----------------------------------------------------------------------------
@dataclass
class Faults:
    """What the proxy does to the next requests whose path contains `route` (any when empty)."""

    mode: str = "pass"          # pass | status | retry_after | truncate | slow | replace_body | replace_headers
    route: str = ""
    times: int = 1_000_000      # how many matching requests get the fault
    status: int = 503
    delay_s: float = 0.0
    body: Callable[[bytes], bytes] | None = None
    headers: Callable[[dict], dict] | None = None
    rewrite: Callable[[str], str] | None = None  # the upstream path for a matching request
    location: str = ""
    extra_headers: dict | None = None
    hits: int = 0
    seen_headers: list[dict] = field(default_factory=list)


def fault_proxy(upstream: str, faults: Faults) -> web.Application:
    async def handle(req: web.Request) -> web.StreamResponse:
        target = req.path_qs
        if faults.rewrite is not None and (not faults.route or faults.route in req.path):
            target = faults.rewrite(target)
        async with ClientSession() as s, s.get(upstream + target) as r:
            body, headers = await r.read(), {k: v for k, v in r.headers.items()
                                             if k.lower() not in ("content-length", "transfer-encoding", "date",
                                                                  "server", "content-encoding")}
            status = r.status
        f = faults
        f.seen_headers.append(dict(req.headers))
        if f.mode == "pass" or (f.route and f.route not in req.path) or f.hits >= f.times:
            return web.Response(body=body, status=status, headers=headers)
        f.hits += 1
        if f.mode == "status":
            return web.Response(text="fault", status=f.status)
        if f.mode == "retry_after":
            return web.Response(text="slow down", status=429, headers={"Retry-After": str(int(f.delay_s))})
        if f.mode == "slow":
            await asyncio.sleep(f.delay_s)
            return web.Response(body=body, status=status, headers=headers)
        if f.mode == "truncate":
            resp = web.StreamResponse(status=200, headers={**headers, "Content-Length": str(len(body))})
            await resp.prepare(req)
            await resp.write(body[: len(body) // 2])
            req.transport.close()  # type: ignore[union-attr]
            return resp
        if f.mode == "replace_body":
            assert f.body is not None
            return web.Response(body=f.body(body), status=status, headers=headers)
        if f.mode == "replace_headers":
            assert f.headers is not None
            return web.Response(body=body, status=status, headers=f.headers(headers))
        if f.mode == "split":  # the whole body, in two writes with a pause between (as a slow network)
            resp = web.StreamResponse(status=status, headers=headers)
            await resp.prepare(req)
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(f.delay_s or 0.3)
            await resp.write(body[len(body) // 2:])
            await resp.write_eof()
            return resp
        if f.mode == "redirect":
            return web.Response(status=302, headers={"Location": f.location})
        if f.mode == "rewritten":
            return web.Response(body=body, status=status, headers=headers)
        if f.mode == "headers_only":
            return web.Response(body=body, status=status, headers={**headers, **(f.extra_headers or {})})
        raise AssertionError(f.mode)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


@pytest.fixture
def proxied(sim_env: SimEnv) -> Iterator[tuple[SimEnv, ServerThread, Faults]]:
    """The simulated PCS behind a fault-injecting proxy: (env, proxy, faults)."""
    faults = Faults()
    proxy = ServerThread(fault_proxy(sim_env.url, faults))
    yield sim_env, proxy, faults
    proxy.stop()


def enc(pem: bytes | str) -> str:
    return urllib.parse.quote(pem if isinstance(pem, str) else pem.decode(), safe="")
