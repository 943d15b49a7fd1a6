"""Running the PCCS: storage (migrated), the service, the HTTP app, and the refresh loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import sys
from pathlib import Path

from aiohttp import web

from quotehelper.pccs.app import make_app
from quotehelper.pccs.config import PccsConfigError, PccsOptions
from quotehelper.pccs.db import make_engine, migrate
from quotehelper.pccs.service import Pccs
from quotehelper.pcs.serve import serve_until_signal

log = logging.getLogger("quotehelper.pccs")


def build(options: PccsOptions, *, clock=None, getter=None) -> Pccs:  # noqa: ANN001
    """The service over migrated storage (raises PccsConfigError for an unusable root or database)."""
    from sqlalchemy.exc import SQLAlchemyError

    from quotehelper.verify import TrustAnchor, VerificationError

    try:
        roots = (TrustAnchor.from_file(options.trusted_root),) if options.trusted_root else ()
    except VerificationError as e:
        raise PccsConfigError(f"trusted_root: {e.message}") from e
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(options.db_url).render_as_string(hide_password=True)
    except Exception as e:  # noqa: BLE001 - any unparsable URL
        raise PccsConfigError(f"database URL does not parse: {e}") from e
    url = make_url(options.db_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).parent.is_dir():
        raise PccsConfigError(f"sqlite.options.storage: the directory {Path(url.database).parent} does not exist")
    try:
        engine = make_engine(options.db_url)
        migrate(engine)
    except (SQLAlchemyError, OSError) as e:
        raise PccsConfigError(f"database {shown}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from e
    kw = {"clock": clock} if clock else {}
    return Pccs(options, engine, roots=roots, getter=getter, **kw)


async def refresh_loop(pccs: Pccs) -> None:
    """Refreshes due items (ahead of their own nextUpdate, and every refresh_interval_s) until cancelled."""
    period = max(1.0, min(60.0, pccs.o.refresh_interval_s / 10))
    while True:
        await asyncio.sleep(period * (0.9 + random.random() * 0.2))
        try:
            result = await pccs.refresh_due()
            if result.get("refreshed") or result.get("failed"):
                log.info("refresh: %s", result)
        except Exception:
            log.exception("refresh loop")  # keep serving; the next round tries again


# A cluster's nodes reconnect together (a refresh storm, a PCCS restart): with aiohttp's default of 128 the
# accept queue overflowed under 1,000 simultaneous connects and each dropped SYN cost its node a 1 s
# retransmit. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 2048


async def start(options: PccsOptions, **kw) -> tuple[web.AppRunner, str, asyncio.Task]:  # noqa: ANN003
    pccs = build(options, **kw)
    app = make_app(pccs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = None
    if not options.plain_http:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(options.ssl_cert), str(options.ssl_key))
        except (OSError, ssl.SSLError) as e:
            await runner.cleanup()
            raise PccsConfigError(f"TLS: cannot load ssl_cert {options.ssl_cert} / ssl_key {options.ssl_key}: {e} "
                                  "(or set plain_http: true behind a mesh)") from e
    site = web.TCPSite(runner, options.hosts, options.port, ssl_context=ctx, backlog=LISTEN_BACKLOG)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    task = asyncio.get_running_loop().create_task(refresh_loop(pccs))
    return runner, f"{'https' if ctx else 'http'}://{options.hosts}:{port}", task


def run(options: PccsOptions, *, log_level_from_config: bool = True) -> None:
    """Serves until SIGINT/SIGTERM. Logging is configured by the caller (the CLI's -v/-q/--log-format);
    with `log_level_from_config` the configuration's LogLevel sets the level."""
    if log_level_from_config:
        logging.getLogger().setLevel({"error": logging.ERROR, "warn": logging.WARNING, "debug": logging.DEBUG}.get(
            options.log_level.lower(), logging.INFO))
    logging.getLogger("alembic").setLevel(logging.WARNING)

    state: list = []

    async def begin() -> None:
        runner, url, task = await start(options)
        state.extend((runner, task))
        print(f"PCCS ({options.mode}) at {url}/sgx/certification/v4/, upstream {options.uri}", flush=True)

    async def end() -> None:
        runner, task = state
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()

    try:
        asyncio.run(serve_until_signal(begin, end))
    except PccsConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: cannot listen on {options.hosts}:{options.port}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)


