"""The one interface every quoting engine implements; the AESM server talks only to this.

It mirrors the DCAP quote library (sgx_ql_init_quote / get_quote_size / get_quote), so Intel's
libsgx_dcap_ql fits behind it as well as the software platform does.
"""

from __future__ import annotations

import enum
from typing import Protocol

from quotehelper.errors import QuoteHelperError
from quotehelper.sgx.structs import AttKeyId, TargetInfo


class QuoteErrorCode(enum.Enum):
    """Why an engine refused; named after quote3_error_t. The AESM layer maps these to aesm_error_t."""

    INVALID_PARAMETER = "SGX_QL_ERROR_INVALID_PARAMETER"
    UNSUPPORTED_ATT_KEY_ID = "SGX_QL_UNSUPPORTED_ATT_KEY_ID"
    ATT_KEY_NOT_INITIALIZED = "SGX_QL_ATT_KEY_NOT_INITIALIZED"
    ATT_KEY_CERT_DATA_INVALID = "SGX_QL_ATT_KEY_CERT_DATA_INVALID"
    NO_PLATFORM_CERT_DATA = "SGX_QL_NO_PLATFORM_CERT_DATA"
    INVALID_REPORT = "SGX_QL_INVALID_REPORT"  # app REPORT MAC mismatch
    UNABLE_TO_GENERATE_QE_REPORT = "SGX_QL_UNABLE_TO_GENERATE_QE_REPORT"
    KEY_CERTIFICATION_ERROR = "SGX_QL_KEY_CERTIFICATION_ERROR"
    SERVICE_UNAVAILABLE = "SGX_QL_SERVICE_UNAVAILABLE"
    UNEXPECTED = "SGX_QL_ERROR_UNEXPECTED"


class QuoteError(QuoteHelperError):
    def __init__(self, code: QuoteErrorCode, message: str) -> None:
        self.code = code
        super().__init__(f"{code.value}: {message}")


class QuotingEngine(Protocol):
    """A QE3-like quoting engine. Implementations must be safe to open once per worker process."""

    def supported_att_key_ids(self) -> list[AttKeyId]:
        """Attestation key ids this engine can quote with (ECDSA-P256 QE3 only, for now)."""
        ...

    def init_quote(self, att_key_id: AttKeyId) -> tuple[TargetInfo, bytes]:
        """Makes sure the attestation key exists and is certified; returns the QE's target info and the
        32-byte pub_key_id (SHA-256 of attestation public key || QE auth data)."""
        ...

    def quote_size(self, att_key_id: AttKeyId) -> int:
        """The exact length get_quote will return. ATT_KEY_NOT_INITIALIZED if there is no key yet."""
        ...

    def get_quote(self, report: bytes, att_key_id: AttKeyId,
                  qe_report_info: bytes | None = None) -> tuple[bytes, bytes | None]:
        """Quotes a 432-byte app REPORT targeted at the QE. Returns the quote and, when a 960-byte
        qe_report_info was given, the same structure with its qe_report filled in."""
        ...
