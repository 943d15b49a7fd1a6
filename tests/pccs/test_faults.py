"""PCCS faults: never an answer with wrong or unverified data. Upstream down at start and mid-run (stale
served while valid, shown in the metrics, then 503); corrupted, badly signed or other-FMSPC upstream data
(502, nothing stored); PostgreSQL restarted under load; two replicas refreshing at once; the SQLite file
locked by another process."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from quotehelper.pccs.app import make_app
from quotehelper.pccs.serve import build
from tests.pccs.conftest import ADMIN_TOKEN, fresh_pg_database, hold_sqlite_lock
from tests.pccs.test_pccs import http
from tests.pcs.conftest import Faults, ServerThread, fault_proxy
from tests.pcs.test_client import _bad_signature, _other_fmspc

TCB = "/sgx/certification/v4/tcb?fmspc=00906ED50000"


@pytest.fixture
def proxied_env(make_env, db_url):
    """A PCCS whose upstream is a fault-injecting proxy in front of the simulated PCS."""
    base = make_env(db_url, start=False)
    faults = Faults()
    proxy = ServerThread(fault_proxy(base.upstream.url, faults))
    env = make_env(db_url, platform=base.platform, upstream_url=proxy.url)
    yield env, faults
    proxy.stop()


def _metric(env, name: str) -> float:
    text = http(env.url + "/metrics")[2].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_upstream_down_at_start_is_503_then_served_when_it_is_back(proxied_env) -> None:
    env, faults = proxied_env
    faults.mode, faults.status = "status", 503
    status, headers, _ = http(env.url + TCB)
    assert status == 503 and headers["Retry-After"] == "30"  # QCNL retries 503 only
    assert env.pccs.collateral.all_keys() == []
    assert _metric(env, "pccs_upstream_errors_total") > 0
    faults.mode = "pass"
    assert http(env.url + TCB)[0] == 200


def test_upstream_down_mid_run_serves_the_valid_copy_then_stops(proxied_env) -> None:
    env, faults = proxied_env
    now = [time.time()]
    env.pccs.clock = lambda: now[0]
    first = http(env.url + TCB)[2]
    faults.mode, faults.status = "status", 503
    now[0] += 3700  # due for a refresh: it fails; the stored copy stays and is served
    result = asyncio.run_coroutine_threadsafe(env.pccs.refresh_due(), env.server.loop).result(120)
    assert result["failed"] >= 1 and http(env.url + TCB)[2] == first
    assert _metric(env, "pccs_refresh_failures_total") >= 1
    now[0] += 40 * 86400  # past its nextUpdate: never served, and the upstream is still down
    assert http(env.url + TCB)[0] == 503


@pytest.mark.parametrize("fault", ["bad signature", "other FMSPC", "truncated JSON", "500"])
def test_bad_upstream_data_is_refused_and_never_stored(proxied_env, fault) -> None:
    env, faults = proxied_env
    if fault == "500":
        faults.mode, faults.route, faults.status = "status", "/tcb", 500
    else:
        body = {"bad signature": _bad_signature, "other FMSPC": _other_fmspc(env),
                "truncated JSON": lambda b: b[: len(b) // 2]}[fault]
        faults.mode, faults.route, faults.body = "replace_body", "/tcb", body
    status, headers, _ = http(env.url + TCB)
    assert status in (502, 503) and status != 200
    assert not any(k.startswith("tcb|") for k, _, _ in env.pccs.collateral.all_keys())
    faults.mode = "pass"
    assert http(env.url + TCB)[0] == 200


def test_two_replicas_refreshing_at_once(make_env, db_url) -> None:
    env = make_env(db_url)
    assert http(env.url + TCB)[0] == 200 and http(env.url + "/sgx/certification/v4/qe/identity")[0] == 200
    other = build(env.pccs.o)  # a second replica on the same database
    server2 = ServerThread(make_app(other))
    try:
        results = []

        def refresh(url: str) -> None:
            results.append(http(url + "/sgx/certification/v4/refresh", method="POST",
                                headers={"admin-token": ADMIN_TOKEN}))
        threads = [threading.Thread(target=refresh, args=(u,)) for u in (env.url, server2.url, env.url)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [r[0] for r in results] == [200, 200, 200]
        assert all(json.loads(r[2])["failed"] == 0 for r in results)
        keys = [k for k, _, _ in env.pccs.collateral.all_keys()]
        assert len(keys) == len(set(keys)) == 3  # TCB info, QE identity, root CA CRL (fetched to check them)
        assert http(server2.url + TCB)[2] == http(env.url + TCB)[2]
    finally:
        server2.stop()


def test_sqlite_locked_by_another_process(make_env, tmp_path) -> None:
    db = tmp_path / "pckcache.db"
    env = make_env(f"sqlite:///{db}")
    assert http(env.url + TCB)[0] == 200  # stored
    holder = hold_sqlite_lock(db, 3)
    try:
        assert http(env.url + TCB)[0] == 200  # readers are not blocked (WAL)
        status, _, body = http(env.url + "/sgx/certification/v4/qe/identity")  # a write waits for the lock
        assert status == 200 and body.startswith(b'{"enclaveIdentity":')
    finally:
        holder.wait(30)


def test_postgres_restarted_under_load(make_env, private_postgres) -> None:
    url, drop = fresh_pg_database(private_postgres.url)
    try:
        env = make_env(url)
        good = {p: http(env.url + p)[2] for p in (TCB, "/sgx/certification/v4/qe/identity",
                                                   "/sgx/certification/v4/pckcrl?ca=processor")}
        stop = threading.Event()
        seen: list[int] = []
        wrong: list[str] = []

        def load() -> None:
            while not stop.is_set():
                for p, body in good.items():
                    status, _, got = http(env.url + p)
                    seen.append(status)
                    if status == 200 and got != body:
                        wrong.append(p)
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        private_postgres.restart()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert wrong == [] and seen.count(200) > 0
        assert set(seen) <= {200, 500, 503}  # during the restart: an error, never wrong data
        assert all(http(env.url + p)[2] == body for p, body in good.items())  # and serving again after
    finally:
        drop()
