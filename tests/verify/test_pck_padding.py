"""Field case pck-chain-two-nul.dat, and its whole kind: zero padding after the PCK chain in certification
data type 5 is padding (accepted, as dcap-qvl and Intel's QVL read it); any other trailing byte is refused."""

from __future__ import annotations

import dataclasses

import pytest

from quotehelper.sgx.quote import CertificationData, parse_quote
from tests.conftest import FIELD_CASES
from tests.verify.helpers import CASES, dcap_verify

ZK = CASES["zkdcap"]


def with_chain_tail(quote: bytes, tail: bytes) -> bytes:
    """The quote with its type-5 data = PEM chain (no NUL) + `tail`; sizes rewritten, nothing signed changes."""
    q = parse_quote(quote)
    cd = q.signature.qe.certification_data
    data = cd.data.rstrip(b"\0") + tail
    qe = dataclasses.replace(q.signature.qe, certification_data=CertificationData(cd.type, data))
    return dataclasses.replace(q, signature=dataclasses.replace(q.signature, qe=qe)).to_bytes()


def test_field_case_two_nuls_verifies_as_its_readme_says() -> None:
    raw = (FIELD_CASES / "pck-chain-two-nul.dat").read_bytes()
    assert parse_quote(raw).signature.qe.certification_data.data.endswith(b"-----\n\0\0")
    v = ZK.verify(quote=raw)
    assert (v.valid, v.status, v.advisory_ids) == (True, "SWHardeningNeeded", ("INTEL-SA-00334", "INTEL-SA-00615"))
    assert v.exit_code() == 0
    d = dcap_verify(ZK, quote=raw)  # the oracle agrees
    assert (d.status, sorted(d.advisory_ids)) == ("SWHardeningNeeded", ["INTEL-SA-00334", "INTEL-SA-00615"])


@pytest.mark.parametrize("nuls", [0, 1, 2, 3, 16])
def test_any_run_of_zero_padding_is_accepted(nuls: int) -> None:
    v = ZK.verify(quote=with_chain_tail(ZK.quote_bytes(), b"\0" * nuls))
    assert (v.valid, v.status) == (True, "SWHardeningNeeded")


@pytest.mark.parametrize("tail", [b"\0X", b"X", b"\0\0\x01", b"\n-----BEGIN CERTIFICATE-----\n", b" \0", b"\0\n\0"],
                         ids=["nul-then-byte", "byte", "nuls-then-01", "half-a-pem", "space", "nul-newline-nul"])
def test_other_trailing_bytes_are_refused(tail: bytes) -> None:
    v = ZK.verify(quote=with_chain_tail(ZK.quote_bytes(), tail))
    assert not v.valid and v.error is not None and v.error.code.value == "PCK_CHAIN_MALFORMED"
    assert v.exit_code() == 1
