"""Every SGX quote with collateral in tests/data/dcap-testdata: the status and advisories its folder README
states, the same answer as dcap-qvl (same inputs, same test) and, where noted, Intel's QVL; and every
negative sample rejected for the documented reason."""

from __future__ import annotations

from datetime import UTC, datetime

import dcap_qvl
import pytest
from cryptography import x509

from quotehelper.verify import (
    ErrorCode,
    Kind,
    Policy,
    TrustAnchor,
    VerificationError,
    Verifier,
    VerifyOptions,
    load_collateral,
)
from tests.verify.helpers import CASES, POSITIVE, QVL_STATUS, Case, dcap_verify, intel_qvl_verify, path


@pytest.mark.parametrize("case", POSITIVE, ids=lambda c: c.id)
def test_status_and_advisories_match_readme_and_dcap_qvl(case: Case) -> None:
    v = case.verify()
    assert v.valid, v.error
    assert v.accepted  # no policy: any non-revoked status of a non-debug enclave
    assert (v.status, v.advisory_ids) == (case.status, case.advisories)
    if case.dcap_can_parse:
        ref = dcap_verify(case)
        assert (v.status, list(v.advisory_ids)) == (ref.status, ref.advisory_ids)
        assert v.ppid == ref.ppid.hex()
    else:
        with pytest.raises(ValueError):  # documented: dcap-qvl cannot take this sample
            dcap_verify(case)


@pytest.mark.parametrize("case", POSITIVE, ids=lambda c: c.id)
def test_intel_qvl_agrees(case: Case) -> None:
    """Intel's QVL (~15 ms a call) on every sample, incl. TCB info v2 and the two test-root PKIs."""
    v = case.verify()
    ref = intel_qvl_verify(case)
    assert ref.pck_certificate_status.name == "STATUS_OK"
    assert ref.tcb_info_status.name == "STATUS_OK" and ref.qe_identity_status.name == "STATUS_OK"
    assert ref.quote_status.name == QVL_STATUS[v.status]


def test_verdict_fields_phala() -> None:
    v = CASES["phala"].verify()
    assert (v.fmspc, v.pce_id, v.ca_type, v.quote_version) == ("00A067110000", "0000", "processor", 3)
    assert (v.platform_status, v.qe_status) == ("ConfigurationAndSWHardeningNeeded", "UpToDate")
    assert v.tcb_level is not None and v.tcb_level.pcesvn == 13
    assert v.tcb_date == datetime(2024, 3, 13, tzinfo=UTC)
    e = v.enclave
    assert e is not None and not e.debug
    assert e.mr_enclave.hex() == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert e.report_data.startswith(b"Hello, world!")
    d = v.to_dict()
    assert d["code"] is None and d["collateral_validity"]["not_after"] == "2025-07-19T10:01:18Z"


def test_platform_ca_quote_reports_platform_ca() -> None:
    v = CASES["automata-aug2025"].verify()
    assert v.ca_type == "platform" and v.fmspc == "00606A000000"


def test_collateral_window_matches_zkdcap_assertion() -> None:
    """zkdcap asserts the validity window 1737456351..1740048100 for this collateral."""
    case = CASES["zkdcap"]
    v = case.verify()
    assert (int(v.collateral_not_before.timestamp()), int(v.collateral_not_after.timestamp())) == (
        1737456351, 1740048100)
    assert case.verify(now=1737456351).valid and case.verify(now=1740048100).valid
    late = case.verify(now=1740048101)
    assert late.error.code is ErrorCode.QE_IDENTITY_EXPIRED and late.error.kind is Kind.COLLATERAL
    with pytest.raises(ValueError, match="QE Identity expired"):
        dcap_verify(case, now=1740048101)
    # One second before the PCK CRL's thisUpdate: dcap-qvl does not check thisUpdate, we do.
    assert case.verify(now=1737456350).error.code is ErrorCode.CRL_NOT_YET_VALID


