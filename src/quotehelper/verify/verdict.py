"""The result of verifying one quote: what was proven, or precisely why not."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from quotehelper.sgx.structs import ReportBody
from quotehelper.verify.errors import ErrorCode, Kind, VerificationError
from quotehelper.verify.tcb import TcbLevel


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class EnclaveIdentity:
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    attributes: bytes
    debug: bool
    misc_select: int
    report_data: bytes

    @classmethod
    def of(cls, body: ReportBody) -> EnclaveIdentity:
        return cls(body.mr_enclave, body.mr_signer, body.isv_prod_id, body.isv_svn, body.attributes.to_bytes(),
                   body.attributes.debug, body.misc_select, body.report_data)

    def to_dict(self) -> dict[str, Any]:
        return {"mr_enclave": self.mr_enclave.hex(), "mr_signer": self.mr_signer.hex(),
                "isv_prod_id": self.isv_prod_id, "isv_svn": self.isv_svn, "attributes": self.attributes.hex(),
                "debug": self.debug, "misc_select": f"{self.misc_select:08x}", "report_data": self.report_data.hex()}


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    """`valid`: every cryptographic and TCB check passed. `accepted`: valid and the policy (if any) agrees.
    On failure `error` says which check failed, on what, and why (`error.code` is stable)."""

    valid: bool
    status: str | None = None                 # converged TCB status
    platform_status: str | None = None
    qe_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    tcb_level: TcbLevel | None = None
    tcb_date: datetime | None = None
    fmspc: str | None = None
    pce_id: str | None = None
    ppid: str | None = None
    ca_type: str | None = None                # "processor" | "platform"
    quote_version: int | None = None
    enclave: EnclaveIdentity | None = None
    collateral_not_before: datetime | None = None
    collateral_not_after: datetime | None = None
    tcb_evaluation_data_number: int | None = None
    error: VerificationError | None = None
    policy: tuple[RuleResult, ...] = field(default=())
    policy_applied: bool = False

    @property
    def accepted(self) -> bool:
        return self.valid and all(r.passed for r in self.policy)

    @property
    def code(self) -> str | None:
        if self.error is not None:
            return self.error.code.value
        return None if self.accepted else ErrorCode.POLICY_REJECTED.value

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.policy if not r.passed]

    def exit_code(self) -> int:
        """CLI contract: 0 accepted, 1 invalid quote, 2 unusable input/collateral, 3 rejected by policy."""
        if self.error is not None:
            return 1 if self.error.kind is Kind.QUOTE else 2
        return 0 if self.accepted else 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid, "accepted": self.accepted, "code": self.code, "status": self.status,
            "platform_status": self.platform_status, "qe_status": self.qe_status,
            "advisory_ids": list(self.advisory_ids),
            "tcb_level": self.tcb_level.to_dict() if self.tcb_level else None, "tcb_date": iso(self.tcb_date),
            "tcb_evaluation_data_number": self.tcb_evaluation_data_number,
            "fmspc": self.fmspc, "pce_id": self.pce_id, "ppid": self.ppid, "ca_type": self.ca_type,
            "quote_version": self.quote_version,
            "enclave": self.enclave.to_dict() if self.enclave else None,
            "collateral_validity": {"not_before": iso(self.collateral_not_before),
                                    "not_after": iso(self.collateral_not_after)},
            "error": self.error.to_dict() if self.error else None,
            "policy": [r.to_dict() for r in self.policy] if self.policy_applied else None,
        }

    def summary(self) -> str:
        if self.error is not None:  # INVALID only for the quote's fault; else nothing was decided (exit 2)
            head = "INVALID" if self.error.kind is Kind.QUOTE else "CANNOT VERIFY"
            return f"{head} {self.error.code.value}: {self.error.message}"
        adv = f" [{', '.join(self.advisory_ids)}]" if self.advisory_ids else ""
        head = f"{self.status}{adv}"
        if not self.accepted:
            return f"REJECTED by policy ({', '.join(r.rule for r in self.failed_rules)}): {head}"
        return f"OK {head}"
