"""RatlsOptions: how certificates are made and how peers are judged (defaults written once, here)."""

from __future__ import annotations

from dataclasses import dataclass

from quotehelper.ratls.errors import RatlsCode, RatlsError
from quotehelper.verify.policy import Policy

CURVES = ("P-256", "P-384")
HASH_NAMES = ("sha-256", "sha-384", "sha-512")
LEGACY_KINDS = ("intel", "gramine")


@dataclass(frozen=True)
class RatlsOptions:
    """Making: `curve`, `pubkey_hash`, `legacy_extension` (None; "intel" = the same quote again under
    1.2.840.113741.1.13.1, as the Intel SGX SDK does; "gramine" = a second quote whose report data is
    SHA-256(SPKI), under 1.2.840.113741.1337.6), `validity_s` (seconds), `subject_cn`.

    Verifying: `policy` (None = `Policy.permissive()`: any TCB status but Revoked, debug enclaves
    refused), `require_nonce` (a certificate without the expected nonce claim is refused),
    `use_endorsements` (collateral from the peer's 2.23.133.5.4.2 extension when present; it is
    Intel-signed, so the verifier checks it like any other collateral), `check_cert_dates`
    (the certificate's own notBefore/notAfter at the verification time), `accept_legacy_only`
    (certificates carrying only a legacy extension: older Gramine, Open Enclave, Intel SDK)."""

    curve: str = "P-256"
    pubkey_hash: str = "sha-256"
    legacy_extension: str | None = None
    validity_s: int = 86400
    subject_cn: str = "quotehelper RA-TLS"
    policy: Policy | None = None
    require_nonce: bool = False
    use_endorsements: bool = True
    check_cert_dates: bool = True
    accept_legacy_only: bool = True

    def __post_init__(self) -> None:
        if self.curve not in CURVES:
            raise RatlsError(RatlsCode.OPTIONS_INVALID, f"curve must be one of {CURVES}, got {self.curve!r}")
        if self.pubkey_hash not in HASH_NAMES:
            raise RatlsError(RatlsCode.OPTIONS_INVALID, f"pubkey_hash must be one of {HASH_NAMES}")
        if self.legacy_extension is not None and self.legacy_extension not in LEGACY_KINDS:
            raise RatlsError(RatlsCode.OPTIONS_INVALID, f"legacy_extension must be None or one of {LEGACY_KINDS}")
        if not 60 <= self.validity_s <= 10 * 366 * 86400:
            raise RatlsError(RatlsCode.OPTIONS_INVALID, "validity_s must be 60 s .. 10 years")
        if not self.subject_cn:
            raise RatlsError(RatlsCode.OPTIONS_INVALID, "subject_cn must not be empty")