def test_phala_window_edges_match_dcap_qvl() -> None:
    case = CASES["phala"]
    early = case.verify(now=1750330570)
    assert early.error.code is ErrorCode.TCB_INFO_NOT_YET_VALID
    with pytest.raises(ValueError, match="TCBInfo issue date is in the future"):
        dcap_verify(case, now=1750330570)
    assert case.verify(now=1750330571).valid and case.verify(now=1752919278).valid
    late = case.verify(now=1752919279)
    assert late.error.code is ErrorCode.QE_IDENTITY_EXPIRED
    with pytest.raises(ValueError, match="QE Identity expired"):
        dcap_verify(case, now=1752919279)


def test_tlsn_quote_before_its_pck_certificate() -> None:
    v = CASES["tlsn-quote9"].verify(now=1738923988)  # PCK cert notBefore 2025-02-07T10:26:29Z
    assert v.error.code is ErrorCode.CERT_NOT_YET_VALID
    assert v.error.detail["chain"] == "pck" and v.error.kind is Kind.QUOTE


def test_mobilecoin_expired_pck_crl() -> None:
    """README: no instant at which this collateral is valid; dcap-qvl says CrlExpired."""
    case = Case("mobilecoin", "mobilecoin-attestation/hw_quote.dat",
                "mobilecoin-attestation/dcap_qvl_collateral_sgx_00906ED50000_2023-07-12_INCONSISTENT.json",
                1689194905, "", ())
    v = case.verify()
    assert v.error.code is ErrorCode.CRL_EXPIRED and v.error.detail["crl"] == "PCK CRL"
    with pytest.raises(ValueError, match="CrlExpired"):
        dcap_verify(case)


def test_custom_pki_rejected_under_intel_root() -> None:
    case = CASES["custom-pki"]
    v = Verifier().verify(case.quote_bytes(), case.load(), now=case.when())
    assert v.error.code is ErrorCode.ROOT_NOT_TRUSTED and v.exit_code() == 1
    with pytest.raises(ValueError):
        dcap_qvl.verify(case.quote_bytes(), dcap_qvl.QuoteCollateralV3.from_json(case.load().to_dcap_qvl_json()),
                        case.now)


def test_intel_sample_rejected_as_lookalike_without_its_root() -> None:
    case = CASES["intel-qvl-sample"]
    v = Verifier().verify(case.quote_bytes(), case.load(), now=case.when())
    assert v.error.code is ErrorCode.ROOT_NOT_TRUSTED
    assert "Intel QVL sample-data test root" in v.error.message
    # and with its root, it expires with the TCB signing certificate (README: 2026-08-28)
    late = case.verify(now=int(datetime(2026, 11, 27, tzinfo=UTC).timestamp()))
    assert late.error.code is ErrorCode.CERT_EXPIRED


def test_debug_enclave_quote_is_valid_but_rejected_by_default_policy() -> None:
    """mobilecoin-sgx: real quote of a DEBUG enclave (same FMSPC as the zkdcap collateral)."""
    case = Case("mobilecoin-debug", "mobilecoin-sgx/hw_quote.dat", "zkdcap/dcap_qvl_collateral_sgx_00906ED50000.json",
                1737458686, "", ())
    v = case.verify()
    assert v.valid and v.enclave.debug and not v.accepted
    assert [r.rule for r in v.failed_rules] == ["debug"] and v.exit_code() == 3
    with pytest.raises(ValueError, match="Debug mode is enabled"):
        dcap_verify(case)
    allowed = Verifier().verify(case.quote_bytes(), case.load(), now=case.when(),
                                policy=Policy.from_dict({"accepted_tcb_statuses": [v.status], "allow_debug": True}))
    assert allowed.accepted


def test_preproduction_quote_rejected() -> None:
    """Fortanix quote: PCK chain under the pre-production Intel root."""
    v = Verifier().verify(path("fortanix-rust-sgx-pcs/quote.bin").read_bytes(), CASES["zkdcap"].load(),
                          now=CASES["zkdcap"].when())
    assert v.error.code is ErrorCode.ROOT_NOT_TRUSTED and "pre-production" in v.error.message


@pytest.mark.parametrize("quote", ["go-tdx-guest/tdx_prod_quote_SPR_E4.dat", "phala-dcap-qvl/tdx_quote",
                                   "go-tdx-guest/quote_v5_sample.dat"])
def test_tdx_quotes_are_refused_as_unsupported(quote: str) -> None:
    v = Verifier().verify(path(quote).read_bytes(), CASES["phala"].load(), now=CASES["phala"].when())
    assert v.error.code is ErrorCode.QUOTE_UNSUPPORTED


