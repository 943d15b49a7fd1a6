"""Our client against real PCS/PCCS responses served over HTTP on loopback: the same verdict as the
file-based path for every real quote in tests/data; Intel PCCS 1.23.0's exact framing (hex, PEM and DER
CRLs, v3 and v4 header names, its 404 body)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from quotehelper.pcs import CollateralClient, PcsCode, PcsError, PcsOptions
from quotehelper.verify import Collateral, TrustAnchor, Verifier, VerifyOptions
from tests.conftest import TESTDATA
from tests.pcs.conftest import ServerThread, enc
from tests.verify.helpers import CASES, POSITIVE

PCCS = TESTDATA / "intel-pccs-responses"


def _recorded(prefix: str) -> tuple[int, dict[str, str], bytes]:
    lines = (PCCS / f"{prefix}.headers.txt").read_bytes().decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.lower() not in ("content-length", "connection", "keep-alive", "date", "etag",
                                         "transfer-encoding"):
            headers[name] = value.strip()
    body = next(p for p in PCCS.glob(f"{prefix}.body.*")).read_bytes()
    return status, headers, body


def _serve(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> ServerThread:
    async def handle(req: web.Request) -> web.Response:
        for key, (status, headers, body) in routes.items():
            path, _, must = key.partition("?")
            if req.path.endswith(path) and all(req.query.get(k) == v for k, v in urllib.parse.parse_qsl(must)):
                return web.Response(body=body, status=status, headers=headers)
        return web.Response(text="No cache data for this platform.", status=404)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return ServerThread(app)


def _verdict(case, coll: Collateral):
    v = Verifier(VerifyOptions(trusted_roots=case.anchors())).verify(case.quote_bytes(), coll, now=case.now)
    return v.valid, v.status, v.advisory_ids


def _client(case, url: str) -> CollateralClient:
    return CollateralClient(PcsOptions(base_url=url), verifier=Verifier(VerifyOptions(trusted_roots=case.anchors())),
                            clock=lambda: case.now)


@pytest.mark.parametrize("crl_form", ["der", "hex", "pem"])
@pytest.mark.parametrize("api", ["v4", "v3"])
def test_intel_pccs_responses_give_the_file_verdict(crl_form: str, api: str) -> None:
    case = CASES["zkdcap"]
    tcb = _recorded("tcb_fmspc_00906ED50000")
    if api == "v3":  # API v3 names the TCB-info chain header SGX-TCB-Info-Issuer-Chain
        tcb = (tcb[0], {("SGX-TCB-Info-Issuer-Chain" if k == "TCB-Info-Issuer-Chain" else k): v
                        for k, v in tcb[1].items()}, tcb[2])
    pck = _recorded("pckcrl_processor_der" if crl_form == "der" else "pckcrl_processor")
    if crl_form == "pem":
        der = bytes.fromhex(pck[2].decode())
        pck = (pck[0], pck[1], x509.load_der_x509_crl(der).public_bytes(Encoding.PEM))
    server = _serve({"/tcb?fmspc=00906ED50000": tcb, "/qe/identity": _recorded("qe_identity"),
                     "/pckcrl?ca=processor": pck, "/rootcacrl": _recorded("rootcacrl")})
    try:
        f = _client(case, server.url + f"/sgx/certification/{api}/").fetch(case.quote_bytes())
    finally:
        server.stop()
    assert _verdict(case, f.collateral) == _verdict(case, case.load()) == (True, case.status, case.advisories)


def test_intel_pccs_404_for_an_unknown_fmspc_is_named() -> None:
    case = CASES["automata-aug2025"]  # FMSPC 00606A000000: not in that PCCS's cache
    server = _serve({"/tcb?fmspc=00906ED50000": _recorded("tcb_fmspc_00906ED50000"),
                     "/tcb?fmspc=00606A000000": _recorded("tcb_unknown_fmspc"), "/rootcacrl": _recorded("rootcacrl")})
    try:
        with pytest.raises(PcsError) as e:
            _client(case, server.url).fetch(case.quote_bytes())
    finally:
        server.stop()
    assert e.value.code is PcsCode.NOT_FOUND and "FMSPC 00606A000000" in e.value.message
    assert e.value.detail["body"] == "No cache data for this platform."


def _pcs_routes(case) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """What a PCS would have answered for this case's collateral (bodies and headers as Intel sends them)."""
    c = case.load()
    tcb_body = b'{"tcbInfo":' + c.tcb_info + b',"signature":"' + c.tcb_info_signature.hex().encode() + b'"}'
    qe_body = b'{"enclaveIdentity":' + c.qe_identity + b',"signature":"' + c.qe_identity_signature.hex().encode() + b'"}'
    tcb_header = "SGX-TCB-Info-Issuer-Chain" if b'"version":2' in c.tcb_info[:40] else "TCB-Info-Issuer-Chain"
    ca = "platform" if b"Platform" in c.pck_crl_issuer_chain or _issuer_is_platform(c) else "processor"
    routes = {"/tcb": (200, {tcb_header: enc(c.tcb_info_issuer_chain)}, tcb_body),
              "/qe/identity": (200, {"SGX-Enclave-Identity-Issuer-Chain": enc(c.qe_identity_issuer_chain)}, qe_body),
              f"/pckcrl?ca={ca}": (200, {"SGX-PCK-CRL-Issuer-Chain": enc(c.pck_crl_issuer_chain)}, c.pck_crl),
              "/rootcacrl": (200, {}, c.root_ca_crl.hex().encode())}
    if c.pck_certificate_chain:  # certification data type 1: the PCK certificate comes from pckcert
        certs = x509.load_pem_x509_certificates(c.pck_certificate_chain)
        from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension

        ext = PckExtension.parse(certs[0].extensions.get_extension_for_oid(
            x509.ObjectIdentifier(SGX_EXTENSION_OID)).value.value)
        routes["/pckcert"] = (200, {
            "SGX-PCK-Certificate-Issuer-Chain": enc(b"".join(x.public_bytes(Encoding.PEM) for x in certs[1:])),
            "SGX-FMSPC": ext.fmspc.hex().upper(), "SGX-PCK-Certificate-CA-Type": ca.upper(),
            "SGX-TCBm": ext.cpusvn.hex().upper() + ext.pcesvn.to_bytes(2, "little").hex().upper()},
            certs[0].public_bytes(Encoding.PEM))
    return routes


def _issuer_is_platform(c: Collateral) -> bool:
    first = x509.load_pem_x509_certificates(c.pck_crl_issuer_chain)[0]
    return "Platform" in first.subject.rfc4514_string()


@pytest.mark.parametrize("case", POSITIVE, ids=[c.id for c in POSITIVE])
def test_every_real_quote_gets_the_file_verdict_through_the_client(case) -> None:
    server = _serve(_pcs_routes(case))
    try:
        f = _client(case, server.url).fetch(case.quote_bytes())
    finally:
        server.stop()
    assert _verdict(case, f.collateral) == _verdict(case, case.load())
    assert _verdict(case, f.collateral)[0]
    if case.id == "intel-qvl-sample":
        assert f.urls["pck_cert"].startswith(server.url + "/sgx/certification/v4/pckcert?")


def test_intel_root_is_the_default_anchor_of_the_cache_key() -> None:
    case = CASES["phala"]
    a = CollateralClient(PcsOptions(base_url="http://127.0.0.1:1"))
    b = CollateralClient(PcsOptions(base_url="http://127.0.0.1:1"),
                         verifier=Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_file(
                             TESTDATA / "custom-pki-selftest/root_ca.der"),))))
    assert a._tag != b._tag and case is not None
    _ = Path
