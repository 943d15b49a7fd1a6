"""Acceptance: simulated quotes verify with dcap-qvl and Intel's QVL under the simulated PKI, reporting
exactly the configured TCB status and advisory IDs; Revoked and revoked PCKs are rejected by both."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from quotehelper.platform.sim import TCB_STATUSES
from quotehelper.platform.sim.collateral import DEFAULT_ADVISORIES
from tests.platform.oracles import INTEL_STATUS, dcap_qvl_verify, intel_verify

NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("status", TCB_STATUSES)
def test_each_tcb_status_verifies_with_both_oracles(make_platform, status: str) -> None:
    plat = make_platform(f"status-{status}", tcb_status=status)
    quote = plat.quote(b"status " + status.encode())
    coll = plat.collateral(NOW)
    intel = intel_verify(quote, coll, plat.root_ca_pem(), NOW)
    assert intel.pck_certificate_status.name == "STATUS_OK"
    assert intel.tcb_info_status.name == "STATUS_OK"
    assert intel.qe_identity_status.name == "STATUS_OK"
    assert intel.quote_status.name == INTEL_STATUS[status]
    assert intel.enclave_report.report_data == (b"status " + status.encode()).ljust(64, b"\0")
    if status == "Revoked":
        assert not intel.ok
        with pytest.raises(ValueError, match="(?i)revoked"):
            dcap_qvl_verify(quote, coll, plat.root_ca_der(), NOW)
        return
    result = dcap_qvl_verify(quote, coll, plat.root_ca_der(), NOW)
    assert result.status == status
    assert result.advisory_ids == DEFAULT_ADVISORIES[status]
    report = json.loads(result.to_json())["report"]["SgxEnclave"]
    assert bytes.fromhex(report["report_data"]) == (b"status " + status.encode()).ljust(64, b"\0")


def test_configured_advisory_ids_are_reported(make_platform) -> None:
    plat = make_platform("advisories", tcb_status="ConfigurationNeeded",
                         advisory_ids=["INTEL-SA-00999", "INTEL-SA-01000"])
    quote = plat.quote(b"x")
    coll = plat.collateral(NOW)
    result = dcap_qvl_verify(quote, coll, plat.root_ca_der(), NOW)
    assert (result.status, result.advisory_ids) == ("ConfigurationNeeded", ["INTEL-SA-00999", "INTEL-SA-01000"])
    level = next(lv for lv in coll.tcb_info["tcbLevels"] if lv["tcbStatus"] == "ConfigurationNeeded")
    assert level["advisoryIDs"] == ["INTEL-SA-00999", "INTEL-SA-01000"]
    assert intel_verify(quote, coll, plat.root_ca_pem(), NOW).quote_status.name == "STATUS_TCB_CONFIGURATION_NEEDED"


def test_platform_ca_and_sdk_compatible_platforms_verify(make_platform) -> None:
    for plat in (make_platform("platform-ca", ca="platform"), make_platform("sdk", sdk_compatible=True)):
        quote = plat.quote(b"y")
        coll = plat.collateral(NOW)
        assert dcap_qvl_verify(quote, coll, plat.root_ca_der(), NOW).status == "UpToDate"
        assert intel_verify(quote, coll, plat.root_ca_pem(), NOW).ok


def test_revoked_pck_is_rejected_by_both(make_platform, sim_pki) -> None:
    victim = make_platform("revoked-pck")
    bystander = make_platform("bystander")
    quote = victim.quote(b"z")
    assert dcap_qvl_verify(quote, victim.collateral(NOW), victim.root_ca_der(), NOW).status == "UpToDate"
    sim_pki.revoke_pck(victim)
    sim_pki.revoke_pck(victim)  # idempotent
    coll = victim.collateral(NOW)
    assert sim_pki.revoked_serials("processor").count(victim.pck_cert.serial_number) == 1
    with pytest.raises(ValueError, match="(?i)revoked"):
        dcap_qvl_verify(quote, coll, victim.root_ca_der(), NOW)
    intel = intel_verify(quote, coll, victim.root_ca_pem(), NOW)
    assert not intel.ok
    assert "REVOKED" in intel.pck_certificate_status.name or "REVOKED" in intel.quote_status.name
    # The same PKI's other platforms are unaffected.
    other = bystander.quote(b"z")
    assert dcap_qvl_verify(other, bystander.collateral(NOW), bystander.root_ca_der(), NOW).status == "UpToDate"
    assert intel_verify(other, bystander.collateral(NOW), bystander.root_ca_pem(), NOW).ok


def test_collateral_is_fresh_and_expires(platform) -> None:
    quote = platform.quote(b"t")
    old = platform.collateral(NOW - dt.timedelta(days=60))
    with pytest.raises(ValueError, match="(?i)expired"):
        dcap_qvl_verify(quote, old, platform.root_ca_der(), NOW)
    coll = platform.collateral(NOW)
    info = coll.tcb_info
    assert info["issueDate"] < NOW.strftime("%Y-%m-%dT%H:%M:%SZ") < info["nextUpdate"]
    assert dcap_qvl_verify(quote, coll, platform.root_ca_der(), NOW + dt.timedelta(days=29)).status == "UpToDate"
    assert not intel_verify(quote, old, platform.root_ca_pem(), NOW).ok
    # A long-lived platform: collateral issued later is fresh then, for the same quote.
    later = NOW + dt.timedelta(days=400)
    fresh = platform.collateral(later)
    assert dcap_qvl_verify(quote, fresh, platform.root_ca_der(), later).status == "UpToDate"
    assert intel_verify(quote, fresh, platform.root_ca_pem(), later).ok


def test_signed_json_bytes_are_what_is_signed(platform) -> None:
    """The exported texts are the signed ones: re-serializing (even semantically equal) breaks them."""
    from dataclasses import replace

    quote = platform.quote(b"s")
    coll = platform.collateral(NOW)
    pretty = replace(coll, tcb_info_json=json.dumps(coll.tcb_info, indent=1))
    with pytest.raises(ValueError, match="(?i)signature"):
        dcap_qvl_verify(quote, pretty, platform.root_ca_der(), NOW)
    assert coll.tcb_info_body() == json.dumps({"tcbInfo": coll.tcb_info, "signature": coll.tcb_info_signature.hex()},
                                              separators=(",", ":"))


def test_quote_rejected_under_intel_root(platform) -> None:
    import dcap_qvl

    quote = platform.quote(b"r")
    with pytest.raises(ValueError):
        dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(platform.collateral(NOW).to_dcap_qvl_json()),
                        int(NOW.timestamp()))


@pytest.mark.parametrize("platform_status, combined, intel_status", [
    ("UpToDate", "OutOfDate", "STATUS_TCB_OUT_OF_DATE"),
    ("ConfigurationNeeded", "OutOfDateConfigurationNeeded", "STATUS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED"),
])
def test_out_of_date_qe_converges_with_platform_status(make_platform, platform_status: str, combined: str,
                                                       intel_status: str) -> None:
    """A QE below the QE identity's UpToDate isvsvn (8) folds into the platform status like Intel's."""
    plat = make_platform(f"old-qe-{platform_status}", tcb_status=platform_status, qe_svn=6)
    quote = plat.quote(b"q")
    coll = plat.collateral(NOW)
    result = dcap_qvl_verify(quote, coll, plat.root_ca_der(), NOW)
    assert result.status == combined
    assert "INTEL-SA-00615" in result.advisory_ids  # the QE level's advisory joins the platform's
    assert intel_verify(quote, coll, plat.root_ca_pem(), NOW).quote_status.name == intel_status


def test_debug_enclave_quote_is_rejected_by_dcap_qvl(platform) -> None:
    from quotehelper.sgx.structs import FLAG_DEBUG, FLAG_INITTED, FLAG_MODE64BIT, Attributes

    enclave = platform.enclave(attributes=Attributes(FLAG_INITTED | FLAG_MODE64BIT | FLAG_DEBUG, 0x3))
    quote = platform.quote(b"d", enclave)
    with pytest.raises(ValueError, match="(?i)debug"):
        dcap_qvl_verify(quote, platform.collateral(NOW), platform.root_ca_der(), NOW)
    # Intel's QVL leaves the debug policy to the caller: the signature chain itself is fine.
    assert intel_verify(quote, platform.collateral(NOW), platform.root_ca_pem(), NOW).ok
