"""PCCS test fixtures: storage on both backends (SQLite files; PostgreSQL from Debian's package: the server
CI starts, named by $QUOTEHELPER_TEST_PG_URL, or a private instance these fixtures start), the simulated
Intel PCS as the upstream, and a running PCCS over real HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from quotehelper.pccs.app import make_app
from quotehelper.pccs.config import PccsOptions
from quotehelper.pccs.serve import build
from quotehelper.pccs.service import Pccs
from quotehelper.pcs.simserver import SimPcsConfig
from quotehelper.pcs.simserver import make_app as make_pcs_app
from quotehelper.platform.sim import SimPlatform
from tests.pcs.conftest import ServerThread, counting

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None) \
    if Path("/usr/lib/postgresql").is_dir() else None
ADMIN_TOKEN, USER_TOKEN = "admin-secret", "user-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL server of our own (Debian's binaries, run as the postgres user), trust auth on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        if PG_BIN is None or not (PG_BIN / "initdb").exists():
            pytest.skip("PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)")
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("starting a private PostgreSQL needs root (to run it as the postgres user)")
        self.dir = root / "pgdata"
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres")
        self.port = _free_port()
        self._as_pg(str(PG_BIN / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _as_pg(self, *cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-l", str(self.dir.parent / "pg.log"), "-o",
                    f"-p {self.port} -k {self.dir.parent} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self._as_pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir), "-w", "-m", "fast", "-l",
                    str(self.dir.parent / "pg.log"), "-o",
                    f"-p {self.port} -k {self.dir.parent} -c listen_addresses=127.0.0.1 -c fsync=off", "restart")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="qh-pg-"))  # not under pytest's 0700 tmp: the postgres user must reach it
    pg = PrivatePostgres(root)
    yield pg
    pg.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest) -> str:
    return os.environ.get("QUOTEHELPER_TEST_PG_URL") or request.getfixturevalue("private_postgres").url


def fresh_pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = "qh_" + uuid.uuid4().hex[:12]
    eng = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        eng.dispose()  # a restart of the server (one test does it) leaves dead pooled connections
        for attempt in range(20):
            try:
                with eng.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except Exception:  # noqa: BLE001 - still starting up after a restart
                if attempt == 19:
                    raise
                time.sleep(0.5)
        eng.dispose()
    return url, drop


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pckcache.db'}"
        return
    url, drop = fresh_pg_database(request.getfixturevalue("pg_admin_url"))
    yield url
    drop()


def token_hash(token: str) -> str:
    import hashlib
    return hashlib.sha512(token.encode()).hexdigest()


@dataclass
class Env:
    platform: SimPlatform
    quote: bytes
    upstream: ServerThread
    upstream_log: list[str]
    pccs: Pccs | None = None
    server: ServerThread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    servers: list[ServerThread] = []

    def make(db: str, mode: str = "LAZY", *, platform: SimPlatform | None = None, upstream_url: str | None = None,
             start: bool = True, **opts: Any) -> Env:
        plat = platform or SimPlatform.create(tmp_path / f"p-{len(servers)}", tcb_status="SWHardeningNeeded")
        log: list[str] = []
        up = ServerThread(counting(make_pcs_app(SimPcsConfig(plat.pki_dir)), log))
        servers.append(up)
        root = tmp_path / "root.pem"
        root.write_bytes(plat.root_ca_pem())
        options = PccsOptions(uri=(upstream_url or up.url) + "/sgx/certification/v4/", mode=mode, db_url=db,
                              plain_http=True, trusted_root=root, api_key="k", user_token_hash=token_hash(USER_TOKEN),
                              admin_token_hash=token_hash(ADMIN_TOKEN), port=0, upstream_timeout_s=3, **opts)
        env = Env(plat, plat.quote(b"pccs test".ljust(64, b"\0")), up, log)
        if start:
            env.pccs = build(options)
            env.server = ServerThread(make_app(env.pccs))
            servers.append(env.server)
        return env

    yield make
    for s in reversed(servers):
        s.stop()


def hold_sqlite_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding an exclusive lock on the SQLite file for `seconds` (returns once it holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); "
        "c.execute('ROLLBACK')"), str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def wait_until(cond: Callable[[], bool], seconds: float = 10) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
