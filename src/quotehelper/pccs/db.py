"""PCCS storage: one schema (SQLAlchemy Core) on SQLite, the embedded default (one file, WAL, safe with
several processes), or PostgreSQL when several replicas serve one cluster. Migrations are Alembic
revisions under `migrations/`, run at start-up under a lock (a PostgreSQL advisory lock; SQLite's own
write lock), so replicas starting together migrate once.

Tables (collateral-service.md §2.6 names the concepts after Intel's PCCS):
    collateral      every signed item as received: TCB info, QE/QvE/TD-QE identity, PCK CRLs, root CA CRL,
                    CRLs by URI, TCB evaluation data numbers; keyed by what it is (kind, TEE, API version,
                    FMSPC or CA, update type, evaluation number), with nextUpdate and fetch time
    platforms       registered platforms (QE_ID, PCE-ID) with encrypted PPID, FMSPC, CA type
    pck_certs       each platform's PCK certificates by TCBm, with their TCB
    pck_chains      the PCK certificate issuer chain per CA type
    platform_tcbs   raw TCB (CPUSVN, PCESVN) -> the TCBm of the certificate chosen for it
    registrations   the registration queue (state 0 new, 1 certificates not available, 9 done)
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)

metadata = MetaData()

collateral = Table(
    "collateral", metadata,
    Column("key", String(200), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("tee", String(3)),
    Column("version", Integer),
    Column("subject", String(64)),          # FMSPC, CA type or CRL URI digest
    Column("update_type", String(8)),
    Column("evaluation_number", Integer),
    Column("body", LargeBinary, nullable=False),
    Column("chain", Text),                  # issuer-chain header value as received (URL-encoded PEM)
    Column("url", Text),
    Column("fetched_at", Float, nullable=False),
    Column("not_after", Float, nullable=False),
)
platforms = Table(
    "platforms", metadata,
    Column("qe_id", String(260), primary_key=True),
    Column("pce_id", String(4), primary_key=True),
    Column("enc_ppid", Text),
    Column("platform_manifest", Text),
    Column("cpu_svn", String(32)),
    Column("pce_svn", String(4)),
    Column("fmspc", String(12)),
    Column("ca", String(10)),
    Column("updated_at", Float),
)
pck_certs = Table(
    "pck_certs", metadata,
    Column("qe_id", String(260), primary_key=True),
    Column("pce_id", String(4), primary_key=True),
    Column("tcbm", String(36), primary_key=True),
    Column("cert", Text, nullable=False),   # PEM
)
pck_chains = Table(
    "pck_chains", metadata,
    Column("ca", String(10), primary_key=True),
    Column("chain", Text, nullable=False),  # URL-encoded PEM, as PCS sent it
)
platform_tcbs = Table(
    "platform_tcbs", metadata,
    Column("qe_id", String(260), primary_key=True),
    Column("pce_id", String(4), primary_key=True),
    Column("cpu_svn", String(32), primary_key=True),
    Column("pce_svn", String(4), primary_key=True),
    Column("tcbm", String(36), nullable=False),
)
registrations = Table(
    "registrations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("qe_id", String(260), nullable=False),
    Column("pce_id", String(4), nullable=False),
    Column("cpu_svn", String(32)),
    Column("pce_svn", String(4)),
    Column("enc_ppid", Text),
    Column("platform_manifest", Text),
    Column("state", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

_MIGRATE_LOCK = threading.Lock()


def make_engine(url: str) -> Engine:
    """`sqlite:///path/pckcache.db` (WAL, 30 s busy timeout) or `postgresql+psycopg://...`."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI objects
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest Alembic revision (idempotent; replicas may call it together)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with _MIGRATE_LOCK, _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7263451)"))  # one migrator at a time
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Processes sharing one SQLite file migrate one after the other (flock on <db>.migrate.lock)."""
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:":
        yield
        return
    with open(db + ".migrate.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
