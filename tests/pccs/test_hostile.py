"""The PCCS review's findings, each with its right value: no poisoning of another platform's pckcert, no
event-loop freeze while the database is locked, a short Cache-Control, no 500 for bad input, wrong-kind
upstream data refused, clear configuration errors."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from quotehelper.pccs.config import PccsConfigError, PccsOptions
from quotehelper.platform.sim import SimPlatform
from quotehelper.platform.sim.tcbeval import encrypted_ppid
from tests.pccs.conftest import ADMIN_TOKEN, USER_TOKEN, hold_sqlite_lock
from tests.pccs.test_pccs import http, qcnl_query
from tests.pcs.conftest import Faults, ServerThread, fault_proxy

TCB = "/sgx/certification/v4/tcb?fmspc=00906ED50000"


def test_a_request_cannot_put_another_machines_certificates_under_a_qe_id(make_env, db_url, tmp_path) -> None:
    env = make_env(db_url)
    victim = env.platform
    assert http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(victim))[0] == 200
    other = SimPlatform.create(victim.pki_dir.parent / "other", pki_dir=victim.pki_dir, fmspc=bytes.fromhex("00A067110000"))
    q = dict(urllib.parse.parse_qsl(qcnl_query(other)))
    q["qeid"] = victim.qe_id.hex().upper()  # the attacker's PPID under the victim's QE ID
    poisoned = http(env.url + "/sgx/certification/v4/pckcert?" + urllib.parse.urlencode(q))
    assert poisoned[0] in (200, 400)
    status, headers, _ = http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(victim))
    assert status == 200 and headers["SGX-FMSPC"] == "00906ED50000"  # still the victim's own
    body = json.dumps({"qe_id": victim.qe_id.hex().upper(), "pce_id": "0000", "cpu_svn": q["cpusvn"],
                       "pce_svn": q["pcesvn"], "enc_ppid": q["encrypted_ppid"]}).encode()
    status, headers, _ = http(env.url + "/sgx/certification/v4/platforms", method="POST", body=body,
                              headers={"user-token": USER_TOKEN})
    assert status == 400 and "another PPID" in headers["Error-Message"]
    time.sleep(1.1)  # past the answer memo
    assert http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(victim))[1]["SGX-FMSPC"] == "00906ED50000"


def test_a_locked_sqlite_file_does_not_freeze_cached_answers(make_env, tmp_path) -> None:
    import threading

    db = tmp_path / "pckcache.db"
    env = make_env(f"sqlite:///{db}")
    assert http(env.url + "/sgx/certification/v4/qe/identity")[0] == 200
    holder = hold_sqlite_lock(db, 4)
    try:
        writer = threading.Thread(target=http, args=(env.url + TCB,))  # a miss: its write waits for the lock
        writer.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert http(env.url + "/sgx/certification/v4/qe/identity")[0] == 200
        waited = time.monotonic() - t0
        writer.join(60)
    finally:
        holder.wait(30)
    assert waited < 3.0  # served while the writer waits; before, the whole loop waited for the lock (4 s)


def test_cache_control_never_outlives_the_refresh_interval(make_env, db_url) -> None:
    env = make_env(db_url)
    for path in (TCB, "/sgx/certification/v4/qe/identity", "/sgx/certification/v4/pckcrl?ca=processor",
                 "/sgx/certification/v4/rootcacrl"):
        status, headers, _ = http(env.url + path)
        assert status == 200 and 0 < int(headers["Cache-Control"].split("=")[1]) <= 3600, path


@pytest.mark.parametrize("case", ["token", "bad-doc-list", "bad-doc-certs", "bad-rootcacrl", "rootcacrl-int",
                                  "manifest-object", "long-qeid"])
def test_bad_input_is_a_4xx_never_a_500(make_env, db_url, case) -> None:
    env = make_env(db_url)
    base = env.url + "/sgx/certification/v4/"
    admin = {"admin-token": ADMIN_TOKEN}
    if case == "token":
        r = http(base + "platforms", method="POST", body=b"{}", headers={"user-token": "us\u00e9rtok"})
    elif case.startswith("bad-") or case == "rootcacrl-int":
        doc = {"bad-doc-list": {"collaterals": []}, "bad-doc-certs": {"collaterals": {"certificates": []}},
               "bad-rootcacrl": {"collaterals": {"certificates": {}, "rootcacrl": "zz"}},
               "rootcacrl-int": {"collaterals": {"certificates": {}, "rootcacrl": 5}}}[case]
        r = http(base + "platformcollateral", method="PUT", body=json.dumps(doc).encode(), headers=admin)
    elif case == "manifest-object":
        body = {"qe_id": "AB" * 16, "pce_id": "0000", "platform_manifest": {"x": 1}}
        r = http(base + "platforms", method="POST", body=json.dumps(body).encode(), headers={"user-token": USER_TOKEN})
    else:
        q = dict(urllib.parse.parse_qsl(qcnl_query(env.platform)))
        q["qeid"] = "AB" * 130  # 260 hex digits: Intel's limit
        r = http(base + "pckcert?" + urllib.parse.urlencode(q))
        assert r[0] in (200, 400, 404), r
        return
    assert 400 <= r[0] < 500, r


def test_wrong_kind_upstream_data_is_refused(make_env, db_url) -> None:
    base_env = make_env(db_url, start=False)
    faults = Faults(mode="rewritten", rewrite=lambda p: p.replace("/v3/", "/v4/").replace("/tdx/", "/sgx/"))
    proxy = ServerThread(fault_proxy(base_env.upstream.url, faults))
    try:
        env = make_env(db_url, platform=base_env.platform, upstream_url=proxy.url)
        assert http(env.url + "/sgx/certification/v3/tcb?fmspc=00906ED50000")[0] == 502  # a v4 body on v3
        assert http(env.url + "/tdx/certification/v4/tcbevaluationdatanumbers")[0] == 502  # SGX's numbers as TDX
        assert not any(k.startswith(("tcb|sgx|3", "evalnums|tdx")) for k, _, _ in env.pccs.collateral.all_keys())
    finally:
        proxy.stop()


def test_configuration_errors_are_named(tmp_path) -> None:
    from quotehelper.pccs.serve import build

    with pytest.raises(PccsConfigError, match="does not exist"):
        build(PccsOptions.from_dict({"sqlite": {"options": {"storage": str(tmp_path / "nope" / "pck.db")}}}))
    assert PccsOptions.from_dict({"ApiKey": None}).api_key == ""

    with pytest.raises(PccsConfigError, match="database"):
        build(PccsOptions(db_url="postgresql+nosuchdriver://x@127.0.0.1/db"))
    _ = encrypted_ppid
