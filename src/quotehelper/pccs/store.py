"""Data-access objects over the PCCS tables (db.py), one small class per concern, as Intel's PCCS splits
its DAOs. Everything is SQLAlchemy Core, the same statements on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, and_, bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from quotehelper.pccs import db


@dataclass(frozen=True)
class Row:
    key: str
    kind: str
    body: bytes
    chain: str | None
    url: str | None
    fetched_at: float
    not_after: float
    evaluation_number: int | None


def _upsert(conn, table, values: dict, keys: list[str]) -> None:  # noqa: ANN001 - SQLAlchemy objects
    ins = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table).values(**values)
    conn.execute(ins.on_conflict_do_update(index_elements=keys,
                                           set_={k: v for k, v in values.items() if k not in keys}))


# Hot-path statements built once (building a Core statement costs more than running it on SQLite).
_C, _P, _K, _T = db.collateral, db.platforms, db.pck_certs, db.platform_tcbs
_GET_ROW = select(_C.c.key, _C.c.kind, _C.c.body, _C.c.chain, _C.c.url, _C.c.fetched_at, _C.c.not_after,
                  _C.c.evaluation_number).where(_C.c.key == bindparam("key"))
_GET_PLATFORM = select(_P).where(and_(_P.c.qe_id == bindparam("qe_id"), _P.c.pce_id == bindparam("pce_id")))
_GET_CERTS = select(_K.c.tcbm, _K.c.cert).where(and_(_K.c.qe_id == bindparam("qe_id"),
                                                     _K.c.pce_id == bindparam("pce_id")))
_GET_SELECTED = select(_T.c.tcbm).where(and_(_T.c.qe_id == bindparam("qe_id"), _T.c.pce_id == bindparam("pce_id"),
                                             _T.c.cpu_svn == bindparam("cpu_svn"), _T.c.pce_svn == bindparam("pce_svn")))
_GET_CHAIN = select(db.pck_chains.c.chain).where(db.pck_chains.c.ca == bindparam("ca"))


class CollateralDao:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, key: str) -> Row | None:
        with self.engine.connect() as c:
            r = c.execute(_GET_ROW, {"key": key}).first()
        return Row(*r) if r else None

    def put(self, row: Row, *, tee: str | None, version: int | None, subject: str | None,
            update_type: str | None) -> bool:
        """Stores a verified item unless a copy that stays valid longer (or is of a later evaluation) is
        already there: two replicas refreshing at once, or an upstream serving an older copy, never move
        the store backwards. Returns whether it was written."""
        t = db.collateral
        with self.engine.begin() as c:
            old = c.execute(select(t.c.not_after, t.c.evaluation_number).where(t.c.key == row.key)).first()
            if old is not None and old[0] > row.not_after and (row.evaluation_number or 0) <= (old[1] or 0):
                return False
            _upsert(c, t, {"key": row.key, "kind": row.kind, "tee": tee, "version": version, "subject": subject,
                           "update_type": update_type, "evaluation_number": row.evaluation_number,
                           "body": row.body, "chain": row.chain, "url": row.url, "fetched_at": row.fetched_at,
                           "not_after": row.not_after}, ["key"])
        return True

    def all_keys(self) -> list[tuple[str, float, float]]:
        t = db.collateral
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(select(t.c.key, t.c.fetched_at, t.c.not_after))]

    def summary(self) -> list[tuple[str, int, float, float]]:
        """(kind, count, oldest fetched_at, soonest not_after) per kind, for the metrics."""
        t = db.collateral
        with self.engine.connect() as c:
            q = select(t.c.kind, func.count(), func.min(t.c.fetched_at), func.min(t.c.not_after)).group_by(t.c.kind)
            return [tuple(r) for r in c.execute(q)]


class PlatformDao:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, qe_id: str, pce_id: str) -> dict | None:
        with self.engine.connect() as c:
            r = c.execute(_GET_PLATFORM, {"qe_id": qe_id, "pce_id": pce_id}).mappings().first()
        return dict(r) if r else None

    def by_enc_ppid(self, enc_ppid: str) -> dict | None:
        t = db.platforms
        with self.engine.connect() as c:
            r = c.execute(select(t).where(t.c.enc_ppid == enc_ppid)).mappings().first()
        return dict(r) if r else None

    def all(self, fmspcs: list[str] | None = None) -> list[dict]:
        t = db.platforms
        q = select(t) if not fmspcs else select(t).where(t.c.fmspc.in_(fmspcs))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def store_certs(self, platform: dict, certs: list[tuple[str, str]], chain: str) -> None:
        """Replaces the platform's certificate set [(tcbm, PEM)] and forgets its cached selections (they
        are recomputed over the new set on the next request)."""
        with self.engine.begin() as c:
            _upsert(c, db.platforms, {**platform, "updated_at": time.time()}, ["qe_id", "pce_id"])
            key = and_(db.pck_certs.c.qe_id == platform["qe_id"], db.pck_certs.c.pce_id == platform["pce_id"])
            c.execute(delete(db.pck_certs).where(key))
            for tcbm, pem in certs:
                c.execute(db.pck_certs.insert().values(qe_id=platform["qe_id"], pce_id=platform["pce_id"],
                                                       tcbm=tcbm, cert=pem))
            c.execute(delete(db.platform_tcbs).where(and_(db.platform_tcbs.c.qe_id == platform["qe_id"],
                                                          db.platform_tcbs.c.pce_id == platform["pce_id"])))
            _upsert(c, db.pck_chains, {"ca": platform["ca"], "chain": chain}, ["ca"])

    def certs(self, qe_id: str, pce_id: str) -> list[tuple[str, str]]:
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(_GET_CERTS, {"qe_id": qe_id, "pce_id": pce_id})]

    def chain(self, ca: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(_GET_CHAIN, {"ca": ca}).scalar()

    def selected(self, qe_id: str, pce_id: str, cpu_svn: str, pce_svn: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(_GET_SELECTED, {"qe_id": qe_id, "pce_id": pce_id, "cpu_svn": cpu_svn,
                                             "pce_svn": pce_svn}).scalar()

    def remember(self, qe_id: str, pce_id: str, cpu_svn: str, pce_svn: str, tcbm: str) -> None:
        with self.engine.begin() as c:
            _upsert(c, db.platform_tcbs, {"qe_id": qe_id, "pce_id": pce_id, "cpu_svn": cpu_svn, "pce_svn": pce_svn,
                                          "tcbm": tcbm}, ["qe_id", "pce_id", "cpu_svn", "pce_svn"])


class RegistrationDao:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, p: dict, state: int) -> None:
        with self.engine.begin() as c:
            c.execute(db.registrations.insert().values(
                qe_id=p["qe_id"], pce_id=p["pce_id"], cpu_svn=p.get("cpu_svn"), pce_svn=p.get("pce_svn"),
                enc_ppid=p.get("enc_ppid"), platform_manifest=p.get("platform_manifest"), state=state,
                created_at=time.time()))

    def take(self, state: int) -> list[dict]:
        """Returns and deletes the queued rows in `state` (Intel's GET platforms?source=reg|reg_na)."""
        t = db.registrations
        with self.engine.begin() as c:
            rows = [dict(r) for r in c.execute(select(t).where(t.c.state == state).order_by(t.c.id)).mappings()]
            if rows:
                c.execute(delete(t).where(t.c.id.in_([r["id"] for r in rows])))
        return rows

    def mark(self, qe_id: str, pce_id: str, state: int) -> None:
        t = db.registrations
        with self.engine.begin() as c:
            c.execute(t.update().where(and_(t.c.qe_id == qe_id, t.c.pce_id == pce_id, t.c.state == 0))
                      .values(state=state))
