"""URL shapes for Intel PCS, Intel's PCCS (v3/v4), Azure THIM and ours; where the default service URL
comes from ($PCCS_URL, else the QCNL configuration operators already have)."""

from __future__ import annotations

import pytest

from quotehelper.pcs import Endpoints, PcsCode, PcsError, PcsOptions
from quotehelper.pcs.config import default_pccs_url

FMSPC = bytes.fromhex("00906ed50000")


@pytest.mark.parametrize("base", ["https://pccs.example:8081", "https://pccs.example:8081/",
                                  "https://pccs.example:8081/sgx/certification/v4/",
                                  "https://pccs.example:8081/sgx/certification/v4"])
def test_base_url_with_or_without_the_api_path(base: str) -> None:
    ep = Endpoints.parse(base)
    assert (ep.kind, ep.version) == ("pccs", 4)
    assert ep.tcb("sgx", FMSPC) == "https://pccs.example:8081/sgx/certification/v4/tcb?fmspc=00906ED50000&update=standard"


def test_kinds_versions_and_shapes() -> None:
    pcs = Endpoints.parse("https://api.trustedservices.intel.com")
    assert pcs.kind == "pcs"
    assert pcs.tcb("tdx", FMSPC, "early") == ("https://api.trustedservices.intel.com/tdx/certification/v4/tcb?"
                                              "fmspc=00906ED50000&update=early")
    assert pcs.tcb("sgx", FMSPC, evaluation_number=17).endswith("tcb?fmspc=00906ED50000&tcbEvaluationDataNumber=17")
    assert pcs.pckcrl("platform") == "https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
    thim = Endpoints.parse("https://useast.thim.azure.net/sgx/certification/v4/")
    assert thim.kind == "thim" and thim.qe_identity("tdx").endswith(
        "/tdx/certification/v4/qe/identity?update=standard&clientid=production_client")
    assert Endpoints.parse("https://pccs:8081/sgx/certification/v3/").version == 3
    # QCNL's pckcert: upper-case hex, PCESVN and PCE-ID as little-endian bytes
    url = Endpoints.parse("https://pccs:8081").pckcert(cpusvn=bytes(range(16)), pcesvn=13, pceid=0,
                                                       encrypted_ppid=bytes(384), qeid=bytes.fromhex("ab" * 16))
    assert "qeid=" + "AB" * 16 in url and "&cpusvn=000102030405060708090A0B0C0D0E0F&pcesvn=0D00&pceid=0000" in url


@pytest.mark.parametrize("bad", ["ftp://x", "pccs:8081", "https://x/sgx/certification/v2/"])
def test_bad_urls_and_options_are_named(bad: str) -> None:
    with pytest.raises(PcsError) as e:
        Endpoints.parse(bad)
    assert e.value.code is PcsCode.BAD_OPTION
    with pytest.raises(PcsError):
        PcsOptions(base_url="https://x", update="sometimes")
    with pytest.raises(PcsError):
        PcsOptions(base_url="https://x", timeout_s=0)


def test_default_url_from_env_then_qcnl_conf(tmp_path) -> None:
    conf = tmp_path / "qcnl.conf"
    conf.write_text('{\n  // the PCCS of this cluster\n  "pccs_url": "https://pccs.svc:8081/sgx/certification/v4/",\n'
                    '  "use_secure_cert": false, "note": "a // inside a string is kept"\n}\n')
    assert default_pccs_url({"PCCS_URL": "https://env:1"}, conf) == "https://env:1"
    assert default_pccs_url({}, conf) == "https://pccs.svc:8081/sgx/certification/v4/"
    conf.write_text('{"pccs_url": "https://a", "collateral_service": "https://api.trustedservices.intel.com/sgx/certification/v4/"}')
    assert default_pccs_url({}, conf).startswith("https://api.trustedservices.intel.com")
    conf.write_text("PCCS_URL=https://legacy:8081/sgx/certification/v3/\nUSE_SECURE_CERT=FALSE\n")
    assert default_pccs_url({}, conf) == "https://legacy:8081/sgx/certification/v3/"
    conf.write_text('{"pccs_url": "https://a",}\n{')
    with pytest.raises(PcsError) as e:
        default_pccs_url({}, conf)
    assert e.value.code is PcsCode.BAD_OPTION and "0xE067" in e.value.message
    assert default_pccs_url({}, tmp_path / "absent") is None
