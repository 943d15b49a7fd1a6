"""Running the simulated PCS: aiohttp on HOST:PORT, HTTP or HTTPS, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from quotehelper.pcs.simserver import SimPcsConfig, make_app


async def start_server(pki_dir: Path, host: str, port: int, *, tls_cert: Path | None = None,
                       tls_key: Path | None = None, platforms: tuple[Path, ...] = (),
                       api_key: str | None = None) -> tuple[web.AppRunner, str]:
    """Starts the server in the running loop; returns the runner (`await runner.cleanup()` stops it)
    and its base URL (with the real port when `port` is 0)."""
    app = make_app(SimPcsConfig(Path(pki_dir), api_key, tuple(platforms)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = None
    if tls_cert is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]  # the bound port when port=0
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{'https' if ctx else 'http'}://{shown}:{real_port}"


async def serve_until_signal(start, stop=None) -> None:  # noqa: ANN001 - coroutine factories
    """Runs `await start()`, then waits for SIGINT/SIGTERM, then `await stop()`: a server's whole life."""
    await start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    if stop is not None:
        await stop()


def run_server(pki_dir: Path, host: str, port: int, **kw) -> None:
    runner: list[web.AppRunner] = []

    async def start() -> None:
        r, url = await start_server(pki_dir, host, port, **kw)
        runner.append(r)
        print(f"simulated PCS for {pki_dir} at {url}/sgx/certification/v4/", flush=True)

    async def stop() -> None:
        await runner[0].cleanup()

    try:
        asyncio.run(serve_until_signal(start, stop))
    except OSError as e:
        print(f"error: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
