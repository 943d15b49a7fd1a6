"""Why an RA-TLS certificate or peer was refused: one exception type with a stable code."""

from __future__ import annotations

import enum
from typing import Any

from quotehelper.errors import CodedError


class RatlsCode(enum.Enum):
    """Stable codes; the value is what JSON output carries. Never renumber or rename."""

    OPTIONS_INVALID = "OPTIONS_INVALID"
    QUOTE_FAILED = "QUOTE_FAILED"                      # making: the quote provider failed
    CERT_MALFORMED = "CERT_MALFORMED"                  # not DER/PEM X.509, or a field we need is unreadable
    CERT_SIGNATURE_INVALID = "CERT_SIGNATURE_INVALID"  # the self-signature does not verify with the cert's key
    CERT_EXPIRED = "CERT_EXPIRED"
    CERT_NOT_YET_VALID = "CERT_NOT_YET_VALID"
    EVIDENCE_MISSING = "EVIDENCE_MISSING"              # none of the evidence extensions
    EVIDENCE_MALFORMED = "EVIDENCE_MALFORMED"          # CBOR that is not tag 60000 over [quote, claims]
    EVIDENCE_UNSUPPORTED = "EVIDENCE_UNSUPPORTED"      # a report tag (60001/60002), an unknown hash algorithm
    EVIDENCE_INCONSISTENT = "EVIDENCE_INCONSISTENT"    # legacy and DICE quotes from different enclaves
    EXTENSION_CRITICAL = "EXTENSION_CRITICAL"          # an unknown extension marked critical
    CLAIMS_MALFORMED = "CLAIMS_MALFORMED"
    KEY_BINDING_MISMATCH = "KEY_BINDING_MISMATCH"      # pubkey-hash (or legacy report data) != hash of the SPKI
    CLAIMS_BINDING_MISMATCH = "CLAIMS_BINDING_MISMATCH"  # report data != SHA-256(claims-buffer) || zeros
    NONCE_MISSING = "NONCE_MISSING"
    NONCE_MISMATCH = "NONCE_MISMATCH"
    ENDORSEMENTS_MALFORMED = "ENDORSEMENTS_MALFORMED"
    COLLATERAL_UNAVAILABLE = "COLLATERAL_UNAVAILABLE"  # no endorsements extension and no collateral source answer
    QUOTE_INVALID = "QUOTE_INVALID"                    # the verifier refused the quote (detail: verify_code)
    POLICY_REJECTED = "POLICY_REJECTED"                # valid quote, refused by the policy (detail: failed rules)
    PEER_NO_CERTIFICATE = "PEER_NO_CERTIFICATE"
    HANDSHAKE_FAILED = "HANDSHAKE_FAILED"
    REFUSED_BY_PEER = "REFUSED_BY_PEER"                # the peer ended the connection with a TLS alert


class RatlsError(CodedError):
    """A refused certificate or a failed RA-TLS step. `detail` is JSON-serialisable."""

    code: RatlsCode

    def __init__(self, code: RatlsCode, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(code, message, detail)
