"""Why a verification failed: one exception type carrying a stable, machine-readable code.

Every check raises `VerificationError(code, message, detail)`. The code names the check; `detail` says
which certificate / field / value; `kind` says whose fault it is, which the CLI maps to an exit code:
QUOTE = the quote is invalid, COLLATERAL / INPUT = the inputs cannot be used to decide.
"""

from __future__ import annotations

import enum
from typing import Any

from quotehelper.errors import QuoteHelperError


class Kind(enum.Enum):
    QUOTE = "quote"            # the quote (or its PCK chain) is not genuine or not acceptable
    COLLATERAL = "collateral"  # collateral is malformed, expired, not signed by the root, or for another platform
    INPUT = "input"            # files / options unusable (bad root file, bad policy, bad time)


class ErrorCode(enum.Enum):
    """Stable codes; the value is what JSON output carries. Never renumber or rename."""

    # input / format
    NOT_A_QUOTE = "NOT_A_QUOTE"                            # too short for a header, or no quote header at all
    QUOTE_MALFORMED = "QUOTE_MALFORMED"
    QUOTE_UNSUPPORTED = "QUOTE_UNSUPPORTED"                # TDX, P-384, unknown body type
    QE_VENDOR_UNKNOWN = "QE_VENDOR_UNKNOWN"
    CERT_DATA_UNSUPPORTED = "CERT_DATA_UNSUPPORTED"        # no PCK chain in quote nor collateral
    PCK_CHAIN_MALFORMED = "PCK_CHAIN_MALFORMED"
    PCK_EXTENSION_MALFORMED = "PCK_EXTENSION_MALFORMED"
    COLLATERAL_MALFORMED = "COLLATERAL_MALFORMED"
    ROOT_CA_MALFORMED = "ROOT_CA_MALFORMED"
    POLICY_MALFORMED = "POLICY_MALFORMED"
    # trust anchor, certificates, CRLs
    ROOT_NOT_TRUSTED = "ROOT_NOT_TRUSTED"
    CERT_ISSUER_MISMATCH = "CERT_ISSUER_MISMATCH"
    CERT_SIGNATURE_INVALID = "CERT_SIGNATURE_INVALID"
    CERT_EXPIRED = "CERT_EXPIRED"
    CERT_NOT_YET_VALID = "CERT_NOT_YET_VALID"
    CERT_NOT_CA = "CERT_NOT_CA"                            # an issuer without CA:TRUE / keyCertSign
    CERT_IS_CA = "CERT_IS_CA"                              # a leaf / signer with CA:TRUE
    CERT_PATH_TOO_LONG = "CERT_PATH_TOO_LONG"
    CERT_REVOKED = "CERT_REVOKED"
    CRL_MISSING = "CRL_MISSING"                            # revocation status unknown
    CRL_SIGNATURE_INVALID = "CRL_SIGNATURE_INVALID"
    CRL_EXPIRED = "CRL_EXPIRED"
    CRL_NOT_YET_VALID = "CRL_NOT_YET_VALID"
    # signed collateral
    TCB_INFO_MALFORMED = "TCB_INFO_MALFORMED"
    TCB_INFO_UNSUPPORTED = "TCB_INFO_UNSUPPORTED"
    TCB_INFO_SIGNATURE_INVALID = "TCB_INFO_SIGNATURE_INVALID"
    TCB_INFO_EXPIRED = "TCB_INFO_EXPIRED"
    TCB_INFO_NOT_YET_VALID = "TCB_INFO_NOT_YET_VALID"
    TCB_INFO_MISMATCH = "TCB_INFO_MISMATCH"                # FMSPC / PCE-ID / TEE differ from the PCK cert
    QE_IDENTITY_MALFORMED = "QE_IDENTITY_MALFORMED"
    QE_IDENTITY_UNSUPPORTED = "QE_IDENTITY_UNSUPPORTED"
    QE_IDENTITY_SIGNATURE_INVALID = "QE_IDENTITY_SIGNATURE_INVALID"
    QE_IDENTITY_EXPIRED = "QE_IDENTITY_EXPIRED"
    QE_IDENTITY_NOT_YET_VALID = "QE_IDENTITY_NOT_YET_VALID"
    # quote signatures and bindings
    QE_REPORT_SIGNATURE_INVALID = "QE_REPORT_SIGNATURE_INVALID"
    ATTESTATION_KEY_INVALID = "ATTESTATION_KEY_INVALID"
    QE_REPORT_DATA_MISMATCH = "QE_REPORT_DATA_MISMATCH"
    QE_IDENTITY_MISMATCH = "QE_IDENTITY_MISMATCH"
    ISV_SIGNATURE_INVALID = "ISV_SIGNATURE_INVALID"
    # TCB evaluation
    QE_TCB_NOT_SUPPORTED = "QE_TCB_NOT_SUPPORTED"
    TCB_NOT_SUPPORTED = "TCB_NOT_SUPPORTED"                # no TCB level matches the platform
    TCB_REVOKED = "TCB_REVOKED"
    # appraisal
    POLICY_REJECTED = "POLICY_REJECTED"


_INPUT = {ErrorCode.ROOT_CA_MALFORMED, ErrorCode.POLICY_MALFORMED, ErrorCode.NOT_A_QUOTE}
_COLLATERAL = {
    ErrorCode.COLLATERAL_MALFORMED, ErrorCode.TCB_INFO_MALFORMED, ErrorCode.TCB_INFO_UNSUPPORTED,
    ErrorCode.TCB_INFO_SIGNATURE_INVALID, ErrorCode.TCB_INFO_EXPIRED, ErrorCode.TCB_INFO_NOT_YET_VALID,
    ErrorCode.TCB_INFO_MISMATCH, ErrorCode.QE_IDENTITY_MALFORMED, ErrorCode.QE_IDENTITY_UNSUPPORTED,
    ErrorCode.QE_IDENTITY_SIGNATURE_INVALID, ErrorCode.QE_IDENTITY_EXPIRED, ErrorCode.QE_IDENTITY_NOT_YET_VALID,
    ErrorCode.CRL_MISSING, ErrorCode.CRL_SIGNATURE_INVALID, ErrorCode.CRL_EXPIRED, ErrorCode.CRL_NOT_YET_VALID,
    ErrorCode.CERT_DATA_UNSUPPORTED,
}


def default_kind(code: ErrorCode) -> Kind:
    if code in _INPUT:
        return Kind.INPUT
    return Kind.COLLATERAL if code in _COLLATERAL else Kind.QUOTE


class VerificationError(QuoteHelperError):
    """A failed check. `detail` is JSON-serialisable (strings, ints, lists)."""

    def __init__(self, code: ErrorCode, message: str, detail: dict[str, Any] | None = None,
                 kind: Kind | None = None) -> None:
        self.code = code
        self.message = message
        self.detail = dict(detail or {})
        self.kind = kind or default_kind(code)
        super().__init__(f"{code.value}: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code.value, "kind": self.kind.value, "message": self.message, "detail": self.detail}
