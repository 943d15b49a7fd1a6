"""Canned data for the RA-TLS tests: the real certificates' facts (tests/data/ratls-testdata/README.md)
and byte-level tampering that keeps the DER well-formed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cbor2
from asn1crypto import pem
from asn1crypto import x509 as ax509

DATA = Path(__file__).resolve().parents[1] / "data"
RATLS_DATA = DATA / "ratls-testdata"
# The collateral that README names for the Gramine and rats-tls quotes (FMSPC 00606A000000), and its "now".
COLLATERAL_00606A = DATA / "dcap-testdata" / "automata-dcap-attestation" / "dcap_qvl_collateral_sgx_00606A000000.json"
NOW_00606A = datetime.fromtimestamp(1755236700, UTC)

CERTS = {  # name -> (file, key curve, evidence formats, FMSPC)
    "gramine": ("gramine-cert.pem", "secp384r1", ("dice", "gramine-legacy"), "00606A000000"),
    "intel-sgxsdk": ("intel-sgxsdk-cert.pem", "secp384r1", ("dice", "intel-legacy"), "00706A100000"),
    "rats-tls": ("rats-tls-cert.pem", "secp256r1", ("dice",), "00606A000000"),
}
DICE_OID = "2.23.133.5.4.9"
MR_SERVER = bytes.fromhex("5e" * 32)   # simulated enclave identities of our own tests
MR_CLIENT = bytes.fromhex("c1" * 32)
MR_OTHER = bytes.fromhex("07" * 32)


def der_of(name: str) -> bytes:
    return pem.unarmor((RATLS_DATA / CERTS[name][0]).read_bytes())[2]


def independent_parts(der: bytes) -> dict:
    """SPKI, evidence quote and claims buffer of a certificate, read with asn1crypto + cbor2 only."""
    tbs = ax509.Certificate.load(der)["tbs_certificate"]
    out: dict = {"spki": tbs["subject_public_key_info"].dump(), "extensions": {}}
    for e in tbs["extensions"]:
        out["extensions"][e["extn_id"].dotted] = (e["critical"].native, e["extn_value"].contents)
    tag = cbor2.loads(out["extensions"][DICE_OID][1])
    out["tag"], (out["quote"], out["claims"]) = tag.tag, tag.value
    return out


def flip(der: bytes, part: bytes, offset: int) -> bytes:
    """`der` with one byte of `part` changed at `offset` (negative: from its end). If `part` occurs twice
    (the Intel SDK's quote, legacy extension then DICE evidence), the last occurrence is changed."""
    at = der.rfind(part)
    assert at >= 0
    i = at + (offset % len(part))
    return der[:i] + bytes([der[i] ^ 0x01]) + der[i + 1:]
