"""Our certificates, decoded by an independent parser (cbor2 + asn1crypto, none of quotehelper's code),
have the layout of the CCC "Interoperable RA-TLS" documents: evidence, claims, legacy extensions and
endorsements."""

from __future__ import annotations

import hashlib
import json

import cbor2
import pytest
from asn1crypto import crl as acrl
from asn1crypto import pem
from asn1crypto import x509 as ax509

from quotehelper.ratls import RatlsOptions, make_certificate, platform_quoter
from tests.ratls.helpers import DICE_OID, independent_parts

ENDORSEMENTS_OID = "2.23.133.5.4.2"
REPORT_DATA_AT = 48 + 320  # quote header, then the report body's report data (SGX quote v3)
HASH = {1: hashlib.sha256, 7: hashlib.sha384, 8: hashlib.sha512}


def report_data(quote: bytes) -> bytes:
    return quote[REPORT_DATA_AT:REPORT_DATA_AT + 64]


@pytest.mark.parametrize(("curve", "hash_name", "alg_id", "sig_alg", "named_curve"), [
    ("P-256", "sha-256", 1, "sha256_ecdsa", "secp256r1"),
    ("P-384", "sha-384", 7, "sha384_ecdsa", "secp384r1"),
    ("P-384", "sha-512", 8, "sha384_ecdsa", "secp384r1"),
], ids=["p256-sha256", "p384-sha384", "p384-sha512"])
def test_evidence_and_claims_layout(plat, curve, hash_name, alg_id, sig_alg, named_curve):
    creds = make_certificate(platform_quoter(plat), RatlsOptions(curve=curve, pubkey_hash=hash_name),
                             nonce=b"fresh-nonce")
    cert = ax509.Certificate.load(creds.cert_der)
    assert cert["signature_algorithm"]["algorithm"].native == sig_alg
    spki = cert["tbs_certificate"]["subject_public_key_info"]
    assert spki["algorithm"]["parameters"].chosen.native == named_curve
    p = independent_parts(creds.cert_der)
    critical, _ = p["extensions"][DICE_OID]
    assert critical is False                      # as the field writes it (unknown critical = rejected)
    assert p["tag"] == 60000                      # Intel TEE quote
    claims = cbor2.loads(p["claims"])
    assert set(claims) == {"pubkey-hash", "nonce"} and claims["nonce"] == b"fresh-nonce"
    assert all(isinstance(v, bytes) for v in claims.values())  # text keys, byte-string values
    entry = cbor2.loads(claims["pubkey-hash"])    # a byte string holding the CoSWID hash-entry
    assert entry == [alg_id, HASH[alg_id](p["spki"]).digest()]
    assert report_data(p["quote"]) == hashlib.sha256(p["claims"]).digest() + bytes(32)
    assert set(p["extensions"]) == {DICE_OID, "2.5.29.19", "2.5.29.14"}  # nothing else unless asked


def test_without_nonce_the_claims_hold_only_the_key_hash(plat):
    p = independent_parts(make_certificate(platform_quoter(plat)).cert_der)
    assert set(cbor2.loads(p["claims"])) == {"pubkey-hash"}


def test_legacy_extensions(plat):
    intel = independent_parts(make_certificate(platform_quoter(plat), RatlsOptions(legacy_extension="intel")).cert_der)
    assert intel["extensions"]["1.2.840.113741.1.13.1"] == (False, intel["quote"])  # the same quote, as the SDK
    gramine = independent_parts(make_certificate(platform_quoter(plat),
                                                 RatlsOptions(legacy_extension="gramine")).cert_der)
    critical, legacy_quote = gramine["extensions"]["1.2.840.113741.1337.6"]
    assert critical is False and legacy_quote != gramine["quote"]
    assert report_data(legacy_quote) == hashlib.sha256(gramine["spki"]).digest() + bytes(32)


def test_endorsements_layout(plat, sim_collateral):
    p = independent_parts(make_certificate(platform_quoter(plat), collateral=sim_collateral).cert_der)
    critical, value = p["extensions"][ENDORSEMENTS_OID]
    assert critical is False
    tag = cbor2.loads(value)
    assert tag.tag == 60000 and len(tag.value) == 9 and tag.value[0] == 1
    (_, tcb_body, tcb_chain, pck_crl, root_crl, pck_crl_chain, qe_body, qe_chain, created) = tag.value
    assert set(json.loads(tcb_body)) == {"tcbInfo", "signature"}
    assert set(json.loads(qe_body)) == {"enclaveIdentity", "signature"}
    for chain in (tcb_chain, pck_crl_chain, qe_chain):
        assert [pem.unarmor(b)[0] for b in _pem_blocks(chain)] == ["CERTIFICATE"] * len(_pem_blocks(chain)) != []
    issuers = [acrl.CertificateList.load(c)["tbs_cert_list"]["issuer"].human_friendly for c in (pck_crl, root_crl)]
    assert "PCK" in issuers[0] and "Root" in issuers[1]
    assert created.endswith(b"Z") and created[:2] == b"20"


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [b + end for b in data.split(end) if b.strip()]


def test_the_evidence_quote_verifies_with_dcap_qvl(plat):
    """Independent of our verifier too: the quote cbor2 pulls out of our certificate passes dcap-qvl
    against the software platform's root (the report data, read by offset, binds the claims)."""
    dcap_qvl = pytest.importorskip("dcap_qvl")
    import time

    p = independent_parts(make_certificate(platform_quoter(plat), nonce=b"n").cert_der)
    coll = dcap_qvl.QuoteCollateralV3.from_json(plat.collateral().to_dcap_qvl_json())
    result = dcap_qvl.verify_with_root_ca(p["quote"], coll, plat.root_ca_der(), int(time.time()))
    assert result.status == "UpToDate"
    assert report_data(p["quote"]) == hashlib.sha256(p["claims"]).digest() + bytes(32)
