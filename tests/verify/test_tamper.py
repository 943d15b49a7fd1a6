"""Every single-byte change in a valid quote is rejected, with a code that names the right check.

Sweeps every byte of a real Intel-signed quote (phala `sgx_quote`, 4600 bytes) and of a quote from the
software platform: header, body, both signatures, attestation key, QE report, QE auth data and its
length, certification-data header and the PEM PCK chain (including its trailing NUL).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from quotehelper.platform.sim import SimPlatform
from quotehelper.verify import Collateral, ErrorCode, TrustAnchor, Verifier, VerifyOptions
from tests.verify.helpers import CASES

# cryptography warns about tampered name attributes (e.g. a 25-byte country name); expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Attribute.s length:UserWarning")
E = ErrorCode
CHAIN = {E.PCK_CHAIN_MALFORMED, E.CERT_SIGNATURE_INVALID, E.CERT_ISSUER_MISMATCH, E.ROOT_NOT_TRUSTED,
         E.PCK_EXTENSION_MALFORMED, E.CERT_EXPIRED, E.CERT_NOT_YET_VALID, E.CERT_NOT_CA, E.CERT_IS_CA,
         E.CERT_PATH_TOO_LONG, E.CRL_MISSING, E.QUOTE_MALFORMED}


def regions(size: int) -> list[tuple[str, int, int, set[ErrorCode]]]:
    """Byte ranges of a v3 quote with 32-byte QE auth data and the codes a change there may produce."""
    return [
        ("header", 0, 48, {E.QUOTE_MALFORMED, E.QUOTE_UNSUPPORTED, E.QE_VENDOR_UNKNOWN, E.ISV_SIGNATURE_INVALID}),
        ("body", 48, 432, {E.ISV_SIGNATURE_INVALID}),
        ("signature_data_len", 432, 436, {E.QUOTE_MALFORMED}),
        ("isv_signature", 436, 500, {E.ISV_SIGNATURE_INVALID}),
        ("attest_pub_key", 500, 564, {E.QE_REPORT_DATA_MISMATCH}),
        ("qe_report", 564, 948, {E.QE_REPORT_SIGNATURE_INVALID}),
        ("qe_report_signature", 948, 1012, {E.QE_REPORT_SIGNATURE_INVALID}),
        ("qe_auth_data_size", 1012, 1014, {E.QUOTE_MALFORMED}),
        ("qe_auth_data", 1014, 1046, {E.QE_REPORT_DATA_MISMATCH}),
        ("certification_data_header", 1046, 1052, {E.QUOTE_MALFORMED, E.CERT_DATA_UNSUPPORTED}),
        ("pck_chain", 1052, size, CHAIN),
    ]


def sweep(verifier: Verifier, quote: bytes, collateral, now, deltas=(0x01,)) -> dict[str, set[str]]:  # noqa: ANN001
    seen: dict[str, set[str]] = {}
    for name, start, end, allowed in regions(len(quote)):
        for pos in range(start, end):
            for delta in deltas:
                bad = bytearray(quote)
                bad[pos] ^= delta
                v = verifier.verify(bytes(bad), collateral, now=now)
                assert not v.valid, f"{name}: byte {pos} ^ {delta:#x} still verifies"
                assert v.error.code in allowed, f"{name}: byte {pos} ^ {delta:#x} -> {v.error.code}: {v.error.message}"
                seen.setdefault(name, set()).add(v.error.code.value)
    return seen


def test_every_byte_of_a_real_quote() -> None:
    case = CASES["phala"]
    quote, coll = case.quote_bytes(), case.load()
    verifier = Verifier()
    assert verifier.verify(quote, coll, now=case.when()).valid
    start = time.perf_counter()
    seen = sweep(verifier, quote, coll, case.when())
    assert len(seen) == 11
    assert seen["body"] == {"ISV_SIGNATURE_INVALID"} and seen["qe_report"] == {"QE_REPORT_SIGNATURE_INVALID"}
    assert time.perf_counter() - start < 120  # generous: a shared CI box; typically a few seconds


def test_other_byte_values_at_sampled_positions() -> None:
    """Not only bit 0: several replacement values at positions spread over every region."""
    case = CASES["zkdcap"]
    quote, coll = case.quote_bytes(), case.load()
    verifier = Verifier()
    for name, start, end, allowed in regions(len(quote)):
        for pos in sorted({start, (start + end) // 2, end - 1}):
            for delta in (0x80, 0xFF, 0x20):
                bad = bytearray(quote)
                bad[pos] ^= delta
                v = verifier.verify(bytes(bad), coll, now=case.when())
                assert not v.valid and v.error.code in allowed, (name, pos, delta, v.error)


def test_appended_and_truncated_bytes() -> None:
    case = CASES["phala"]
    quote, coll = case.quote_bytes(), case.load()
    v = Verifier()
    assert v.verify(quote + b"\0" * 16, coll, now=case.when()).valid  # AESM-style zero padding
    assert v.verify(quote + b"\x01", coll, now=case.when()).error.code is E.QUOTE_MALFORMED
    assert v.verify(quote[:-1], coll, now=case.when()).error.code is E.QUOTE_MALFORMED


@pytest.fixture(scope="module")
def sim_quote(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, object, TrustAnchor]:
    plat = SimPlatform.create(Path(tmp_path_factory.mktemp("sim")) / "platform", tcb_status="UpToDate")
    quote = plat.quote(b"tamper test".ljust(64, b"\0"))
    coll = Collateral.from_dcap_qvl_json(plat.collateral().to_dcap_qvl_json())
    return quote, coll, TrustAnchor.from_bytes(plat.root_ca_der())


def test_every_byte_of_a_simulated_quote(sim_quote) -> None:  # noqa: ANN001
    quote, coll, root = sim_quote
    verifier = Verifier(VerifyOptions(trusted_roots=(root,)))
    assert verifier.verify(quote, coll).valid
    seen = sweep(verifier, quote, coll, None)
    assert {"QE_REPORT_DATA_MISMATCH", "ISV_SIGNATURE_INVALID", "QE_REPORT_SIGNATURE_INVALID"} <= set().union(
        *seen.values())
