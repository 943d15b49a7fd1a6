"""The real RA-TLS certificates of Gramine, the Intel SGX SDK and rats-tls (tests/data/ratls-testdata):
they parse (Gramine's despite its mis-encoded OID and NULL signature parameter), their bindings check,
and the Gramine and rats-tls quotes verify end to end with the collateral that README names."""

from __future__ import annotations

import hashlib

import pytest

from quotehelper.ratls import FileCollateral, RatlsCode, RatlsOptions, RatlsVerifier
from quotehelper.ratls.formats import parse_certificate
from quotehelper.verify import Policy, Verifier, VerifyOptions
from tests.ratls.helpers import (
    CERTS,
    COLLATERAL_00606A,
    NOW_00606A,
    RATLS_DATA,
    der_of,
    flip,
    independent_parts,
)

LENIENT = Policy(accepted_tcb_statuses=("UpToDate", "OutOfDate"), allow_debug=True)
VERIFIABLE = ("gramine", "rats-tls")


def ratls_verifier(policy: Policy | None = None, **verify_options: object) -> RatlsVerifier:
    # The rats-tls certificate's own validity ended in Feb 2024, before the collateral's "now".
    return RatlsVerifier(RatlsOptions(policy=policy, check_cert_dates=False),
                         verifier=Verifier(VerifyOptions(**verify_options)),  # type: ignore[arg-type]
                         collateral=FileCollateral(COLLATERAL_00606A))


@pytest.mark.parametrize("name", list(CERTS))
def test_each_certificate_parses_and_its_evidence_is_found(name):
    _, curve, formats, _ = CERTS[name]
    pc = parse_certificate(der_of(name))
    assert pc.self_issued and pc.signature_hash == "sha256"
    assert curve in {"secp384r1": "P-384", "secp256r1": "P-256"} and pc.spki == independent_parts(pc.der)["spki"]
    names = {"dice": "dice-evidence", "gramine-legacy": "gramine-quote", "intel-legacy": "intel-quote"}
    assert {names[f] for f in formats} <= set(pc.extensions)
    assert all(not critical for critical, _ in pc.extensions.values())


@pytest.mark.parametrize("name", list(CERTS))
def test_bindings_hold_and_the_default_policy_decides(name):
    result = ratls_verifier().verify(der_of(name), now=NOW_00606A)
    assert result.formats == CERTS[name][2]
    assert result.spki_sha256 == hashlib.sha256(independent_parts(der_of(name))["spki"]).hexdigest()
    if name in VERIFIABLE:
        # A debug enclave with an OutOfDate TCB: refused by default for being debug.
        assert result.code == "POLICY_REJECTED", result.summary()
        assert [r["rule"] for r in result.error.detail["rules"]] == ["debug"]
        assert result.verdict.valid and result.verdict.status == "OutOfDate" and result.identity.debug
    else:
        # FMSPC 00706A100000, Processor CA: no collateral here, so revocation status is unknown.
        assert result.code == "QUOTE_INVALID" and result.error.detail["verify_code"] == "CRL_MISSING"


@pytest.mark.parametrize("name", VERIFIABLE)
def test_gramine_and_rats_tls_are_accepted_by_a_policy_allowing_debug_and_out_of_date(name):
    result = ratls_verifier(LENIENT).verify(der_of(name), now=NOW_00606A)
    assert result.ok, result.summary()
    assert result.verdict.status == "OutOfDate" and result.verdict.fmspc == CERTS[name][3]
    assert result.collateral_from == "source" and result.identity.mr_enclave == result.verdict.enclave.mr_enclave
    # Debug allowed but only UpToDate accepted: refused for the TCB status alone.
    strict = ratls_verifier(Policy(allow_debug=True)).verify(der_of(name), now=NOW_00606A)
    assert strict.code == "POLICY_REJECTED" and [r["rule"] for r in strict.error.detail["rules"]] == ["tcb_status"]


def test_intel_sdk_quote_checks_up_to_its_missing_tcb_collateral():
    """Without revocation checks the Intel SDK quote passes its PCK chain and both signatures and stops
    where the collateral is for another platform (what the README says can and cannot be checked)."""
    result = ratls_verifier(LENIENT, check_revocation=False).verify(der_of("intel-sgxsdk"), now=NOW_00606A)
    assert result.code == "QUOTE_INVALID" and result.error.detail["verify_code"] == "TCB_INFO_MISMATCH"


def _parts(name: str) -> dict:
    return independent_parts(der_of(name))


TAMPER = {  # what changes -> (the bytes to change one of, offset in them, expected code)
    "key": (lambda p: p["spki"], -3, "KEY_BINDING_MISMATCH"),
    "claims": (lambda p: p["claims"], -2, "CLAIMS_BINDING_MISMATCH"),
    "quote-report": (lambda p: p["quote"], 48 + 64, "QUOTE_INVALID"),       # MRENCLAVE in the report body
    "quote-signature": (lambda p: p["quote"], 436 + 10, "QUOTE_INVALID"),  # the ISV signature
}


@pytest.mark.parametrize("what", list(TAMPER))
@pytest.mark.parametrize("name", list(CERTS))
def test_a_one_byte_change_is_refused_with_a_named_reason(name, what):
    pick, offset, code = TAMPER[what]
    bad = flip(der_of(name), pick(_parts(name)), offset)
    verify_options = {} if name in VERIFIABLE else {"check_revocation": False}
    result = ratls_verifier(LENIENT, **verify_options).verify(bad, now=NOW_00606A)
    assert result.code == code, result.summary()
    if code == "QUOTE_INVALID":
        assert result.error.detail["verify_code"] == "ISV_SIGNATURE_INVALID"
    assert RatlsCode(result.code) in RatlsCode


def test_a_changed_self_signature_is_refused():
    der = der_of("rats-tls")
    sig = parse_certificate(der).signature
    result = ratls_verifier(LENIENT).verify(flip(der, sig, -1), now=NOW_00606A)
    assert result.code == "CERT_SIGNATURE_INVALID"


def test_certificate_dates_are_checked_by_default():
    result = RatlsVerifier(RatlsOptions(policy=LENIENT), collateral=FileCollateral(COLLATERAL_00606A)).verify(
        der_of("rats-tls"), now=NOW_00606A)
    assert result.code == "CERT_EXPIRED"


@pytest.mark.parametrize("name", list(CERTS))
def test_openssl_hands_the_verify_callback_the_exact_bytes(name):
    """The TLS path: OpenSSL (which, unlike `cryptography`, loads Gramine's NULL-parameter signature
    algorithm) gives the verify callback the certificate byte for byte, so the bindings hash the
    same SubjectPublicKeyInfo."""
    from OpenSSL import crypto

    pem_text = (RATLS_DATA / CERTS[name][0]).read_bytes()
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, crypto.load_certificate(crypto.FILETYPE_PEM, pem_text))
    assert der == der_of(name)


def test_now_is_unix_seconds_or_an_aware_datetime():
    from datetime import datetime

    from quotehelper.inputs import InputError

    seconds = ratls_verifier(LENIENT).verify(der_of("rats-tls"), now=1755236700)
    assert seconds.ok and seconds.verdict.status == "OutOfDate"
    with pytest.raises(InputError):
        ratls_verifier(LENIENT).verify(der_of("rats-tls"), now=datetime(2025, 8, 15))  # naive: ambiguous
