"""The hardware engine's C-ABI marshalling, against a stand-in library compiled here (no SGX on CI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from quotehelper.platform.dcap_ql import DcapQlEngine
from quotehelper.platform.engine import QuoteError, QuoteErrorCode
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, AttKeyId, Report, ReportBody


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to build the stand-in DCAP library")
    out = tmp_path_factory.mktemp("dcap") / "libfake_qe3_logic.so"
    src = Path(__file__).with_name("fake_qe3_logic.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src)], check=True)
    return out


def _report(mac: bytes) -> bytes:
    return Report(ReportBody(report_data=b"\x42" * 64, isv_svn=3), b"\x01" * 32, mac).to_bytes()


def test_full_flow_marshals_bytes(fake_lib):
    eng = DcapQlEngine(str(fake_lib))
    with pytest.raises(QuoteError) as e:
        eng.quote_size(DEFAULT_ECDSA_ATT_KEY_ID)
    assert e.value.code is QuoteErrorCode.ATT_KEY_NOT_INITIALIZED
    ti, pub = eng.init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    assert ti.mr_enclave == b"\xab" * 32 and ti.attributes.flags == 0x15 and pub == bytes(range(32))
    assert eng.quote_size(DEFAULT_ECDSA_ATT_KEY_ID) == 1100
    quote, qri = eng.get_quote(_report(b"\x07" * 16), DEFAULT_ECDSA_ATT_KEY_ID, bytes(960))
    assert len(quote) == 1100 and quote[48:432] == _report(b"\x07" * 16)[:384]
    assert qri is not None and qri[528:] == b"\xcd" * 432 and qri[:528] == bytes(528)


def test_library_errors_become_engine_codes(fake_lib):
    eng = DcapQlEngine(str(fake_lib))
    eng.init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    with pytest.raises(QuoteError) as e:
        eng.get_quote(_report(bytes(16)), DEFAULT_ECDSA_ATT_KEY_ID)
    assert e.value.code is QuoteErrorCode.INVALID_REPORT and "0xe015" in str(e.value)
    epid = AttKeyId(algorithm_id=0)
    with pytest.raises(QuoteError) as e:
        eng.init_quote(epid)
    assert e.value.code is QuoteErrorCode.UNSUPPORTED_ATT_KEY_ID
    with pytest.raises(QuoteError) as e:
        eng.get_quote(bytes(431), DEFAULT_ECDSA_ATT_KEY_ID)
    assert e.value.code is QuoteErrorCode.INVALID_PARAMETER


def test_missing_library_is_service_unavailable(tmp_path):
    with pytest.raises(QuoteError) as e:
        DcapQlEngine(str(tmp_path / "nope.so"))
    assert e.value.code is QuoteErrorCode.SERVICE_UNAVAILABLE and "libsgx-dcap-ql" in str(e.value)


def test_every_worker_of_a_dcap_service_is_ready_to_quote(fake_lib, tmp_path, monkeypatch):
    """DCAP keeps the attestation key per process. An app calls InitQuoteEx once and then quotes, and its
    connections land on any worker: each worker must have initialised its QE before it serves, or the
    app (which, with Intel's library, does not re-init) gets ATT_KEY_NOT_INITIALIZED (42)."""
    import socket

    from quotehelper.aesm import messages_pb2 as pb
    from quotehelper.aesm.framing import recv_frame
    from quotehelper.aesm.launch import ServiceProcess
    from tests.aesm.test_wire import INIT_REQ, SIZE_REQ

    monkeypatch.setenv("QUOTEHELPER_DCAP_LIB", str(fake_lib))
    sock = str(tmp_path / "aesm.socket")
    with ServiceProcess(sock, tmp_path / "unused", workers=2, extra=["--engine", "dcap"]):
        codes = []
        for _ in range(5):
            conns = []
            for frame in [INIT_REQ] + [SIZE_REQ] * 40:  # many at once: both workers take some
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(sock)
                s.sendall(frame)
                conns.append(s)
            for s in conns:
                res = pb.Response.FromString(recv_frame(s))
                codes.append(res.initQuoteExRes.errorCode if res.HasField("initQuoteExRes")
                             else res.getQuoteSizeExRes.errorCode)
                s.close()
    assert set(codes) == {0}, sorted(set(codes))
