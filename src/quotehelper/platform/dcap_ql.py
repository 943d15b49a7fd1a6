"""The hardware engine: Intel's DCAP quoting library (QE3 + PCE on a real SGX CPU) through its C ABI.

Binds the same four calls AESM's ECDSA plugin makes (DCAP `sgx_ql_core_wrapper.h`):
`sgx_ql_set_enclave_load_policy`, `sgx_ql_init_quote`, `sgx_ql_get_quote_size`, `sgx_ql_get_quote`.
They live in `libsgx_qe3_logic.so.1` (and are re-exported by `libsgx_dcap_ql.so.1`). Structures cross
the boundary as the packed byte images from `quotehelper.sgx`, so no ctypes struct mirrors them.

No machine here has SGX: the tests build a stand-in library with the same ABI (tests/platform/).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from quotehelper.platform.engine import QuoteError, QuoteErrorCode
from quotehelper.sgx.structs import (
    DEFAULT_ECDSA_ATT_KEY_ID,
    QE_REPORT_INFO_SIZE,
    REPORT_SIZE,
    TARGET_INFO_SIZE,
    AttKeyId,
    TargetInfo,
)

DEFAULT_LIBRARIES = ("libsgx_qe3_logic.so.1", "libsgx_qe3_logic.so", "libsgx_dcap_ql.so.1")
SGX_QL_PERSISTENT = 0  # sgx_ql_request_policy_t: keep QE/PCE loaded between calls, as AESM does

# quote3_error_t values (DCAP sgx_ql_lib_common.h) → the engine's error names.
_Q3 = {
    0xE001: QuoteErrorCode.UNEXPECTED,
    0xE002: QuoteErrorCode.INVALID_PARAMETER,
    0xE00B: QuoteErrorCode.UNSUPPORTED_ATT_KEY_ID,
    0xE00F: QuoteErrorCode.ATT_KEY_NOT_INITIALIZED,
    0xE010: QuoteErrorCode.ATT_KEY_CERT_DATA_INVALID,
    0xE011: QuoteErrorCode.NO_PLATFORM_CERT_DATA,
    0xE015: QuoteErrorCode.INVALID_REPORT,
    0xE017: QuoteErrorCode.UNABLE_TO_GENERATE_QE_REPORT,
    0xE018: QuoteErrorCode.KEY_CERTIFICATION_ERROR,
    0xE040: QuoteErrorCode.SERVICE_UNAVAILABLE,
}


def _check(rc: int, call: str) -> None:
    if rc != 0:
        code = _Q3.get(rc, QuoteErrorCode.UNEXPECTED)
        raise QuoteError(code, f"{call} returned quote3_error_t {rc:#06x}")


class DcapQlEngine:
    """QuotingEngine over libsgx_qe3_logic / libsgx_dcap_ql.

    The library keeps QE state per process and is not documented as thread-safe, so calls are
    serialised with a lock; the AESM server gets parallelism from worker processes instead.
    """

    def __init__(self, library: str | None = None) -> None:
        self._lib = self._load(library)
        self._lock = threading.Lock()
        u8p = ctypes.c_char_p
        self._lib.sgx_ql_init_quote.argtypes = [u8p, u8p, ctypes.c_bool, ctypes.POINTER(ctypes.c_size_t), u8p]
        self._lib.sgx_ql_get_quote_size.argtypes = [u8p, ctypes.POINTER(ctypes.c_uint32)]
        self._lib.sgx_ql_get_quote.argtypes = [u8p, u8p, u8p, u8p, ctypes.c_uint32]
        for fn in ("sgx_ql_init_quote", "sgx_ql_get_quote_size", "sgx_ql_get_quote"):
            getattr(self._lib, fn).restype = ctypes.c_uint32
        policy = getattr(self._lib, "sgx_ql_set_enclave_load_policy", None)
        if policy is not None:
            policy.argtypes, policy.restype = [ctypes.c_int], ctypes.c_uint32
            _check(policy(SGX_QL_PERSISTENT), "sgx_ql_set_enclave_load_policy")

    @staticmethod
    def _load(library: str | None) -> ctypes.CDLL:
        candidates = [library] if library else [os.environ.get("QUOTEHELPER_DCAP_LIB", ""), *DEFAULT_LIBRARIES]
        errors = []
        for name in filter(None, candidates):
            try:
                return ctypes.CDLL(name)
            except OSError as e:
                errors.append(f"{name}: {e}")
        raise QuoteError(QuoteErrorCode.SERVICE_UNAVAILABLE,
                         "Intel DCAP quoting library not found (install libsgx-dcap-ql): " + "; ".join(errors))

    def supported_att_key_ids(self) -> list[AttKeyId]:
        return [DEFAULT_ECDSA_ATT_KEY_ID]

    def init_quote(self, att_key_id: AttKeyId) -> tuple[TargetInfo, bytes]:
        kid = ctypes.create_string_buffer(att_key_id.base_bytes(), AttKeyId.BASE_SIZE)
        ti = ctypes.create_string_buffer(TARGET_INFO_SIZE)
        size = ctypes.c_size_t(32)
        pub = ctypes.create_string_buffer(32)
        with self._lock:
            _check(self._lib.sgx_ql_init_quote(kid, ti, False, ctypes.byref(size), pub), "sgx_ql_init_quote")
        return TargetInfo.parse(ti.raw), pub.raw[: size.value]

    def quote_size(self, att_key_id: AttKeyId) -> int:
        kid = ctypes.create_string_buffer(att_key_id.base_bytes(), AttKeyId.BASE_SIZE)
        size = ctypes.c_uint32(0)
        with self._lock:
            _check(self._lib.sgx_ql_get_quote_size(kid, ctypes.byref(size)), "sgx_ql_get_quote_size")
        return size.value

    def get_quote(self, report: bytes, att_key_id: AttKeyId,
                  qe_report_info: bytes | None = None) -> tuple[bytes, bytes | None]:
        if len(report) != REPORT_SIZE:
            raise QuoteError(QuoteErrorCode.INVALID_PARAMETER, f"report is {len(report)} bytes, expected 432")
        if qe_report_info is not None and len(qe_report_info) != QE_REPORT_INFO_SIZE:
            raise QuoteError(QuoteErrorCode.INVALID_PARAMETER,
                             f"qe_report_info is {len(qe_report_info)} bytes, expected 960")
        size = self.quote_size(att_key_id)
        kid = ctypes.create_string_buffer(att_key_id.base_bytes(), AttKeyId.BASE_SIZE)
        rep = ctypes.create_string_buffer(report, REPORT_SIZE)
        qri = ctypes.create_string_buffer(qe_report_info, QE_REPORT_INFO_SIZE) if qe_report_info else None
        out = ctypes.create_string_buffer(size)
        with self._lock:
            _check(self._lib.sgx_ql_get_quote(rep, kid, qri, out, size), "sgx_ql_get_quote")
        return out.raw, (qri.raw if qri is not None else None)
