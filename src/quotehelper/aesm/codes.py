"""Error codes: aesm_error_t on the wire, sgx_status_t in the client, and the mappings between them.

Values from linux-sgx aesm_error.h / sgx_error.h; mappings from aesm-protocol.md sections 3.3 and 3.5.
"""

from __future__ import annotations

import enum

from quotehelper.platform.engine import QuoteErrorCode


class AesmError(enum.IntEnum):
    """aesm_error_t: what travels in every response's errorCode."""

    SUCCESS = 0
    UNEXPECTED_ERROR = 1
    NO_DEVICE_ERROR = 2
    PARAMETER_ERROR = 3
    EPIDBLOB_ERROR = 4
    EPID_REVOKED_ERROR = 5
    GET_LICENSETOKEN_ERROR = 6
    SESSION_INVALID = 7
    MAX_NUM_SESSION_REACHED = 8
    PSDA_UNAVAILABLE = 9
    EPH_SESSION_FAILED = 10
    LONG_TERM_PAIRING_FAILED = 11
    NETWORK_ERROR = 12
    NETWORK_BUSY_ERROR = 13
    PROXY_SETTING_ASSIST = 14
    FILE_ACCESS_ERROR = 15
    SGX_PROVISION_FAILED = 16
    SERVICE_STOPPED = 17
    BUSY = 18
    BACKEND_SERVER_BUSY = 19
    UPDATE_AVAILABLE = 20
    OUT_OF_MEMORY_ERROR = 21
    MSG_ERROR = 22
    THREAD_ERROR = 23
    SGX_DEVICE_NOT_AVAILABLE = 24
    ENABLE_SGX_DEVICE_FAILED = 25
    PLATFORM_INFO_BLOB_INVALID_SIG = 26
    KDF_MISMATCH = 28
    OUT_OF_EPC = 29
    SERVICE_UNAVAILABLE = 30
    UNRECOGNIZED_PLATFORM = 31
    ECDSA_ID_MISMATCH = 32
    PATHNAME_BUFFER_OVERFLOW_ERROR = 33
    ERROR_STORED_KEY = 34
    PUB_KEY_ID_MISMATCH = 35
    INVALID_PCE_SIG_SCHEME = 36
    ATT_KEY_BLOB_ERROR = 37
    UNSUPPORTED_ATT_KEY_ID = 38
    UNSUPPORTED_LOADING_POLICY = 39
    INTERFACE_UNAVAILABLE = 40
    PLATFORM_LIB_UNAVAILABLE = 41
    ATT_KEY_NOT_INITIALIZED = 42
    ATT_KEY_CERT_DATA_INVALID = 43
    NO_PLATFORM_CERT_DATA = 44
    ERROR_REPORT = 45
    ENCLAVE_LOST = 46
    INVALID_REPORT = 47
    ENCLAVE_LOAD_ERROR = 48
    UNABLE_TO_GENERATE_QE_REPORT = 49
    KEY_CERTIFICATION_ERROR = 50
    CONFIG_UNSUPPORTED = 51


class SgxStatus(enum.IntEnum):
    """sgx_status_t values libsgx_quote_ex returns to applications."""

    SUCCESS = 0x0000
    ERROR_UNEXPECTED = 0x0001
    ERROR_INVALID_PARAMETER = 0x0002
    ERROR_OUT_OF_MEMORY = 0x0003
    ERROR_ENCLAVE_LOST = 0x0004
    ERROR_OUT_OF_EPC = 0x2005
    ERROR_NO_DEVICE = 0x2006
    ERROR_MAC_MISMATCH = 0x3001
    ERROR_INVALID_ATTRIBUTE = 0x3002
    ERROR_INVALID_CPUSVN = 0x3003
    ERROR_INVALID_ISVSVN = 0x3004
    ERROR_INVALID_KEYNAME = 0x3005
    ERROR_SERVICE_UNAVAILABLE = 0x4001
    ERROR_SERVICE_TIMEOUT = 0x4002
    ERROR_AE_INVALID_EPIDBLOB = 0x4003
    ERROR_SERVICE_INVALID_PRIVILEGE = 0x4004
    ERROR_EPID_MEMBER_REVOKED = 0x4005
    ERROR_UPDATE_NEEDED = 0x4006
    ERROR_NETWORK_FAILURE = 0x4007
    ERROR_BUSY = 0x400A
    ERROR_UNRECOGNIZED_PLATFORM = 0x4012
    ERROR_UNSUPPORTED_CONFIG = 0x4013
    ERROR_UNSUPPORTED_ATT_KEY_ID = 0x8001
    ERROR_ATT_KEY_CERTIFICATION_FAILURE = 0x8002
    ERROR_ATT_KEY_UNINITIALIZED = 0x8003
    ERROR_INVALID_ATT_KEY_CERT_DATA = 0x8004
    ERROR_PLATFORM_CERT_UNAVAILABLE = 0x8005