def test_collateral_for_another_platform() -> None:
    """The phala quote (FMSPC 00A067110000) with the zkdcap collateral (00906ED50000)."""
    case = CASES["phala"]
    v = Verifier().verify(case.quote_bytes(), load_collateral(path(CASES["zkdcap"].collateral)),
                          now=CASES["zkdcap"].when())
    assert v.error.code is ErrorCode.TCB_INFO_MISMATCH and v.error.detail["field"] == "fmspc"
    assert v.fmspc == "00A067110000" and v.exit_code() == 2


def test_platform_quote_with_processor_crl_has_no_revocation_status() -> None:
    """Platform-CA quote, but the collateral carries the Processor CA's CRL: revocation status unknown."""
    platform = CASES["automata-eval17"]
    coll = platform.load()
    phala = CASES["phala"].load()  # Processor CRL 2025-06-19..07-19 overlaps the eval-17 window
    swapped = type(coll)(**{**coll.__dict__, "pck_crl": phala.pck_crl,
                            "pck_crl_issuer_chain": phala.pck_crl_issuer_chain})
    v = Verifier().verify(platform.quote_bytes(), swapped, now=datetime.fromtimestamp(1750500000, UTC))
    assert v.error.code is ErrorCode.CRL_MISSING and v.error.detail["chain"] == "pck"
    ref = dcap_qvl.QuoteCollateralV3.from_json(swapped.to_dcap_qvl_json())
    with pytest.raises(ValueError):
        dcap_qvl.verify(platform.quote_bytes(), ref, 1750500000)


def test_builtin_root_is_pinned() -> None:
    a = TrustAnchor.intel()
    assert a.sha256 == "44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3" and a.builtin
    assert Verifier(VerifyOptions()).roots == (a,)


def test_pinned_intel_intermediates_are_what_the_root_signed() -> None:
    """The built-in intermediates (whose root signatures the verifier does not recompute) really are
    signed by the pinned root, and equal the copies in the reference data."""
    a = TrustAnchor.intel()
    assert len(a.known_issued) == 4
    for cert in a.known_issued:
        cert.verify_directly_issued_by(a.cert)
    ref = {x509.load_pem_x509_certificate(p.read_bytes()) for p in path("intel-root").glob("Intel_SGX_[PT]*.pem")}
    assert ref == set(a.known_issued)


@pytest.mark.parametrize("case", [c for c in POSITIVE if c.root is None], ids=lambda c: c.id)
def test_same_result_without_pinned_intermediates(case: Case) -> None:
    full = Verifier(VerifyOptions(pinned_intermediates=False)).verify(case.quote_bytes(), case.load(), now=case.when())
    assert full.valid and (full.status, full.advisory_ids) == (case.status, case.advisories)


def test_openenclave_tampered_chain() -> None:
    """OpenEnclave's sgx_report_bad: the PCK CA's subject was altered, so the leaf's issuer no longer names
    it (and the CA's own signature no longer verifies). Under Intel's root it is refused for its
    (pre-production) root; under that root, for the broken name chain, the first fault in chain order."""
    from quotehelper.verify import quote_checks as qc
    from quotehelper.verify.chain import ChainChecker

    raw = path("openenclave/host_verify/sgx_report_bad.quote.dat").read_bytes()
    v = Verifier().verify(raw, CASES["zkdcap"].load(), now=CASES["zkdcap"].when())
    assert v.error.code is ErrorCode.ROOT_NOT_TRUSTED and "pre-production" in v.error.message
    preprod = TrustAnchor.from_file(path("fortanix-rust-sgx-pcs/root_SGX_CA_der.cert"))
    certs = qc.load_chain(qc.pck_chain_ders(qc.load_quote(raw), None))
    checker = ChainChecker(preprod, datetime(2020, 6, 1, tzinfo=UTC), check_revocation=False)
    with pytest.raises(VerificationError) as e:
        checker.check_chain(certs, "pck", Kind.QUOTE)
    assert e.value.code is ErrorCode.CERT_ISSUER_MISMATCH and e.value.detail["index"] == 0
    assert "2.5.68.10" in str(e.value)  # the altered attribute type, shown in the issuer's subject
