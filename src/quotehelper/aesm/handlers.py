"""Per-call AESM logic, pure: a parsed Request in, the matching Response out (aesm-protocol.md §2.7).

Split in two so the server can keep cheap calls off the quoting workers:
- `Dispatcher.inline(req)` answers everything that needs no engine (key-id catalogue, SelectAttKeyID,
  the InitQuoteEx probe, legacy EPID/launch calls, and every request that fails AESM's own checks);
  it returns an `EngineCall` when the engine is needed.
- `run_engine_call(engine, call)` performs that engine part; it runs wherever the engine lives (a worker
  process, or the application itself for the in-process client).
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.codes import AesmError, aesm_code_for
from quotehelper.errors import QuoteHelperError
from quotehelper.platform.engine import QuoteError, QuotingEngine
from quotehelper.sgx.structs import (
    ALG_ECDSA_P256,
    ATT_KEY_ID_EXT_SIZE,
    ATT_KEY_ID_LIST_HEADER_SIZE,
    ATT_KEY_ID_SIZE,
    QE_REPORT_INFO_SIZE,
    REPORT_SIZE,
    TARGET_INFO_SIZE,
    AttKeyId,
)

log = logging.getLogger(__name__)

PUB_KEY_ID_SIZE = 32  # ECDSA_ID = SHA-256(attest pub key || QE auth data)
MAX_SELECT_IDS = 10  # AESM's limit on sgx_ql_att_key_id_list_t entries
# GetQuoteEx pads the quote to buf_size; AESM would `new` any size. Real clients ask for the exact size
# (<= ~13.5 KB with the largest certification data DCAP allows) or 8192 (Gramine). Above this cap we
# answer like a failed allocation (21) rather than pad megabytes per request.
MAX_QUOTE_BUF = 64 << 10

# Request field names in the order AESM looks for them when several are set (§2.1).
_PRECEDENCE = ("getLicTokenReq", "initQuoteReq", "getQuoteReq", "reportErrReq", "checkUpdateStatusReq",
               "getWhiteListSizeReq", "getWhiteListReq", "sgxGetExtendedEpidGroupIdReq",
               "sgxSwitchExtendedEpidGroupReq", "sgxRegisterReq", "initQuoteExReq", "getQuoteSizeExReq",
               "getQuoteExReq", "selectAttKeyIDReq", "getSupportedAttKeyIDNumReq", "getSupportedAttKeyIDsReq")

# Request field -> Response field (same field number).
_RESPONSE_FIELD = {
    "initQuoteReq": "initQuoteRes", "getQuoteReq": "getQuoteRes", "getLicTokenReq": "getLicTokenRes",
    "reportErrReq": "reportErrRes", "getWhiteListSizeReq": "getWhiteListSizeRes",
    "getWhiteListReq": "getWhiteListRes", "sgxGetExtendedEpidGroupIdReq": "sgxGetExtendedEpidGroupIdRes",
    "sgxSwitchExtendedEpidGroupReq": "sgxSwitchExtendedEpidGroupRes", "sgxRegisterReq": "sgxRegisterRes",
    "initQuoteExReq": "initQuoteExRes", "getQuoteSizeExReq": "getQuoteSizeExRes",
    "getQuoteExReq": "getQuoteExRes", "checkUpdateStatusReq": "checkUpdateStatusRes",
    "selectAttKeyIDReq": "selectAttKeyIDRes", "getSupportedAttKeyIDNumReq": "getSupportedAttKeyIDNumRes",
    "getSupportedAttKeyIDsReq": "getSupportedAttKeyIDsRes",
}
_LEGACY = frozenset(_PRECEDENCE[:10])  # EPID quoting, launch, platform services: no plugin here

# Engine-backed calls, identified by their Request field number (also the worker message tag).
INIT_QUOTE_EX = 15
GET_QUOTE_SIZE_EX = 16
GET_QUOTE_EX = 17


class BadFrame(QuoteHelperError):
    """A payload that is not an AESM request AESM would answer; the connection is closed unanswered."""


def parse_request(payload: bytes) -> pb.Request:
    req = pb.Request()
    try:
        req.ParseFromString(payload)
    except Exception as e:  # upb raises DecodeError; anything else is equally "not a request"
        raise BadFrame(f"not an aesm.message.Request: {e}") from e
    return req


_PRECEDENCE_RANK = {name: i for i, name in enumerate(_PRECEDENCE)}


def selected_call(req: pb.Request) -> str | None:
    """The request field AESM would act on, or None (AESM then closes without replying)."""
    present = [f.name for f, _ in req.ListFields() if f.name in _PRECEDENCE_RANK]
    if len(present) <= 1:  # the normal case: exactly one call set
        return present[0] if present else None
    return min(present, key=_PRECEDENCE_RANK.__getitem__)


def error_response(call: str, code: int) -> pb.Response:
    """The matching sub-message with only errorCode set (used for BUSY, legacy calls, failures)."""
    res = pb.Response()
    getattr(res, _RESPONSE_FIELD[call]).errorCode = int(code)
    return res


@dataclass(frozen=True)
class EngineCall:
    """The engine part of a validated quote-ex request: `sub` is the request's (parsed) sub-message,
    handed over as is (serializing it for the engine side and parsing it back cost a few us a call)."""

    tag: int  # INIT_QUOTE_EX / GET_QUOTE_SIZE_EX / GET_QUOTE_EX
    sub: Any = field(compare=False)

    @property
    def payload(self) -> bytes:
        """The serialized sub-message."""
        return self.sub.SerializeToString()  # type: ignore[no-any-return]


def _key_id_error(key_id: bytes | None, supported: Sequence[bytes]) -> AesmError | None:
    """AESM's checks on a request's att_key_id: absent/short -> 3, unknown first 158 bytes -> 38."""
    if key_id is None or len(key_id) < ATT_KEY_ID_EXT_SIZE:
        return AesmError.PARAMETER_ERROR
    if key_id[:ATT_KEY_ID_SIZE] not in supported:
        return AesmError.UNSUPPORTED_ATT_KEY_ID
    return None


def _algorithm_id(key_id: bytes) -> int:
    return struct.unpack_from("<I", key_id, 154)[0]


class Dispatcher:
    """Answers what needs no engine; knows the engine's supported key ids (fixed for its lifetime)."""

    def __init__(self, supported_ids: Sequence[AttKeyId]) -> None:
        self.supported_ext = [k.to_bytes() for k in supported_ids]
        self.supported = [k[:ATT_KEY_ID_SIZE] for k in self.supported_ext]

    def inline(self, req: pb.Request) -> pb.Response | EngineCall | None:
        call = selected_call(req)
        if call is None:
            return None
        sub = getattr(req, call)
        if not sub.IsInitialized():  # a required field is missing: AESM's check() fails -> 1
            return self.fill_defaults(call, sub, error_response(call, AesmError.UNEXPECTED_ERROR))
        if call in _LEGACY:
            return error_response(call, AesmError.SERVICE_UNAVAILABLE)
        return getattr(self, "_" + call)(sub)

    @staticmethod
    def fill_defaults(call: str, sub: object, res: pb.Response) -> pb.Response:
        # Fields the real responses always carry, even on error.
        if call == "initQuoteExReq":
            res.initQuoteExRes.pub_key_id_size = sub.buf_size  # type: ignore[attr-defined]
        elif call == "getQuoteSizeExReq":
            res.getQuoteSizeExRes.quote_size = 0
        elif call == "getQuoteExReq" and sub.HasField("qe_report_info"):  # type: ignore[attr-defined]
            res.getQuoteExRes.qe_report_info = sub.qe_report_info  # type: ignore[attr-defined]
        return res

    # --- key-id catalogue -------------------------------------------------------------------------

    def _getSupportedAttKeyIDNumReq(self, sub: pb.Request.GetSupportedAttKeyIDNumRequest) -> pb.Response:
        res = pb.Response()
        r = res.getSupportedAttKeyIDNumRes
        n = len(self.supported_ext)
        r.errorCode = AesmError.SUCCESS if n else AesmError.SERVICE_UNAVAILABLE
        r.att_key_id_num = n
        return res

    def _getSupportedAttKeyIDsReq(self, sub: pb.Request.GetSupportedAttKeyIDsRequest) -> pb.Response:
        res = pb.Response()
        r = res.getSupportedAttKeyIDsRes
        n = len(self.supported_ext)
        if not n:
            r.errorCode = AesmError.SERVICE_UNAVAILABLE
        elif sub.buf_size % ATT_KEY_ID_EXT_SIZE or sub.buf_size != n * ATT_KEY_ID_EXT_SIZE:
            r.errorCode = AesmError.PARAMETER_ERROR
        else:
            r.errorCode = AesmError.SUCCESS
            r.att_key_ids = b"".join(self.supported_ext)
        return res

    def _selectAttKeyIDReq(self, sub: pb.Request.SelectAttKeyIDRequest) -> pb.Response:
        res = pb.Response()
        r = res.selectAttKeyIDRes
        if sub.HasField("att_key_id_list"):
            data = sub.att_key_id_list
            if len(data) < ATT_KEY_ID_LIST_HEADER_SIZE + ATT_KEY_ID_EXT_SIZE:
                r.errorCode = AesmError.PARAMETER_ERROR
                return res
            hid, version, num = struct.unpack_from("<HHI", data)
            if hid or version or num > MAX_SELECT_IDS or len(data) != 8 + ATT_KEY_ID_EXT_SIZE * num:
                r.errorCode = AesmError.PARAMETER_ERROR
                return res
            entries = [data[8 + 256 * i: 8 + 256 * (i + 1)] for i in range(num)]
            matches = [e for e in entries if e[:ATT_KEY_ID_SIZE] in self.supported]
        else:
            matches = list(self.supported_ext)
        if not matches:
            r.errorCode = AesmError.UNSUPPORTED_ATT_KEY_ID
            return res
        # Several candidates: the one of the default quoting type (ECDSA), else the first.
        chosen = next((m for m in matches if _algorithm_id(m) == ALG_ECDSA_P256), matches[0])
        r.errorCode = AesmError.SUCCESS
        r.selected_att_key_id = chosen  # as the caller sent it, spid included
        return res

    # --- quote-ex: AESM-level checks inline, engine work deferred ------------------------------------

    def _initQuoteExReq(self, sub: pb.Request.InitQuoteExRequest) -> pb.Response | EngineCall:
        key_err = _key_id_error(sub.att_key_id if sub.HasField("att_key_id") else None, self.supported)
        if key_err is None and not sub.b_pub_key_id:
            # The probe: AESM's zeroed 512-byte buffer comes back untouched; buf_size is ignored (the
            # DCAP wrapper sends an uninitialised one).
            res = pb.Response()
            r = res.initQuoteExRes
            r.errorCode = AesmError.SUCCESS
            r.target_info = bytes(TARGET_INFO_SIZE)
            r.pub_key_id_size = PUB_KEY_ID_SIZE
            return res
        if key_err is None and sub.buf_size != PUB_KEY_ID_SIZE:
            key_err = AesmError.PARAMETER_ERROR
        if key_err is not None:
            return self.fill_defaults("initQuoteExReq", sub, error_response("initQuoteExReq", key_err))
        return EngineCall(INIT_QUOTE_EX, sub)

    def _getQuoteSizeExReq(self, sub: pb.Request.GetQuoteSizeExRequest) -> pb.Response | EngineCall:
        key_err = _key_id_error(sub.att_key_id if sub.HasField("att_key_id") else None, self.supported)
        if key_err is not None:
            return self.fill_defaults("getQuoteSizeExReq", sub, error_response("getQuoteSizeExReq", key_err))
        return EngineCall(GET_QUOTE_SIZE_EX, sub)

    def _getQuoteExReq(self, sub: pb.Request.GetQuoteExRequest) -> pb.Response | EngineCall:
        err = _key_id_error(sub.att_key_id if sub.HasField("att_key_id") else None, self.supported)
        if err is None and (len(sub.report) != REPORT_SIZE or (
                sub.HasField("qe_report_info") and len(sub.qe_report_info) != QE_REPORT_INFO_SIZE)):
            err = AesmError.PARAMETER_ERROR
        if err is None and sub.buf_size > MAX_QUOTE_BUF:
            err = AesmError.OUT_OF_MEMORY_ERROR
        if err is not None:
            return self.fill_defaults("getQuoteExReq", sub, error_response("getQuoteExReq", err))
        return EngineCall(GET_QUOTE_EX, sub)


