"""Collateral input: dcap-qvl JSON, raw PCS v4 bodies + URL-encoded issuer-chain headers, exact signed bytes,
and every collateral item checked (signatures over the exact bytes, chains, CRLs)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from quotehelper.verify import Collateral, ErrorCode, VerificationError, Verifier, load_collateral
from quotehelper.verify.collateral import decode_issuer_chain, split_signed_body
from tests.verify.helpers import CASES, dcap_verify, path

ROOT_PEM = path("intel-root/Intel_SGX_Root_CA.pem").read_bytes()


def _pcs_folder(tmp: Path) -> Path:
    """zkdcap's raw PCS responses saved as a PCS client would: bodies as received, headers URL-encoded."""
    d = tmp / "pcs"
    d.mkdir()
    z = path("zkdcap")
    (d / "tcb_info.json").write_bytes((z / "tcbinfov3_00906ED50000.json").read_bytes())
    (d / "qe_identity.json").write_bytes((z / "qeidentityv2_sgx.json").read_bytes())
    (d / "pckcrl.der").write_bytes((z / "pck_processor_crl.der").read_bytes())
    (d / "rootcrl.der").write_bytes((z / "intel_root_ca_crl.der").read_bytes())
    tcb_chain = (z / "tcb_signing_cert.pem").read_bytes() + ROOT_PEM
    pck_chain = path("intel-root/Intel_SGX_PCK_Processor_CA.pem").read_bytes() + ROOT_PEM
    (d / "TCB-Info-Issuer-Chain").write_text(urllib.parse.quote(tcb_chain.decode(), safe=""))
    (d / "SGX-Enclave-Identity-Issuer-Chain").write_text(urllib.parse.quote(tcb_chain.decode(), safe=""))
    (d / "SGX-PCK-CRL-Issuer-Chain").write_text(urllib.parse.quote(pck_chain.decode(), safe=""))
    return d


def test_pcs_folder_gives_the_same_signed_bytes_and_result(tmp_path: Path) -> None:
    case = CASES["zkdcap"]
    pcs = load_collateral(_pcs_folder(tmp_path))
    ref = case.load()
    assert (pcs.tcb_info, pcs.tcb_info_signature) == (ref.tcb_info, ref.tcb_info_signature)
    assert (pcs.qe_identity, pcs.qe_identity_signature) == (ref.qe_identity, ref.qe_identity_signature)
    assert (pcs.root_ca_crl, pcs.pck_crl) == (ref.root_ca_crl, ref.pck_crl)
    v = Verifier().verify(case.quote_bytes(), pcs, now=case.when())
    assert (v.status, v.advisory_ids) == (case.status, case.advisories)


def test_from_pcs_takes_header_values_as_sent() -> None:
    z = path("zkdcap")
    g = path("go-tdx-guest")
    coll = Collateral.from_pcs(
        tcb_info_body=(z / "tcbinfov3_00906ED50000.json").read_bytes(),
        tcb_info_issuer_chain=(g / "header_TCB-Info-Issuer-Chain.urlencoded.txt").read_text(),
        qe_identity_body=(z / "qeidentityv2_sgx.json").read_text(),
        pck_crl=(z / "pck_processor_crl.der").read_bytes(),
        pck_crl_issuer_chain=(g / "header_SGX-PCK-CRL-Issuer-Chain.urlencoded.txt").read_text(),
        root_ca_crl=(z / "intel_root_ca_crl.der").read_bytes())
    assert coll.qe_identity_issuer_chain == coll.tcb_info_issuer_chain
    assert b"%" not in coll.tcb_info_issuer_chain and coll.tcb_info == CASES["zkdcap"].load().tcb_info


@pytest.mark.parametrize("name", ["TCB-Info-Issuer-Chain", "SGX-PCK-CRL-Issuer-Chain",
                                  "SGX-Enclave-Identity-Issuer-Chain"])
def test_url_encoded_headers_decode_to_the_pem(name: str) -> None:
    g = path("go-tdx-guest")
    pem = decode_issuer_chain((g / f"header_{name}.urlencoded.txt").read_text())
    want = x509.load_pem_x509_certificates((g / f"header_{name}.pem").read_bytes())
    assert x509.load_pem_x509_certificates(pem) == want


def test_dcap_qvl_json_round_trip() -> None:
    text = path(CASES["phala"].collateral).read_text()
    coll = Collateral.from_dcap_qvl_json(text)
    again = Collateral.from_dcap_qvl_json(coll.to_dcap_qvl_json())
    assert again == coll and again.content_hash == coll.content_hash
    assert json.loads(coll.to_dcap_qvl_json())["tcb_info"] == json.loads(text)["tcb_info"]


def test_signed_member_is_cut_byte_exactly() -> None:
    body = b'{ "signature" : "' + b"ab" * 64 + b'",\n "tcbInfo":{"a": 1,  "b":[1, 2]} }'
    signed, sig = split_signed_body(body, "tcbInfo", "x")
    assert signed == b'{"a": 1,  "b":[1, 2]}' and sig == bytes.fromhex("ab" * 64)


