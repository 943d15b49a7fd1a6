"""The PCCS over real HTTP on both backends: existing clients work unchanged (dcap-qvl's get_collateral,
our collateral client, a QCNL-shaped pckcert); caching modes; tokens; import; TCB recovery."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

from cryptography import x509

from quotehelper.pcs import CollateralClient, PcsOptions
from quotehelper.platform.sim.tcbeval import encrypted_ppid, recover
from quotehelper.verify import TrustAnchor, Verifier, VerifyOptions
from tests.pccs.conftest import ADMIN_TOKEN, USER_TOKEN
from tests.pcs.test_sim_pcs import dcap_qvl_get_collateral


def http(url: str, *, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def qcnl_query(plat, *, cpusvn: bytes | None = None, pcesvn: int | None = None, zero_ppid: bool = False) -> str:
    """pckcert's query exactly as QCNL sends it: upper-case hex, PCESVN and PCE-ID as little-endian bytes."""
    enc = bytes(384) if zero_ppid else encrypted_ppid(bytes.fromhex(plat.config["ppid"]))
    return urllib.parse.urlencode({
        "qeid": plat.qe_id.hex().upper(), "encrypted_ppid": enc.hex().upper(),
        "cpusvn": (cpusvn or plat.cpu.cpu_svn).hex().upper(),
        "pcesvn": (int(plat.config["pce_svn"]) if pcesvn is None else pcesvn).to_bytes(2, "little").hex().upper(),
        "pceid": "0000"})


def verifier(env) -> Verifier:
    return Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(env.platform.root_ca_der()),)))


def test_our_client_and_dcap_qvl_get_collateral_through_it(make_env, db_url, tmp_path) -> None:
    env = make_env(db_url)
    f = CollateralClient(PcsOptions(base_url=env.url), verifier=verifier(env)).fetch(env.quote)
    v = verifier(env).verify(env.quote, f.collateral)
    assert (v.valid, v.status) == (True, "SWHardeningNeeded")
    assert f.urls["root_ca_crl"].endswith("/rootcacrl")  # hex, as Intel's PCCS
    got = dcap_qvl_get_collateral(env.url, env.quote, env.platform.root_ca_der(), tmp_path)
    assert got == {"status": "SWHardeningNeeded", "advisories": ["INTEL-SA-00615"]}
    n = len(env.upstream_log)
    CollateralClient(PcsOptions(base_url=env.url), verifier=verifier(env)).fetch(env.quote)
    assert len(env.upstream_log) == n  # served from the PCCS's store


def test_intel_pccs_framing(make_env, db_url) -> None:
    env = make_env(db_url)
    base = env.url + "/sgx/certification/v4/"
    status, headers, body = http(base + "pckcrl?ca=processor")
    assert status == 200 and bytes.fromhex(body.decode())[:1] == b"\x30"  # hex text unless encoding=der
    assert headers["SGX-PCK-CRL-Issuer-Chain"].startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert http(base + "pckcrl?ca=processor&encoding=der")[2][:1] == b"\x30"
    assert http(base + "rootcacrl")[2][:2] == b"30"
    status, headers, body = http(base + "tcb?fmspc=" + env.platform.config["fmspc"], headers={"Request-ID": "abc"})
    assert status == 200 and headers["Request-ID"] == "abc" and body.startswith(b'{"tcbInfo":')
    assert headers["TCB-Info-Issuer-Chain"] == headers["SGX-TCB-Info-Issuer-Chain"]
    assert int(headers["Cache-Control"].split("=")[1]) == 3600  # capped at refresh_interval_s
    miss = http(base + "tcb?fmspc=00606A000000")
    assert (miss[0], miss[2]) == (404, b"No cache data for this platform.")  # Intel's text; QCNL: 0xE011
    assert http(base + "tcb?fmspc=XYZ")[0] == 400 and http(base + "pckcrl?ca=nope")[0] == 400
    assert http(base + "qve/identity")[0] == 200
    assert http(base + "tcbevaluationdatanumbers")[0] == 200
    assert http(env.url + "/tdx/certification/v4/tcb?fmspc=" + env.platform.config["fmspc"])[0] == 404


