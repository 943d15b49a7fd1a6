"""Upstreams other than a PCS: another PCCS (ours, and one without `pckcerts`, as Intel's PCCS is), and
Azure's JSON-shaped pckcert answer."""

from __future__ import annotations

import json
import urllib.parse

from quotehelper.pccs.app import make_app
from quotehelper.pccs.service import _azure_pckcert
from quotehelper.pcs.http import Response
from tests.pccs.test_pccs import http, qcnl_query
from tests.pcs.conftest import Faults, ServerThread, fault_proxy


def test_a_pccs_behind_a_pccs_without_pckcerts(make_env, db_url, tmp_path) -> None:
    front = make_env(db_url)  # PCCS A: LAZY over the simulated PCS
    faults = Faults(mode="status", route="/pckcerts", status=404)  # like Intel's PCCS: no pckcerts route
    proxy = ServerThread(fault_proxy(front.url, faults))
    try:
        from quotehelper.pccs.serve import build

        back_db = f"sqlite:///{tmp_path / 'second.db'}"
        opts = front.pccs.o.__class__(**{**front.pccs.o.__dict__, "uri": proxy.url + "/sgx/certification/v4/",
                                         "db_url": back_db})
        second = build(opts)
        server = ServerThread(make_app(second))
        try:
            status, headers, body = http(server.url + "/sgx/certification/v4/pckcert?" + qcnl_query(front.platform))
            assert status == 200 and faults.hits >= 1  # pckcerts refused, pckcert with the raw TCB used instead
            assert headers["SGX-FMSPC"] == "00906ED50000"
            assert http(server.url + "/sgx/certification/v4/tcb?fmspc=00906ED50000")[0] == 200
        finally:
            server.stop()
    finally:
        proxy.stop()


def test_azure_pckcert_json_is_read(make_env, db_url) -> None:
    env = make_env(db_url, start=False)
    chain = urllib.parse.quote(env.platform.pck_chain_pem.decode().split("-----END CERTIFICATE-----\n", 1)[1], safe="")
    leaf = env.platform.pck_chain_pem.decode().split("-----END CERTIFICATE-----\n", 1)[0] + "-----END CERTIFICATE-----\n"
    body = json.dumps({"pckCert": leaf, "sgx-Pck-Certificate-Issuer-Chain": chain, "sgx-Tcbm": "AB" * 18,
                       "cacheMaxAge": 86400}).encode()
    r = _azure_pckcert(Response("https://x.thim.azure.net/", 200, {}, body))
    assert r.body.decode() == leaf and r.header("SGX-FMSPC") == "00906ED50000"
    assert r.header("SGX-PCK-Certificate-CA-Type") == "PROCESSOR" and r.header("SGX-TCBm") == "AB" * 18