def test_pretty_printed_tcb_info_fails_its_signature() -> None:
    """dstack-teekit: compact PCS bodies verify; the two pretty-printed by the upstream author cannot."""
    signer = x509.load_pem_x509_certificate(path("intel-root/Intel_SGX_TCB_Signing_2025-05-06.pem").read_bytes())
    folder = path("dstack-teekit/sampleTcbInfos")
    for fmspc, ok in (("00906ed50000", True), ("30606a000000", False), ("90c06f000000", False)):
        signed, sig = split_signed_body((folder / f"tcbInfo-sgx-{fmspc}.json").read_bytes(), "tcbInfo", fmspc)
        if ok:
            Verifier._check_signed(signer, signed, sig, "TCB info", ErrorCode.TCB_INFO_SIGNATURE_INVALID)
        else:
            with pytest.raises(VerificationError) as e:
                Verifier._check_signed(signer, signed, sig, "TCB info", ErrorCode.TCB_INFO_SIGNATURE_INVALID)
            assert e.value.code is ErrorCode.TCB_INFO_SIGNATURE_INVALID


@pytest.mark.parametrize("name,key", [("00906ea10000.tcb", "raw_tcb_info"), ("qe3_identity.id", "raw_enclave_identity")])
def test_fortanix_corrupted_collateral_fails_its_signature(name: str, key: str) -> None:
    """Fortanix 'corrupted' set: issueDate changed to year 3000, signature left as is (DER there)."""
    for folder, ok in (("fortanix-rust-sgx-pcs", True), ("fortanix-rust-sgx-pcs/corrupted", False)):
        d = json.loads(path(f"{folder}/{name}").read_text())
        r, s = decode_dss_signature(bytes(d["signature"]))
        signer = x509.load_pem_x509_certificate(d["ca_chain"][0].encode())
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        code = ErrorCode.TCB_INFO_SIGNATURE_INVALID
        if ok:
            Verifier._check_signed(signer, d[key].encode(), raw, name, code)
        else:
            assert '"issueDate":"3000' in d[key]
            with pytest.raises(VerificationError):
                Verifier._check_signed(signer, d[key].encode(), raw, name, code)


def _with(coll: Collateral, **changes: bytes) -> Collateral:
    return Collateral(**{**{k: v for k, v in coll.__dict__.items() if k != "content_hash"}, **changes})


def _flip(b: bytes, pos: int) -> bytes:
    out = bytearray(b)
    out[pos] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("item,pos,codes", [
    ("tcb_info", 10, {ErrorCode.TCB_INFO_SIGNATURE_INVALID}),
    ("tcb_info_signature", 5, {ErrorCode.TCB_INFO_SIGNATURE_INVALID}),
    ("qe_identity", 30, {ErrorCode.QE_IDENTITY_SIGNATURE_INVALID}),
    ("qe_identity_signature", 40, {ErrorCode.QE_IDENTITY_SIGNATURE_INVALID}),
    ("root_ca_crl", -20, {ErrorCode.CRL_SIGNATURE_INVALID}),
    ("pck_crl", -20, {ErrorCode.CRL_SIGNATURE_INVALID}),
    ("root_ca_crl", 60, {ErrorCode.CRL_SIGNATURE_INVALID, ErrorCode.COLLATERAL_MALFORMED}),
])
def test_each_collateral_item_is_checked(item: str, pos: int, codes: set[ErrorCode]) -> None:
    case = CASES["phala"]
    coll = case.load()
    bad = _with(coll, **{item: _flip(getattr(coll, item), pos)})
    v = Verifier().verify(case.quote_bytes(), bad, now=case.when())
    assert not v.valid and v.error.code in codes, v.error


def test_tcb_signing_chain_must_reach_the_root() -> None:
    """A TCB-info chain that ends in another root is refused."""
    case = CASES["phala"]
    coll = case.load()
    other_root = x509.load_der_x509_certificate(path("custom-pki-selftest/root_ca.der").read_bytes())
    bad = _with(coll, tcb_info_issuer_chain=other_root.public_bytes(serialization.Encoding.PEM))
    v = Verifier().verify(case.quote_bytes(), bad, now=case.when())
    assert v.error.code is ErrorCode.ROOT_NOT_TRUSTED and v.error.detail["chain"] == "tcb_info_issuer_chain"


def test_expired_root_crl_is_reported() -> None:
    """zkdcap's root CA CRL ends 2025-04-03; later instants fail on it, as in dcap-qvl."""
    case = CASES["zkdcap"]
    v = case.verify(now=1748000000)  # 2025-05-23
    assert v.error.code is ErrorCode.CRL_EXPIRED and v.error.detail["crl"] == "root CA CRL"
    with pytest.raises(ValueError):
        dcap_verify(case, now=1748000000)


@pytest.mark.parametrize("text,field", [
    ("[]", None), ("{}", "missing"), ('{"pck_crl_issuer_chain": 1}', "missing"), ("not json", None)])
def test_malformed_dcap_json(text: str, field: str | None) -> None:
    with pytest.raises(VerificationError) as e:
        Collateral.from_dcap_qvl_json(text)
    assert e.value.code is ErrorCode.COLLATERAL_MALFORMED
    if field:
        assert field in e.value.detail


def test_bad_hex_and_signature_length() -> None:
    d = json.loads(path(CASES["phala"].collateral).read_text())
    for key, value in (("pck_crl", "zz"), ("tcb_info_signature", "00" * 63)):
        with pytest.raises(VerificationError) as e:
            Collateral.from_dcap_qvl_json(json.dumps({**d, key: value}))
        assert e.value.code is ErrorCode.COLLATERAL_MALFORMED and e.value.detail["field"] == key


def test_pcs_folder_missing_pieces(tmp_path: Path) -> None:
    d = _pcs_folder(tmp_path)
    (d / "qe_identity.json").unlink()
    with pytest.raises(VerificationError) as e:
        load_collateral(d)
    assert e.value.code is ErrorCode.COLLATERAL_MALFORMED
