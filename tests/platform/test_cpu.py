"""Simulated CPU: the SDK simulation-mode KAT (aesm-protocol.md §6.3) and EREPORT/EGETKEY behaviour."""

from __future__ import annotations

import pytest

from quotehelper.platform.sim.cpu import (
    SDK_KEY_ID,
    EnclaveIdentity,
    SimCpu,
    cmac,
    report_derivation_data,
)
from quotehelper.platform.sim.enclave import SimEnclave
from quotehelper.sgx.structs import Attributes, Report, ReportBody, TargetInfo

KAT_TARGET = TargetInfo(mr_enclave=bytes([0x11]) * 32, attributes=Attributes(0x15, 0x3))
KAT_REPORT_KEY = bytes.fromhex("a9fce5d91bdb1056759a759cf512a1fc")
KAT_MAC = bytes.fromhex("d53b35f1d70eff74c7d1b4793c4de7f4")


def test_sdk_simulation_report_key_kat() -> None:
    cpu = SimCpu.sdk_compatible()
    assert cpu.key_id == bytes.fromhex("ff00" * 8) + bytes(16) == SDK_KEY_ID
    assert len(report_derivation_data(KAT_TARGET, cpu.owner_epoch, cpu.cpu_svn, cpu.key_id)) == 192
    assert cpu.report_key(KAT_TARGET, SDK_KEY_ID) == KAT_REPORT_KEY
    body = bytes(320) + bytes([0x42]) * 64
    assert cmac(KAT_REPORT_KEY, body) == KAT_MAC


def test_sdk_simulation_report_from_kat_verifies() -> None:
    """A report with the KAT body, SDK key id and KAT MAC (as an SDK simulation-mode enclave would make
    it for the KAT target) verifies inside that target; a flipped MAC bit does not."""
    cpu = SimCpu.sdk_compatible()
    target = SimEnclave(cpu, EnclaveIdentity(mr_enclave=bytes([0x11]) * 32, attributes=Attributes(0x15, 0x3)))
    kat = Report(ReportBody(report_data=bytes([0x42]) * 64), SDK_KEY_ID, KAT_MAC)
    assert target.verify_report(kat)
    assert not target.verify_report(Report(kat.body, SDK_KEY_ID, bytes([KAT_MAC[0] ^ 1]) + KAT_MAC[1:]))
    # And EREPORT on the SDK-compatible CPU reports the SDK's simulated CPUSVN and key id.
    rep = SimEnclave(cpu, EnclaveIdentity()).report(target.target_info(), bytes([0x42]) * 64)
    assert rep.key_id == SDK_KEY_ID
    assert rep.body.cpu_svn == bytes.fromhex("4820f3376ae6b2f2034d3b7a4b48a778")
    assert rep.mac == cmac(KAT_REPORT_KEY, rep.body.to_bytes())


def test_report_verifies_only_for_its_target() -> None:
    cpu = SimCpu.random()
    a = SimEnclave(cpu, EnclaveIdentity(mr_enclave=b"\xaa" * 32, isv_prod_id=3))
    b = SimEnclave(cpu, EnclaveIdentity(mr_enclave=b"\xbb" * 32))
    rep = a.report(b.target_info(), b"hello")
    assert rep.body.report_data == b"hello".ljust(64, b"\0")
    assert rep.body.isv_prod_id == 3
    assert b.verify_report(rep)
    assert not a.verify_report(rep)  # made for b, not a
    # Any change of the body breaks the MAC.
    raw = bytearray(rep.to_bytes())
    raw[320] ^= 1
    assert not b.verify_report(bytes(raw))
    # Key id and MAC are outside the MAC, but a changed key id derives another key.
    raw = bytearray(rep.to_bytes())
    raw[400] ^= 1
    assert not b.verify_report(bytes(raw))
    assert Report.parse(rep.to_bytes()) == rep


def test_other_platform_cannot_verify() -> None:
    ident = EnclaveIdentity(mr_enclave=b"\x01" * 32)
    cpu1, cpu2 = SimCpu.random(), SimCpu.random()
    rep = SimEnclave(cpu1, ident).report(ident.target_info())
    assert SimEnclave(cpu1, ident).verify_report(rep)
    assert not SimEnclave(cpu2, ident).verify_report(rep)


def test_target_attributes_and_config_are_bound() -> None:
    cpu = SimCpu.random()
    target = EnclaveIdentity(mr_enclave=b"\x05" * 32, config_id=b"\x07" * 64, config_svn=2)
    app = SimEnclave(cpu, EnclaveIdentity())
    rep = app.report(target.target_info())
    assert SimEnclave(cpu, target).verify_report(rep)
    for other in (EnclaveIdentity(mr_enclave=b"\x05" * 32, config_id=b"\x07" * 64, config_svn=3),
                  EnclaveIdentity(mr_enclave=b"\x05" * 32, config_id=b"\x08" * 64, config_svn=2),
                  EnclaveIdentity(mr_enclave=b"\x05" * 32, config_id=b"\x07" * 64, config_svn=2, misc_select=1)):
        assert not SimEnclave(cpu, other).verify_report(rep)


def test_state_roundtrip_and_bad_sizes() -> None:
    cpu = SimCpu.random()
    assert SimCpu.from_bytes(cpu.to_bytes()).to_bytes() == cpu.to_bytes()
    assert SimCpu.sdk_compatible().is_sdk_compatible and not cpu.is_sdk_compatible
    with pytest.raises(ValueError):
        SimCpu.from_bytes(b"x")
    with pytest.raises(ValueError):
        EnclaveIdentity(mr_enclave=b"short")
    with pytest.raises(ValueError):
        SimEnclave(cpu, EnclaveIdentity()).report(TargetInfo(), bytes(65))
