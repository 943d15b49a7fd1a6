"""Quotes from the software platform verify under its test root with the TCB status it was configured for,
and are rejected under Intel's root. Also SGX quote v4/v5 shapes (re-signed with the platform's key)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dcap_qvl
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from quotehelper.platform.sim import TCB_STATUSES, SimPlatform
from quotehelper.sgx.quote import BODY_SGX, parse_quote
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, Attributes
from quotehelper.verify import (
    Collateral,
    ErrorCode,
    Policy,
    TrustAnchor,
    Verifier,
    VerifyOptions,
    load_collateral,
)

REPORT_DATA = b"sim verify test".ljust(64, b"\0")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("simverify"))


def _platform(base: Path, name: str, **kw: object) -> SimPlatform:
    return SimPlatform.create(base / name, pki_dir=base / "pki", **kw)  # type: ignore[arg-type]


def _coll(plat: SimPlatform) -> Collateral:
    return Collateral.from_dcap_qvl_json(plat.collateral().to_dcap_qvl_json())


def _verifier(plat: SimPlatform) -> Verifier:
    return Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),)))


@pytest.mark.parametrize("status", [s for s in TCB_STATUSES if s != "Revoked"])
def test_configured_status_is_what_verifies(base: Path, status: str) -> None:
    plat = _platform(base, f"p-{status}", tcb_status=status)
    quote = plat.quote(REPORT_DATA)
    coll = _coll(plat)
    v = _verifier(plat).verify(quote, coll)
    assert v.valid, v.error
    assert (v.status, list(v.advisory_ids)) == (status, plat.advisory_ids)
    assert v.fmspc == plat.fmspc.hex().upper() and v.enclave.report_data == REPORT_DATA
    ref = dcap_qvl.verify_with_root_ca(quote, dcap_qvl.QuoteCollateralV3.from_json(coll.to_dcap_qvl_json()),
                                       plat.root_ca_der(), int(v.collateral_not_before.timestamp()) + 60)
    assert (ref.status, ref.advisory_ids) == (v.status, list(v.advisory_ids))
    # ... and never under Intel's production root
    intel = Verifier().verify(quote, coll)
    assert intel.error.code is ErrorCode.ROOT_NOT_TRUSTED and intel.exit_code() == 1


def test_revoked_status(base: Path) -> None:
    plat = _platform(base, "p-revoked", tcb_status="Revoked")
    v = _verifier(plat).verify(plat.quote(REPORT_DATA), _coll(plat))
    assert v.error.code is ErrorCode.TCB_REVOKED


def test_revoked_pck_certificate(base: Path) -> None:
    plat = _platform(base, "p-revoke-pck")
    quote = plat.quote(REPORT_DATA)
    assert _verifier(plat).verify(quote, _coll(plat)).valid
    plat.pki.revoke_pck(plat)
    v = _verifier(plat).verify(quote, _coll(plat))
    assert v.error.code is ErrorCode.CERT_REVOKED and v.error.detail["chain"] == "pck"


def test_platform_ca_and_exported_files(base: Path) -> None:
    plat = _platform(base, "p-platform-ca", ca="platform", tcb_status="ConfigurationNeeded")
    quote = plat.quote(REPORT_DATA)
    out = base / "export"
    plat.export(out)
    verifier = Verifier(VerifyOptions(trusted_roots=(TrustAnchor.from_file(out / "root_ca.pem"),)))
    for source in (out / "collateral.json", out / "pcs"):
        v = verifier.verify(quote, load_collateral(source))
        assert v.valid and v.ca_type == "platform" and v.status == "ConfigurationNeeded", source


def test_debug_enclave_from_the_platform(base: Path) -> None:
    plat = _platform(base, "p-debug")
    enclave = plat.enclave(attributes=Attributes(0x7, 0x3))
    v = _verifier(plat).verify(plat.quote(REPORT_DATA, enclave), _coll(plat))
    assert v.valid and v.enclave.debug and [r.rule for r in v.failed_rules] == ["debug"]
    ok = _verifier(plat).verify(plat.quote(REPORT_DATA, enclave), _coll(plat),
                                policy=Policy.from_dict({"allow_debug": True}))
    assert ok.accepted


@pytest.mark.parametrize("version", [4, 5])
def test_sgx_quote_v4_and_v5(base: Path, version: int) -> None:
    """The same SGX report as a v4 (type-6 certification data) and v5 (body descriptor) quote. The
    platform only emits v3, so the test re-signs with its attestation key (reached through the engine)."""
    plat = _platform(base, "p-versions")
    q3 = parse_quote(plat.quote(REPORT_DATA))
    eng = plat.engine()
    eng.init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    key = eng._require_key().private_key  # test-only: no public API hands out the attestation key
    q = replace(q3, header=replace(q3.header, version=version), body_type=BODY_SGX)
    r, s = decode_dss_signature(key.sign(q.signed_bytes(), ec.ECDSA(hashes.SHA256())))
    raw = q.with_signature(isv_signature=r.to_bytes(32, "big") + s.to_bytes(32, "big")).to_bytes()
    assert parse_quote(raw).version == version
    v = _verifier(plat).verify(raw, _coll(plat))
    assert v.valid and v.quote_version == version and v.status == "UpToDate", v.error
    # the unsigned re-wrap (header changed, old ISV signature) is caught
    stale = q.to_bytes()
    assert _verifier(plat).verify(stale, _coll(plat)).error.code is ErrorCode.ISV_SIGNATURE_INVALID


def test_warm_verifier_many_quotes_one_family(base: Path) -> None:
    plat = _platform(base, "p-many")
    verifier, coll = _verifier(plat), _coll(plat)
    quotes = [plat.quote(bytes([i]) * 64) for i in range(5)]
    verdicts = [verifier.verify(q, coll) for q in quotes]
    assert all(v.valid for v in verdicts) and [v.enclave.report_data[0] for v in verdicts] == list(range(5))
    assert len(verifier._collateral_cache.data) == 1 and len(verifier._pck_cache.data) == 1