# Engine refusal -> wire code (section 3.5; the ECDSA bundle's quote3_error_to_aesm_error).
_ENGINE_TO_AESM: dict[QuoteErrorCode, AesmError] = {
    QuoteErrorCode.INVALID_PARAMETER: AesmError.PARAMETER_ERROR,
    QuoteErrorCode.UNSUPPORTED_ATT_KEY_ID: AesmError.UNSUPPORTED_ATT_KEY_ID,
    QuoteErrorCode.ATT_KEY_NOT_INITIALIZED: AesmError.ATT_KEY_NOT_INITIALIZED,
    QuoteErrorCode.ATT_KEY_CERT_DATA_INVALID: AesmError.ATT_KEY_CERT_DATA_INVALID,
    QuoteErrorCode.NO_PLATFORM_CERT_DATA: AesmError.NO_PLATFORM_CERT_DATA,
    QuoteErrorCode.INVALID_REPORT: AesmError.INVALID_REPORT,
    QuoteErrorCode.UNABLE_TO_GENERATE_QE_REPORT: AesmError.UNABLE_TO_GENERATE_QE_REPORT,
    QuoteErrorCode.KEY_CERTIFICATION_ERROR: AesmError.KEY_CERTIFICATION_ERROR,
    QuoteErrorCode.SERVICE_UNAVAILABLE: AesmError.SERVICE_UNAVAILABLE,
    QuoteErrorCode.UNEXPECTED: AesmError.UNEXPECTED_ERROR,
}


def aesm_code_for(code: QuoteErrorCode) -> AesmError:
    return _ENGINE_TO_AESM.get(code, AesmError.UNEXPECTED_ERROR)


# Step 2 of sgx_uae_service.cpp: the mapping common to every call.
_COMMON: dict[int, SgxStatus] = {
    0: SgxStatus.SUCCESS,
    20: SgxStatus.ERROR_UPDATE_NEEDED,
    1: SgxStatus.ERROR_UNEXPECTED,
    3: SgxStatus.ERROR_INVALID_PARAMETER,
    17: SgxStatus.ERROR_SERVICE_UNAVAILABLE,
    30: SgxStatus.ERROR_SERVICE_UNAVAILABLE,
    48: SgxStatus.ERROR_SERVICE_UNAVAILABLE,
    46: SgxStatus.ERROR_SERVICE_UNAVAILABLE,
    21: SgxStatus.ERROR_OUT_OF_MEMORY,
    18: SgxStatus.ERROR_BUSY,
    31: SgxStatus.ERROR_UNRECOGNIZED_PLATFORM,
    12: SgxStatus.ERROR_NETWORK_FAILURE,
    13: SgxStatus.ERROR_NETWORK_FAILURE,
    14: SgxStatus.ERROR_NETWORK_FAILURE,
    2: SgxStatus.ERROR_NO_DEVICE,
}

_EPID_AND_BUSY = {4: SgxStatus.ERROR_AE_INVALID_EPIDBLOB, 5: SgxStatus.ERROR_EPID_MEMBER_REVOKED,
                  19: SgxStatus.ERROR_BUSY, 16: SgxStatus.ERROR_UNEXPECTED, 29: SgxStatus.ERROR_OUT_OF_EPC}

# Step 3: per-call overrides, applied only when step 2 gave UNEXPECTED for a code other than 1.
_PER_CALL: dict[str, dict[int, SgxStatus]] = {
    "select_att_key_id": {38: SgxStatus.ERROR_UNSUPPORTED_ATT_KEY_ID},
    "init_quote_ex": {38: SgxStatus.ERROR_UNSUPPORTED_ATT_KEY_ID,
                      50: SgxStatus.ERROR_ATT_KEY_CERTIFICATION_FAILURE,
                      44: SgxStatus.ERROR_PLATFORM_CERT_UNAVAILABLE, **_EPID_AND_BUSY},
    "get_quote_size_ex": {42: SgxStatus.ERROR_ATT_KEY_UNINITIALIZED, 43: SgxStatus.ERROR_UNEXPECTED,
                          38: SgxStatus.ERROR_UNSUPPORTED_ATT_KEY_ID},
    "get_quote_ex": {42: SgxStatus.ERROR_ATT_KEY_UNINITIALIZED, 43: SgxStatus.ERROR_UNEXPECTED,
                     38: SgxStatus.ERROR_UNSUPPORTED_ATT_KEY_ID, 45: SgxStatus.ERROR_MAC_MISMATCH,
                     47: SgxStatus.ERROR_MAC_MISMATCH, 49: SgxStatus.ERROR_UNEXPECTED, **_EPID_AND_BUSY},
    "get_supported_att_key_id_num": {},
    "get_supported_att_key_ids": {},
}


def sgx_status_for(call: str, aesm_code: int) -> SgxStatus:
    """What libsgx_quote_ex returns to the app for `aesm_code` from `call` (section 3.3)."""
    status = _COMMON.get(aesm_code, SgxStatus.ERROR_UNEXPECTED)
    if status is SgxStatus.ERROR_UNEXPECTED and aesm_code != 1:
        status = _PER_CALL[call].get(aesm_code, status)
    return status


def aesm_name(code: int) -> str:
    try:
        return f"AESM_{AesmError(code).name}"
    except ValueError:
        return f"aesm_error {code}"


def sgx_name(status: int) -> str:
    try:
        return f"SGX_{SgxStatus(status).name}"
    except ValueError:
        return f"sgx_status 0x{status:04x}"
