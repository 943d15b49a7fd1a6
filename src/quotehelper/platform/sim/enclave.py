"""Simulated application enclaves: an identity running on a SimCpu that makes and checks REPORTs."""

from __future__ import annotations

from quotehelper.platform.sim.cpu import EnclaveIdentity, SimCpu
from quotehelper.sgx.structs import Report, TargetInfo


class SimEnclave:
    """An app enclave on a simulated CPU. `report()` is EREPORT, `verify_report()` is sgx_verify_report."""

    def __init__(self, cpu: SimCpu, identity: EnclaveIdentity) -> None:
        self.cpu = cpu
        self.identity = identity

    def report(self, target_info: TargetInfo, report_data: bytes = bytes(64)) -> Report:
        """EREPORT: this enclave's identity and `report_data`, MACed for `target_info`'s enclave.
        Shorter report_data is zero-padded to 64 bytes (as callers of sgx_create_report usually do)."""
        if len(report_data) > 64:
            raise ValueError(f"report_data is at most 64 bytes, got {len(report_data)}")
        return self.cpu.ereport(self.identity, target_info, bytes(report_data).ljust(64, b"\0"))

    def target_info(self) -> TargetInfo:
        """This enclave as a report target (e.g. for the QE's report in qe_report_info, §5.7)."""
        return self.identity.target_info()

    def verify_report(self, report: Report | bytes) -> bool:
        """True if `report` was made for this enclave on this CPU (EGETKEY(REPORT) + CMAC)."""
        raw = report.to_bytes() if isinstance(report, Report) else bytes(report)
        return self.cpu.verify_report_mac(self.identity, raw)

    def __repr__(self) -> str:
        i = self.identity
        return (f"SimEnclave(mr_enclave={i.mr_enclave.hex()}, mr_signer={i.mr_signer.hex()}, "
                f"isv_prod_id={i.isv_prod_id}, isv_svn={i.isv_svn})")