def test_qcnl_pckcert_returns_the_platforms_certificate(make_env, db_url) -> None:
    env = make_env(db_url)
    p = env.platform
    status, headers, body = http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(p))
    assert status == 200 and x509.load_pem_x509_certificate(body) == p.pck_cert
    assert headers["SGX-TCBm"] == p.cpu.cpu_svn.hex().upper() + int(p.config["pce_svn"]).to_bytes(2, "little").hex().upper()
    assert (headers["SGX-FMSPC"], headers["SGX-PCK-Certificate-CA-Type"]) == ("00906ED50000", "PROCESSOR")
    chain = x509.load_pem_x509_certificates(urllib.parse.unquote(headers["SGX-PCK-Certificate-Issuer-Chain"]).encode())
    assert chain[-1] == p.pki.root_cert
    # a raw TCB above the certificate's still gets it; below every level: 404
    up = bytes(min(255, b + 1) for b in p.cpu.cpu_svn)
    assert http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(p, cpusvn=up))[0] == 200
    assert http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(p, pcesvn=1))[0] == 404
    # pckcerts, which Intel's PCCS lacks
    url = (env.url + "/sgx/certification/v4/pckcerts?encrypted_ppid="
           + encrypted_ppid(bytes.fromhex(p.config["ppid"])).hex().upper() + "&pceid=0000")
    assert http(url)[0] == 401  # every PPID of the platform: the user token, as PCS asks an API key
    status, headers, body = http(url, headers={"user-token": USER_TOKEN})
    assert status == 200 and len(json.loads(body)) == 1 and headers["SGX-FMSPC"] == "00906ED50000"


def test_unknown_platform_with_an_all_zero_ppid_is_404_in_lazy(make_env, db_url) -> None:
    env = make_env(db_url)
    assert http(env.url + "/sgx/certification/v4/pckcert?" + qcnl_query(env.platform, zero_ppid=True))[0] == 404


def _register(env, token: str = USER_TOKEN):
    p = env.platform
    body = json.dumps({"qe_id": p.qe_id.hex().upper(), "pce_id": "0000", "cpu_svn": p.cpu.cpu_svn.hex().upper(),
                       "pce_svn": int(p.config["pce_svn"]).to_bytes(2, "little").hex().upper(),
                       "enc_ppid": encrypted_ppid(bytes.fromhex(p.config["ppid"])).hex().upper()}).encode()
    return http(env.url + "/sgx/certification/v4/platforms", method="POST", body=body,
                headers={"user-token": token, "Content-Type": "application/json"})


def test_req_mode_misses_then_registration_fills(make_env, db_url) -> None:
    env = make_env(db_url, "REQ")
    base = env.url + "/sgx/certification/v4/"
    assert http(base + "pckcert?" + qcnl_query(env.platform))[0] == 461  # QCNL: 0xE047 platform unknown
    assert http(base + "tcb?fmspc=00906ED50000")[0] == 404
    assert env.upstream_log == []
    assert _register(env, "wrong")[0] == 401
    assert _register(env)[0] == 200
    assert http(base + "pckcert?" + qcnl_query(env.platform))[0] == 200
    assert http(base + "tcb?fmspc=00906ED50000")[0] == 200
    f = CollateralClient(PcsOptions(base_url=env.url), verifier=verifier(env)).fetch(env.quote)
    assert verifier(env).verify(env.quote, f.collateral).valid
    status, headers, body = http(base + "platforms?source=[00906ED50000]", headers={"admin-token": ADMIN_TOKEN})
    assert status == 200 and headers["platform-count"] == "1" and json.loads(body)[0]["qe_id"] == \
        env.platform.qe_id.hex().upper()
    assert http(base + "platforms", headers={"admin-token": USER_TOKEN})[0] == 401


