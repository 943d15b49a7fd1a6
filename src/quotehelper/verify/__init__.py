"""DCAP ECDSA quote verification: collateral -> chains/CRLs -> signatures/bindings -> TCB -> policy -> verdict."""

from quotehelper.verify.collateral import Collateral, load_collateral
from quotehelper.verify.errors import ErrorCode, Kind, VerificationError
from quotehelper.verify.policy import Policy
from quotehelper.verify.trust import INTEL_SGX_ROOT_CA_SHA256, TrustAnchor
from quotehelper.verify.verdict import Verdict
from quotehelper.verify.verifier import Verifier, VerifyOptions, verify, verify_quote

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256", "Collateral", "ErrorCode", "Kind", "Policy", "TrustAnchor", "VerificationError",
    "Verdict", "Verifier", "VerifyOptions", "load_collateral", "verify", "verify_quote",
]
