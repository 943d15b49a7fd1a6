"""Per-call rules of §2.7 and the code mappings of §3, on the pure handlers with the real sim engine."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.codes import AesmError, SgxStatus, aesm_code_for, sgx_status_for
from quotehelper.aesm.handlers import Dispatcher, EngineCall, engine_call_error, handle
from quotehelper.platform.engine import QuoteErrorCode
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, AttKeyId

KID = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()
P384 = AttKeyId(mrsigner=DEFAULT_ECDSA_ATT_KEY_ID.mrsigner, prod_id=1, algorithm_id=3).to_bytes()
EPID = AttKeyId(mrsigner=bytes(48), prod_id=1, algorithm_id=0).to_bytes()


@pytest.fixture(scope="module")
def dispatcher() -> Dispatcher:
    return Dispatcher([DEFAULT_ECDSA_ATT_KEY_ID])


def run(dispatcher: Dispatcher, platform: SimPlatform, req: pb.Request) -> pb.Response:
    res = handle(dispatcher, platform.engine(), req)
    assert res is not None
    return res


def select(dispatcher: Dispatcher, key_list: bytes | None) -> pb.Response.SelectAttKeyIDResponse:
    req = pb.Request()
    req.selectAttKeyIDReq.SetInParent()
    if key_list is not None:
        req.selectAttKeyIDReq.att_key_id_list = key_list
    res = dispatcher.inline(req)
    assert isinstance(res, pb.Response)
    return res.selectAttKeyIDRes


def klist(*ids: bytes, hid: int = 0, version: int = 0, num: int | None = None) -> bytes:
    return struct.pack("<HHI", hid, version, len(ids) if num is None else num) + b"".join(ids)


def test_select_rules(dispatcher: Dispatcher) -> None:
    assert select(dispatcher, None).selected_att_key_id == KID  # absent list: every supported id
    assert select(dispatcher, klist(KID)).selected_att_key_id == KID
    with_spid = bytearray(KID)
    with_spid[158:174] = b"S" * 16
    # The entry comes back as the caller sent it (spid included); the match is on 158 bytes.
    assert select(dispatcher, klist(EPID, bytes(with_spid))).selected_att_key_id == bytes(with_spid)
    assert select(dispatcher, klist(P384, EPID)).errorCode == AesmError.UNSUPPORTED_ATT_KEY_ID
    for bad in (klist(KID, hid=1), klist(KID, version=1), klist(*[KID] * 11), klist(KID, num=2),
                klist(KID)[:-1], klist()):
        r = select(dispatcher, bad)
        assert r.errorCode == AesmError.PARAMETER_ERROR and not r.HasField("selected_att_key_id")


def test_supported_ids_buf_size_must_be_exact(dispatcher: Dispatcher) -> None:
    for size, code in ((256, 0), (512, 3), (255, 3), (0, 3)):
        req = pb.Request()
        req.getSupportedAttKeyIDsReq.buf_size = size
        res = dispatcher.inline(req)
        assert isinstance(res, pb.Response) and res.getSupportedAttKeyIDsRes.errorCode == code


def test_no_supported_ids_is_service_unavailable() -> None:
    d = Dispatcher([])
    req = pb.Request()
    req.getSupportedAttKeyIDNumReq.timeout = 15000
    res = d.inline(req)
    assert isinstance(res, pb.Response)
    assert (res.getSupportedAttKeyIDNumRes.errorCode, res.getSupportedAttKeyIDNumRes.att_key_id_num) == (30, 0)


def init_req(key: bytes | None, b_pub: bool | None, buf_size: int | None = None) -> pb.Request:
    req = pb.Request()
    sub = req.initQuoteExReq
    sub.SetInParent()
    if key is not None:
        sub.att_key_id = key
    if b_pub is not None:
        sub.b_pub_key_id = b_pub
    if buf_size is not None:
        sub.buf_size = buf_size
    return req


@pytest.mark.parametrize(("key", "b_pub", "buf", "code", "echo"), [
    (None, True, 32, 3, 32),        # key id absent
    (KID[:255], True, 32, 3, 32),   # key id short
    (P384, True, 32, 38, 32),       # unknown key id
    (P384, False, None, 38, 0),     # the probe checks the key id too
    (KID, True, 64, 3, 64),         # pub key id buffer must be 32
    (KID, True, None, 3, 0),        # absent buf_size counts as 0
    (KID, None, 32, 1, 32),         # required b_pub_key_id missing: IsInitialized fails
])
def test_init_quote_ex_errors(dispatcher: Dispatcher, platform: SimPlatform, key: bytes | None,
                              b_pub: bool | None, buf: int | None, code: int, echo: int) -> None:
    r = run(dispatcher, platform, init_req(key, b_pub, buf)).initQuoteExRes
    assert r.errorCode == code
    assert r.HasField("pub_key_id_size") and r.pub_key_id_size == echo  # present even on error
    assert not r.HasField("target_info") and not r.HasField("pub_key_id")


def test_init_quote_ex_probe_stays_inline(dispatcher: Dispatcher) -> None:
    assert isinstance(dispatcher.inline(init_req(KID, False)), pb.Response)
    assert isinstance(dispatcher.inline(init_req(KID, True, 32)), EngineCall)


def test_quote_size_before_any_key_is_42(dispatcher: Dispatcher, tmp_path: Path) -> None:
    fresh = SimPlatform.create(tmp_path / "fresh")
    req = pb.Request()
    req.getQuoteSizeExReq.att_key_id = KID
    r = handle(dispatcher, fresh.engine(), req).getQuoteSizeExRes  # type: ignore[union-attr]
    assert (r.errorCode, r.HasField("quote_size"), r.quote_size) == (42, True, 0)
    assert sgx_status_for("get_quote_size_ex", 42) == SgxStatus.ERROR_ATT_KEY_UNINITIALIZED
    res = handle(dispatcher, fresh.engine(), init_req(KID, True, 32))
    assert res is not None and res.initQuoteExRes.errorCode == 0
    assert handle(dispatcher, fresh.engine(), req).getQuoteSizeExRes.errorCode == 0  # type: ignore[union-attr]


def quote_req(report: bytes, buf_size: int, key: bytes | None = KID, qri: bytes | None = None) -> pb.Request:
    req = pb.Request()
    sub = req.getQuoteExReq
    sub.report = report
    sub.buf_size = buf_size
    if key is not None:
        sub.att_key_id = key
    if qri is not None:
        sub.qe_report_info = qri
    return req


def test_get_quote_ex_errors(dispatcher: Dispatcher, platform: SimPlatform) -> None:
    eng = platform.engine()
    report = platform.enclave().report(eng.target_info(), b"x").to_bytes()
    size = eng.quote_size(DEFAULT_ECDSA_ATT_KEY_ID)
    tampered = bytearray(report)
    tampered[320] ^= 1  # report_data changed after EREPORT: the MAC no longer verifies
    wrong_target = platform.enclave().report(platform.enclave().target_info(), b"x").to_bytes()
    qri = bytes(960)
    cases = [
        (quote_req(report, size, key=None), 3), (quote_req(report, size, key=KID[:200]), 3),
        (quote_req(report, size, key=P384), 38), (quote_req(report[:431], size), 3),
        (quote_req(report + b"\0", size), 3), (quote_req(report, size, qri=bytes(959)), 3),
        (quote_req(bytes(tampered), size), 47), (quote_req(wrong_target, size), 47),
        (quote_req(report, size - 1), 3), (quote_req(report, 1 << 30), 21),
        (quote_req(bytes(tampered), size, qri=qri), 47),
    ]
    for req, code in cases:
        r = run(dispatcher, platform, req).getQuoteExRes
        assert r.errorCode == code, (req, code)
        assert not r.HasField("quote")
        # qe_report_info, when sent, is echoed on error (the client copies it back regardless).
        assert r.HasField("qe_report_info") == req.getQuoteExReq.HasField("qe_report_info")
    assert sgx_status_for("get_quote_ex", 47) == SgxStatus.ERROR_MAC_MISMATCH
    ok = run(dispatcher, platform, quote_req(report, size + 100)).getQuoteExRes
    assert ok.errorCode == 0 and len(ok.quote) == size + 100 and ok.quote[size:] == bytes(100)


def test_request_precedence_and_unknown_requests(dispatcher: Dispatcher) -> None:
    req = pb.Request()
    req.getSupportedAttKeyIDNumReq.timeout = 1
    req.getLicTokenReq.mr_enclave = req.getLicTokenReq.mr_signer = req.getLicTokenReq.se_attributes = b"x"
    res = dispatcher.inline(req)  # AESM looks at getLicTokenReq (3) first
    assert isinstance(res, pb.Response) and [f.name for f, _ in res.ListFields()] == ["getLicTokenRes"]
    assert dispatcher.inline(pb.Request()) is None  # nothing AESM knows: close without reply


def test_engine_code_mapping_is_total() -> None:
    expected = {"INVALID_PARAMETER": 3, "UNSUPPORTED_ATT_KEY_ID": 38, "ATT_KEY_NOT_INITIALIZED": 42,
                "ATT_KEY_CERT_DATA_INVALID": 43, "NO_PLATFORM_CERT_DATA": 44, "INVALID_REPORT": 47,
                "UNABLE_TO_GENERATE_QE_REPORT": 49, "KEY_CERTIFICATION_ERROR": 50, "SERVICE_UNAVAILABLE": 30,
                "UNEXPECTED": 1}
    assert {c.name: int(aesm_code_for(c)) for c in QuoteErrorCode} == expected


@pytest.mark.parametrize(("call", "code", "status"), [
    ("get_quote_ex", 0, 0x0000), ("get_quote_ex", 1, 0x0001), ("get_quote_ex", 3, 0x0002),
    ("get_quote_ex", 18, 0x400A), ("get_quote_ex", 30, 0x4001), ("get_quote_ex", 45, 0x3001),
    ("get_quote_ex", 43, 0x0001), ("get_quote_ex", 49, 0x0001), ("get_quote_ex", 29, 0x2005),
    ("init_quote_ex", 42, 0x0001),  # no per-call override for init: 42 collapses to UNEXPECTED
    ("init_quote_ex", 50, 0x8002), ("init_quote_ex", 44, 0x8005), ("init_quote_ex", 19, 0x400A),
    ("select_att_key_id", 38, 0x8001), ("get_supported_att_key_ids", 38, 0x0001),
    ("get_quote_size_ex", 20, 0x4006), ("get_quote_size_ex", 13, 0x4007), ("get_quote_size_ex", 2, 0x2006),
])
def test_client_status_mapping(call: str, code: int, status: int) -> None:
    assert sgx_status_for(call, code) == status


def test_busy_replies_keep_the_fields_aesm_always_sends(dispatcher: Dispatcher) -> None:
    init = dispatcher.inline(init_req(KID, True, 32))
    assert isinstance(init, EngineCall)
    r = engine_call_error(init, AesmError.BUSY).initQuoteExRes
    assert (r.errorCode, r.HasField("pub_key_id_size"), r.pub_key_id_size) == (18, True, 32)
    quote = dispatcher.inline(quote_req(bytes(432), 5000, qri=bytes(960)))
    assert isinstance(quote, EngineCall)
    q = engine_call_error(quote, AesmError.BUSY).getQuoteExRes
    assert q.errorCode == 18 and q.qe_report_info == bytes(960) and not q.HasField("quote")