def test_offline_serves_an_imported_bundle_with_no_upstream(make_env, db_url) -> None:
    from tests.pccs.bundle import platformcollateral

    env = make_env(db_url, "OFFLINE", upstream_url="http://127.0.0.1:9")  # nothing there, never asked
    base = env.url + "/sgx/certification/v4/"
    assert http(base + "pckcert?" + qcnl_query(env.platform))[0] == 461
    assert _register(env)[0] == 200  # queued only
    status, _, body = http(base + "platforms?source=reg", headers={"admin-token": ADMIN_TOKEN})
    assert status == 200 and len(json.loads(body)) == 1
    assert json.loads(http(base + "platforms?source=reg", headers={"admin-token": ADMIN_TOKEN})[2]) == []  # taken
    doc = platformcollateral(env.upstream.url, env.platform)
    assert http(base + "platformcollateral", method="PUT", body=json.dumps(doc).encode(),
                headers={"admin-token": USER_TOKEN})[0] == 401
    status, _, body = http(base + "platformcollateral", method="PUT", body=json.dumps(doc).encode(),
                           headers={"admin-token": ADMIN_TOKEN, "Content-Type": "application/json"})
    assert status == 200, body
    assert http(base + "pckcert?" + qcnl_query(env.platform))[0] == 200
    f = CollateralClient(PcsOptions(base_url=env.url), verifier=verifier(env)).fetch(env.quote)
    assert verifier(env).verify(env.quote, f.collateral).status == "SWHardeningNeeded"
    assert http(base + "refresh", method="POST", headers={"admin-token": ADMIN_TOKEN})[0] == 503


def test_import_refuses_a_bundle_with_a_bad_signature_and_stores_nothing(make_env, db_url) -> None:
    from tests.pccs.bundle import platformcollateral

    env = make_env(db_url, "OFFLINE", upstream_url="http://127.0.0.1:9")
    doc = platformcollateral(env.upstream.url, env.platform)
    sig = doc["collaterals"]["tcbinfos"][0]["sgx_tcbinfo"]["signature"]
    doc["collaterals"]["tcbinfos"][0]["sgx_tcbinfo"]["signature"] = ("1" if sig[0] == "0" else "0") + sig[1:]
    status, headers, _ = http(env.url + "/sgx/certification/v4/platformcollateral", method="PUT",
                              body=json.dumps(doc).encode(), headers={"admin-token": ADMIN_TOKEN})
    assert status == 400 and "signature" in headers["Error-Message"]
    assert env.pccs.collateral.all_keys() == []


def test_tcb_recovery_reaches_the_pccs_before_the_old_next_update(make_env, db_url) -> None:
    env = make_env(db_url)
    now = [time.time()]
    env.pccs.clock = lambda: now[0]
    base = env.url + "/sgx/certification/v4/"
    assert http(base + "pckcert?" + qcnl_query(env.platform))[0] == 200
    old = json.loads(http(base + "tcb?fmspc=00906ED50000")[2])["tcbInfo"]
    assert old["tcbEvaluationDataNumber"] == 17
    recover(env.platform.pki_dir)
    certs_before = env.pccs.platforms.get(env.platform.qe_id.hex().upper(), "0000")["updated_at"]
    now[0] += 3700  # past refresh_interval_s (1 h), long before the old nextUpdate (30 days)
    import asyncio
    asyncio.run_coroutine_threadsafe(env.pccs.refresh_due(), env.server.loop).result(60)
    new = json.loads(http(base + "tcb?fmspc=00906ED50000")[2])["tcbInfo"]
    assert new["tcbEvaluationDataNumber"] == 18 and now[0] < old_next_update(old)
    from tests.pccs.conftest import wait_until
    assert wait_until(lambda: env.pccs.platforms.get(env.platform.qe_id.hex().upper(), "0000")["updated_at"]
                      > certs_before)  # the PCK certificates were fetched again for the new evaluation
    f = CollateralClient(PcsOptions(base_url=env.url), verifier=verifier(env)).fetch(env.quote)
    assert verifier(env).verify(env.quote, f.collateral).status == "OutOfDate"
    old_again = CollateralClient(PcsOptions(base_url=env.url, tcb_evaluation_data_number=17),
                                 verifier=verifier(env)).fetch(env.quote)
    assert verifier(env).verify(env.quote, old_again.collateral).status == "SWHardeningNeeded"
    assert b"pccs_tcb_recoveries_total 1.0" in http(env.url + "/metrics")[2]


def old_next_update(tcb: dict) -> float:
    from datetime import datetime
    return datetime.fromisoformat(tcb["nextUpdate"].replace("Z", "+00:00")).timestamp()
