"""The simulated Intel PCS over real HTTP, checked by clients that are not ours: dcap-qvl's own
`get_collateral` (in a child process: its runtime can crash the interpreter at exit) and Intel's QVL on
collateral our client fetched; PCS's routes, headers and statuses as Intel sends them."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
import sgx_dcap_quote_verify as intel_qvl
from cryptography import x509

from quotehelper.pcs import CollateralClient, PcsOptions
from quotehelper.platform.sim.tcbeval import encrypted_ppid
from quotehelper.sgx.quote import parse_quote
from tests.platform.oracles import INTEL_STATUS

_DCAP_CHILD = r"""
import asyncio, json, os, sys, time, dcap_qvl
quote, root = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
async def main():
    c = await dcap_qvl.get_collateral(sys.argv[1], quote)
    r = dcap_qvl.verify_with_root_ca(quote, c, root, int(time.time()))
    return {"status": r.status, "advisories": list(r.advisory_ids)}
try:
    out = asyncio.run(main())
except Exception as e:
    out = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out), flush=True)
os._exit(0)
"""


def dcap_qvl_get_collateral(url: str, quote: bytes, root_der: bytes, tmp_path) -> dict:
    (tmp_path / "q.bin").write_bytes(quote)
    (tmp_path / "root.der").write_bytes(root_der)
    r = subprocess.run([sys.executable, "-c", _DCAP_CHILD, url, str(tmp_path / "q.bin"), str(tmp_path / "root.der")],
                       capture_output=True, text=True, timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("status", ["UpToDate", "SWHardeningNeeded", "OutOfDate", "ConfigurationNeeded"])
def test_dcap_qvl_get_collateral_from_our_pcs_verifies(make_sim_env, status, tmp_path) -> None:
    env = make_sim_env(tcb_status=status)
    got = dcap_qvl_get_collateral(env.url, env.quote, env.platform.root_ca_der(), tmp_path)
    assert got == {"status": status, "advisories": env.platform.advisory_ids}


def test_dcap_qvl_agrees_after_a_tcb_recovery(sim_env, tmp_path) -> None:
    from quotehelper.platform.sim.tcbeval import recover

    recover(sim_env.platform.pki_dir)
    got = dcap_qvl_get_collateral(sim_env.url, sim_env.quote, sim_env.platform.root_ca_der(), tmp_path)
    assert got == {"status": "OutOfDate", "advisories": ["INTEL-SA-01153"]}


@pytest.mark.parametrize("status", ["UpToDate", "SWHardeningNeeded", "OutOfDate"])
def test_intel_qvl_verifies_with_collateral_our_client_fetched(make_sim_env, status) -> None:
    env = make_sim_env(tcb_status=status, ca="platform" if status == "OutOfDate" else "processor")
    c = CollateralClient(PcsOptions(base_url=env.url), verifier=env.verifier()).fetch(env.quote).collateral
    chain = parse_quote(env.quote).certification_data.pck_chain_pem()

    def crl_pem(der: bytes) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding
        return x509.load_der_x509_crl(der).public_bytes(Encoding.PEM).decode()

    tcb_body = '{"tcbInfo":' + c.tcb_info.decode() + ',"signature":"' + c.tcb_info_signature.hex() + '"}'
    qe_body = '{"enclaveIdentity":' + c.qe_identity.decode() + ',"signature":"' + c.qe_identity_signature.hex() + '"}'
    r = intel_qvl.verify(env.platform.root_ca_pem().decode(), chain[0].decode(), b"".join(chain[1:]).decode(),
                         crl_pem(c.root_ca_crl), crl_pem(c.pck_crl), tcb_body, c.tcb_info_issuer_chain.decode(),
                         env.quote, qe_body, dt.datetime.now(dt.UTC).replace(tzinfo=None))
    assert (r.pck_certificate_status.name, r.tcb_info_status.name, r.qe_identity_status.name) == ("STATUS_OK",) * 3
    assert r.quote_status.name == INTEL_STATUS[status]


def test_the_test_pki_keeps_intels_exact_ca_names(sim_env) -> None:
    pki = sim_env.platform.pki
    cn = x509.NameOID.COMMON_NAME
    names = {c.subject.get_attributes_for_oid(cn)[0].value for c in
             (pki.root_cert, pki.ca_cert("processor"), pki.ca_cert("platform"), pki.tcb_signing_cert)}
    assert names == {"Intel SGX Root CA", "Intel SGX PCK Processor CA", "Intel SGX PCK Platform CA",
                     "Intel SGX TCB Signing"}
    leaf = sim_env.platform.pck_cert
    assert leaf.subject.get_attributes_for_oid(cn)[0].value == "Intel SGX PCK Certificate"
    # ... and its CRL distribution points name the simulated PCS, not Intel's hosts
    cdp = pki.root_cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://127.0.0.1:8082/IntelSGXRootCA.der"


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_pckcert_answers_qcnls_request_shape(sim_env) -> None:
    p = sim_env.platform
    base = sim_env.url + "/sgx/certification/v4/"
    cpusvn, pcesvn = p.cpu.cpu_svn.hex().upper(), int(p.config["pce_svn"]).to_bytes(2, "little").hex().upper()
    enc = encrypted_ppid(bytes.fromhex(p.config["ppid"])).hex().upper()
    q = {"qeid": p.qe_id.hex().upper(), "encrypted_ppid": enc, "cpusvn": cpusvn, "pcesvn": pcesvn, "pceid": "0000"}
    status, headers, body = _get(base + "pckcert?" + urllib.parse.urlencode(q))
    assert status == 200 and x509.load_pem_x509_certificate(body) == p.pck_cert
    assert headers["SGX-TCBm"] == cpusvn + pcesvn and headers["SGX-FMSPC"] == p.config["fmspc"]
    assert headers["SGX-PCK-Certificate-CA-Type"] == "PROCESSOR" and len(headers["Request-ID"]) == 32
    chain = urllib.parse.unquote(headers["SGX-PCK-Certificate-Issuer-Chain"]).encode()
    assert x509.load_pem_x509_certificates(chain)[-1] == p.pki.root_cert
    # a raw TCB below the certificate's: no certificate (404); by QE ID alone (all-zero PPID) it is found too
    low = {**q, "cpusvn": "00" * 16}
    assert _get(base + "pckcert?" + urllib.parse.urlencode(low))[0] == 404
    assert _get(base + "pckcert?" + urllib.parse.urlencode({**q, "encrypted_ppid": "0" * 768}))[0] == 200
    bad = _get(base + "pckcert?" + urllib.parse.urlencode({**q, "cpusvn": "XYZ"}))
    assert bad[0] == 400 and bad[1]["Error-Code"] == "InvalidRequestSyntax"


def test_pckcerts_needs_the_api_key(sim_env) -> None:
    p = sim_env.platform
    enc = encrypted_ppid(bytes.fromhex(p.config["ppid"])).hex().upper()
    url = sim_env.url + f"/sgx/certification/v4/pckcerts?encrypted_ppid={enc}&pceid=0000"
    assert _get(url)[0] == 401
    status, headers, body = _get(url, {"Ocp-Apim-Subscription-Key": "k"})
    rows = json.loads(body)
    assert status == 200 and headers["SGX-FMSPC"] == p.config["fmspc"] and len(rows) == 1
    assert x509.load_pem_x509_certificate(urllib.parse.unquote(rows[0]["cert"]).encode()) == p.pck_cert
    assert rows[0]["tcb"]["pcesvn"] == int(p.config["pce_svn"]) and len(rows[0]["tcbm"]) == 36


def test_routes_and_statuses(sim_env) -> None:
    base = sim_env.url + "/sgx/certification/v4/"
    fmspc = sim_env.platform.config["fmspc"]
    status, headers, body = _get(base + f"tcb?fmspc={fmspc}")
    assert status == 200 and body.startswith(b'{"tcbInfo":{"id":"SGX","version":3')
    assert headers["TCB-Info-Issuer-Chain"].startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert _get(base + "tcb?fmspc=00606A000000")[0] == 404
    assert _get(base + f"tcb?fmspc={fmspc}&update=sometimes")[0] == 400
    assert _get(base + f"tcb?fmspc={fmspc}&update=early&tcbEvaluationDataNumber=17")[0] == 400
    assert _get(base + "pckcrl?ca=processor")[2].startswith(b"-----BEGIN X509 CRL-----")
    assert _get(base + "pckcrl?ca=processor&encoding=der")[2][:1] == b"\x30"
    assert _get(base + "pckcrl?ca=elsewhere")[0] == 400
    assert json.loads(_get(base + "qve/identity")[2])["enclaveIdentity"]["id"] == "QVE"
    nums = json.loads(_get(base + "tcbevaluationdatanumbers")[2])["tcbEvaluationDataNumbers"]
    assert [n["tcbEvaluationDataNumber"] for n in nums["tcbEvalNumbers"]] == [17]
    assert _get(sim_env.url + "/tdx/certification/v4/tcb?fmspc=" + fmspc)[0] == 404
    root_crl = x509.load_der_x509_crl(_get(sim_env.url + "/IntelSGXRootCA.der")[2])
    assert root_crl.is_signature_valid(sim_env.platform.pki.root_cert.public_key())
