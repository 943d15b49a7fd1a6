"""Wire compatibility: the frames libsgx-quote-ex sends (aesm-protocol.md Appendix A), byte for byte,
against the real server on a socket; and our client's requests compared with the same bytes."""

from __future__ import annotations

import hashlib
import struct

import pytest

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.client import AesmClient, quote_length
from quotehelper.aesm.framing import encode_frame
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, QeReportInfo, Report
from tests.aesm.conftest import ThreadedService, exchange

KID = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()
H = bytes.fromhex


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_default_key_id_bytes_match_section_4_6() -> None:
    expected = (H("0000 0000 2000") + H("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
                + bytes(16) + H("01000000") + bytes(96) + H("02000000") + bytes(98))
    assert expected == KID and len(KID) == 256


# Appendix A requests exactly as libsgx_quote_ex encodes them.
NUM_REQ = H("06000000 aa01 03 48 9875")
IDS_REQ = H("09000000 b201 06 08 8002 48 9875")
PROBE_REQ = H("0b010000 7a 8802 0a 8002") + KID + H("18 00 48 9875")
INIT_REQ = H("0d010000 7a 8a02 0a 8002") + KID + H("18 01 20 20 48 9875")
SIZE_REQ = H("0a010000 8201 8602 0a 8002") + KID + H("48 9875")


def get_quote_req(report: bytes, buf_size: int) -> bytes:
    body = H("0a b003") + report + H("12 8002") + KID + H("20") + varint(buf_size) + H("48 9875")
    payload = H("8a01") + varint(len(body)) + body
    return struct.pack("<I", len(payload)) + payload


def select_req(key_list: bytes) -> bytes:
    body = H("0a") + varint(len(key_list)) + key_list + H("10 9875")  # timeout is field 2 here
    payload = H("9a01") + varint(len(body)) + body
    return struct.pack("<I", len(payload)) + payload


def test_frame_sizes_match_appendix_a() -> None:
    assert (len(PROBE_REQ), len(INIT_REQ), len(SIZE_REQ)) == (271, 273, 270)
    assert len(get_quote_req(bytes(432), 4734)) == 708
    assert get_quote_req(bytes(432), 4734)[:11] == H("c0020000 8a01 bc05 0a b003")


def test_supported_key_id_num_and_ids(service: ThreadedService) -> None:
    assert exchange(service.sock, NUM_REQ) == H("07000000 aa01 04 0800 1001")
    reply = exchange(service.sock, IDS_REQ)
    assert len(reply) == 269
    assert reply == H("09010000 b201 8502 0800 12 8002") + KID


def test_two_step_init_quote_ex(service: ThreadedService, platform: SimPlatform) -> None:
    probe = exchange(service.sock, PROBE_REQ)
    assert probe == H("0a020000 7a 8704 0800 12 8004") + bytes(512) + H("18 20")
    real = exchange(service.sock, INIT_REQ)
    ti, pub_key_id = platform.engine().init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    assert len(real) == 560
    assert real == H("2c020000 7a a904 0800 12 8004") + ti.to_bytes() + H("18 20 22 20") + pub_key_id


def test_probe_ignores_garbage_buf_size(service: ThreadedService) -> None:
    # libsgx_dcap_ql sends an uninitialised stack variable as buf_size on the probe (§8.5.2).
    req = pb.Request()
    req.initQuoteExReq.att_key_id = KID
    req.initQuoteExReq.b_pub_key_id = False
    req.initQuoteExReq.buf_size = 0xDEADBEEFCAFE
    req.initQuoteExReq.timeout = 15000
    probe = exchange(service.sock, encode_frame(req.SerializeToString()))
    assert probe == H("0a020000 7a 8704 0800 12 8004") + bytes(512) + H("18 20")


def _report(platform: SimPlatform, data: bytes = b"wire") -> bytes:
    ti = platform.engine().target_info()
    return platform.enclave().report(ti, data).to_bytes()


def test_quote_size_then_quote_exact_and_padded(service: ThreadedService, platform: SimPlatform) -> None:
    size = platform.engine().quote_size(DEFAULT_ECDSA_ATT_KEY_ID)
    reply = exchange(service.sock, SIZE_REQ)
    assert reply == H("08000000 8201 05 0800 10") + varint(size)

    report = _report(platform)
    reply = exchange(service.sock, get_quote_req(report, size))
    head = H("8a01") + varint(2 + 1 + len(varint(size)) + size) + H("0800 12") + varint(size)
    assert reply[:4] == struct.pack("<I", len(reply) - 4)
    assert reply[4:4 + len(head)] == head
    quote = reply[4 + len(head):]
    assert len(quote) == size == quote_length(quote)  # exact: Open Enclave compares these
    assert parse_quote(quote).report_body.to_bytes() == report[:384]


def test_gramine_8192_byte_buffer(service: ThreadedService, platform: SimPlatform) -> None:
    report = _report(platform, b"gramine")
    reply = exchange(service.sock, get_quote_req(report, 8192))
    res = pb.Response.FromString(reply[4:])
    quote = res.getQuoteExRes.quote
    assert res.getQuoteExRes.errorCode == 0 and len(quote) == 8192  # the whole buffer, zero padded
    n = quote_length(quote)
    assert quote[n:] == bytes(8192 - n)
    assert parse_quote(quote[:n]).report_body.report_data[:7] == b"gramine"


def test_unknown_key_id_error_reply_is_exact(service: ThreadedService, platform: SimPlatform) -> None:
    other = bytearray(KID)
    other[154] = 3  # ECDSA-P384: not supported
    req = get_quote_req(_report(platform), 5000).replace(KID, bytes(other))
    assert exchange(service.sock, req) == H("05000000 8a01 02 0826")


def test_select_att_key_id_with_field_2_timeout(service: ThreadedService) -> None:
    key_list = struct.pack("<HHI", 0, 0, 1) + KID
    reply = exchange(service.sock, select_req(key_list))
    assert reply == H("09010000 9a01 8502 0800 12 8002") + KID


def test_qe_report_info_filled(service: ThreadedService, platform: SimPlatform) -> None:
    enclave = platform.enclave()
    nonce = hashlib.sha256(b"nonce").digest()[:16]
    qri = QeReportInfo(nonce, enclave.target_info()).to_bytes()
    report = enclave.report(platform.engine().target_info(), b"qri").to_bytes()
    client = AesmClient(_RawTransport(service.sock))
    size = client.get_quote_size_ex()
    quote, out = client.get_quote_ex(report, size, qe_report_info=qri)
    assert out is not None and len(out) == 960 and out[:528] == qri[:528]
    qe_report = Report.parse(out[528:])
    assert enclave.verify_report(qe_report)  # MACed for the app enclave (§5.7)
    assert qe_report.body.report_data == hashlib.sha256(nonce + quote).digest() + bytes(32)


class _RawTransport:
    """Sends what AesmClient builds over the socket, keeping the raw bytes for comparison."""

    def __init__(self, sock: str) -> None:
        self.sock = sock
        self.sent: list[bytes] = []

    def transact(self, call: str, req: pb.Request, timeout: float) -> pb.Response:
        frame = encode_frame(req.SerializeToString())
        self.sent.append(frame)
        reply = exchange(self.sock, frame)
        return pb.Response.FromString(reply[4:])


def test_our_client_sends_libsgx_quote_ex_bytes(service: ThreadedService, platform: SimPlatform) -> None:
    t = _RawTransport(service.sock)
    c = AesmClient(t)
    assert c.get_supported_att_key_id_num() == 1
    assert c.get_supported_att_key_ids(1) == [KID]
    ti, size, pkid = c.init_quote_ex(DEFAULT_ECDSA_ATT_KEY_ID, None)
    assert (ti, size, pkid) == (bytes(512), 32, None)
    ti, size, pkid = c.init_quote_ex(DEFAULT_ECDSA_ATT_KEY_ID, 32)
    assert size == 32 and pkid == platform.engine().init_quote(DEFAULT_ECDSA_ATT_KEY_ID)[1]
    qsize = c.get_quote_size_ex()
    report = _report(platform, b"client")
    quote, qri = c.get_quote_ex(report, qsize)
    assert qri is None and len(quote) == qsize
    assert c.select_att_key_id(struct.pack("<HHI", 0, 0, 1) + KID) == KID
    assert t.sent == [NUM_REQ, IDS_REQ, PROBE_REQ, INIT_REQ, SIZE_REQ, get_quote_req(report, qsize),
                      select_req(struct.pack("<HHI", 0, 0, 1) + KID)]


@pytest.mark.parametrize("field", ["getQuoteReq", "initQuoteReq", "getLicTokenReq", "getWhiteListSizeReq",
                                   "sgxGetExtendedEpidGroupIdReq", "checkUpdateStatusReq", "sgxRegisterReq"])
def test_legacy_calls_get_their_response_with_service_unavailable(service: ThreadedService, field: str) -> None:
    req = pb.Request()
    sub = getattr(req, field)
    sub.SetInParent()
    for name in ("report", "spid", "mr_enclave", "mr_signer", "se_attributes", "buf"):
        if name in sub.DESCRIPTOR.fields_by_name:
            setattr(sub, name, b"\x01")
    for name in ("quote_type", "buf_size", "update_info_size", "config", "data_type"):
        if name in sub.DESCRIPTOR.fields_by_name:
            setattr(sub, name, 1)
    assert sub.IsInitialized()
    res = pb.Response.FromString(exchange(service.sock, encode_frame(req.SerializeToString()))[4:])
    fields = [f.name for f, _ in res.ListFields()]
    assert fields == [field[:-3] + "Res"]
    assert getattr(res, fields[0]).errorCode == 30
