"""A verified collateral cache shared by the processes of a node: one SQLite file (WAL).

Only items that passed verification are stored (the client verifies a bundle before `put`), each with
its own validity end (TCB info / QE identity `nextUpdate`, CRL `nextUpdate`) and the time it was
fetched. A lookup returns an item only while `now < not_after`; whether it is due for a refresh is the
client's decision (`fetched_at`). Keys name the item and the trust anchor it was verified under, so
collateral verified under a test root never serves a verifier that trusts Intel's.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from quotehelper.pcs.errors import PcsCode, PcsError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,          -- e.g. 'tcb/sgx/00906ED50000/standard/-@<anchor sha256 prefix>'
    body BLOB NOT NULL,            -- as received: signed JSON body, or CRL DER
    chain BLOB,                    -- issuer chain PEM (decoded from the header)
    url TEXT NOT NULL,
    fetched_at REAL NOT NULL,      -- unix seconds
    not_after REAL NOT NULL,       -- unix seconds: nextUpdate of the item
    evaluation_number INTEGER      -- tcbEvaluationDataNumber of a TCB info / identity
)
"""


@dataclass(frozen=True)
class Item:
    """One piece of collateral as fetched. `body` is the signed JSON body (TCB info / QE identity) or
    the CRL in DER; `chain` the issuer chain in PEM (None for the root CA CRL)."""

    key: str
    body: bytes
    chain: bytes | None
    url: str
    fetched_at: float
    not_after: float
    evaluation_number: int | None = None


class CollateralCache:
    """Thread-safe; one connection per thread. `path` is a directory (created 0700) holding `collateral.db`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        d = Path(path)
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise PcsError(PcsCode.CACHE_UNUSABLE, f"cannot create the cache directory {d}: {e.strerror or e}",
                           {"cache": str(d)}) from e
        p = d / "collateral.db"
        self.path = p
        self._local = threading.local()
        try:
            with self._conn() as c:
                c.execute(_SCHEMA)
        except sqlite3.Error as e:
            raise PcsError(PcsCode.CACHE_UNUSABLE, f"cannot open the collateral cache {p}: {e} (remove the file to start "
                           "an empty cache)", {"cache": str(p)}) from e

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)  # autocommit; explicit BEGIN
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, keys: Iterable[str], now: float) -> dict[str, Item]:
        """The valid items (now < not_after) among `keys`."""
        keys = list(keys)
        if not keys:
            return {}
        q = (f"SELECT key, body, chain, url, fetched_at, not_after, evaluation_number FROM items WHERE key IN "
             f"({','.join('?' * len(keys))})")
        try:
            rows = self._conn().execute(q, keys).fetchall()
        except sqlite3.Error as e:
            raise PcsError(PcsCode.CACHE_UNUSABLE, f"collateral cache {self.path}: {e}", {"cache": str(self.path)}) from e
        return {r[0]: Item(*r) for r in rows if now < r[5]}

    def versions(self, keys: Iterable[str], now: float) -> dict[str, tuple[float, float]]:
        """(fetched_at, not_after) of the valid items among `keys`, without reading their bodies: enough
        to tell whether an already assembled bundle is still current."""
        keys = list(keys)
        q = f"SELECT key, fetched_at, not_after FROM items WHERE key IN ({','.join('?' * len(keys))})"
        try:
            rows = self._conn().execute(q, keys).fetchall()
        except sqlite3.Error as e:
            raise PcsError(PcsCode.CACHE_UNUSABLE, f"collateral cache {self.path}: {e}", {"cache": str(self.path)}) from e
        return {r[0]: (r[1], r[2]) for r in rows if now < r[2]}

    def put(self, items: Iterable[Item]) -> None:
        """Stores verified items in one transaction (replacing older versions)."""
        rows = [(i.key, i.body, i.chain, i.url, i.fetched_at, i.not_after, i.evaluation_number) for i in items]
        if not rows:
            return
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise PcsError(PcsCode.CACHE_UNUSABLE, f"collateral cache {self.path}: {e}", {"cache": str(self.path)}) from e

    def keys(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT key FROM items ORDER BY key")]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
