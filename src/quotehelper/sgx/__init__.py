"""Byte-exact SGX structures and DCAP quotes. Parse and encode only: no crypto, no I/O."""

from quotehelper.sgx.pck import PckExtension
from quotehelper.sgx.quote import CertificationData, Quote, QuoteHeader, parse_quote
from quotehelper.sgx.structs import (
    DEFAULT_ECDSA_ATT_KEY_ID,
    AttKeyId,
    AttKeyIdList,
    Attributes,
    KeyRequest,
    QeReportInfo,
    Report,
    ReportBody,
    TargetInfo,
)

__all__ = [
    "DEFAULT_ECDSA_ATT_KEY_ID", "AttKeyId", "AttKeyIdList", "Attributes", "CertificationData", "KeyRequest",
    "PckExtension", "QeReportInfo", "Quote", "QuoteHeader", "Report", "ReportBody", "TargetInfo", "parse_quote",
]