@functools.lru_cache(maxsize=64)
def _att_key_id(raw: bytes) -> AttKeyId:
    # Clients send the same few 256-byte ids over and over; AttKeyId is immutable, so parse each once.
    return AttKeyId.parse(raw[:ATT_KEY_ID_EXT_SIZE])


def _engine_code(e: Exception) -> AesmError:
    if isinstance(e, QuoteError):
        return aesm_code_for(e.code)
    log.exception("engine failed unexpectedly")
    return AesmError.UNEXPECTED_ERROR


_ENGINE_CALLS = {INIT_QUOTE_EX: "initQuoteExReq", GET_QUOTE_SIZE_EX: "getQuoteSizeExReq",
                 GET_QUOTE_EX: "getQuoteExReq"}


def engine_call_error(call: EngineCall, code: int) -> pb.Response:
    """An error reply for a validated engine call (e.g. AESM_BUSY), with the fields AESM always sends."""
    name = _ENGINE_CALLS[call.tag]
    return Dispatcher.fill_defaults(name, call.sub, error_response(name, code))


def run_engine_call(engine: QuotingEngine, call: EngineCall,
                    observe_quote: Callable[[float], None] | None = None) -> pb.Response:
    """The engine half of InitQuoteEx / GetQuoteSizeEx / GetQuoteEx. Never raises.

    `observe_quote` gets the seconds every engine.get_quote call took (successful or not)."""
    res = pb.Response()
    if call.tag == INIT_QUOTE_EX:
        sub = call.sub
        r = res.initQuoteExRes
        try:
            target_info, pub_key_id = engine.init_quote(_att_key_id(sub.att_key_id))
        except Exception as e:  # noqa: BLE001 - every failure becomes a wire code
            r.errorCode = _engine_code(e)
            r.pub_key_id_size = sub.buf_size
            return res
        r.errorCode = AesmError.SUCCESS
        r.target_info = target_info.to_bytes()
        r.pub_key_id_size = len(pub_key_id)
        r.pub_key_id = pub_key_id
        return res
    if call.tag == GET_QUOTE_SIZE_EX:
        sub = call.sub
        r = res.getQuoteSizeExRes
        try:
            size = engine.quote_size(_att_key_id(sub.att_key_id))
        except Exception as e:  # noqa: BLE001
            r.errorCode = _engine_code(e)
            r.quote_size = 0
            return res
        r.errorCode = AesmError.SUCCESS
        r.quote_size = size
        return res
    if call.tag == GET_QUOTE_EX:
        sub = call.sub
        r = res.getQuoteExRes
        qri = sub.qe_report_info if sub.HasField("qe_report_info") else None
        key_id = _att_key_id(sub.att_key_id)
        t0 = perf_counter()
        try:
            quote, qri_out = engine.get_quote(sub.report, key_id, qri)
        except Exception as e:  # noqa: BLE001
            if observe_quote is not None:
                observe_quote(perf_counter() - t0)
            r.errorCode = _engine_code(e)
            if qri is not None:
                r.qe_report_info = qri
            return res
        if observe_quote is not None:
            observe_quote(perf_counter() - t0)
        if len(quote) > sub.buf_size:  # the QE refuses a buffer smaller than the quote
            r.errorCode = AesmError.PARAMETER_ERROR
            if qri is not None:
                r.qe_report_info = qri
            return res
        r.errorCode = AesmError.SUCCESS
        r.quote = quote + bytes(sub.buf_size - len(quote))  # AESM returns the whole zero-padded buffer
        if qri is not None:
            r.qe_report_info = qri_out if qri_out is not None else qri
        return res
    raise ValueError(f"not an engine call tag: {call.tag}")


def handle(dispatcher: Dispatcher, engine: QuotingEngine, req: pb.Request) -> pb.Response | None:
    """The whole call in one place (in-process client, tests): inline part, then the engine part."""
    out = dispatcher.inline(req)
    if isinstance(out, EngineCall):
        return run_engine_call(engine, out)
    return out
