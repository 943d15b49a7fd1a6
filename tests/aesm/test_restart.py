"""Real service processes: SIGTERM drains in-flight requests; 10 restarts under 16 quoting clients with
zero client-visible failures and no lost or duplicated responses."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.client import OutOfProcessProvider
from quotehelper.aesm.framing import encode_frame, recv_frame
from quotehelper.aesm.launch import ServiceProcess
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID
from tests.aesm.conftest import QuotingClients


def test_sigterm_drains_in_flight_requests(platform: SimPlatform, tmp_path: Path) -> None:
    sock = str(tmp_path / "aesm.socket")
    svc = ServiceProcess(sock, platform.platform_dir, workers=1, queue_limit=256).start()
    try:
        report = platform.enclave().report(platform.engine().target_info(), b"drain").to_bytes()
        req = pb.Request()
        req.getQuoteExReq.report = report
        req.getQuoteExReq.att_key_id = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()
        req.getQuoteExReq.buf_size = 8192
        frame = encode_frame(req.SerializeToString())
        conns = []
        for _ in range(150):  # complete requests, many still queued in the kernel or the worker
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(sock)
            s.sendall(frame)
            conns.append(s)
        halves = []
        for _ in range(20):  # requests in flight: half a frame sent when SIGTERM arrives
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(sock)
            s.sendall(frame[:300])
            halves.append(s)
        svc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(0.2)
        assert not os.path.exists(sock)  # stops accepting at once: the socket is gone
        assert svc.proc.poll() is None  # ... but keeps serving what it has
        for s in halves:
            s.sendall(frame[300:])
        for s in conns + halves:  # every request already in gets its full reply
            res = pb.Response.FromString(recv_frame(s))
            assert res.getQuoteExRes.errorCode == 0 and len(res.getQuoteExRes.quote) == 8192
            s.close()
        assert svc.proc.wait(30) == 0  # type: ignore[union-attr]
    finally:
        svc.kill()


def test_ten_restarts_under_sixteen_clients(platform: SimPlatform, tmp_path: Path) -> None:
    sock = str(tmp_path / "aesm.socket")
    svc = ServiceProcess(sock, platform.platform_dir, workers=2).start()
    clients = QuotingClients(sock, platform, 16).start()
    try:
        for _ in range(10):
            time.sleep(0.3)
            assert svc.stop() == 0
            svc = ServiceProcess(sock, platform.platform_dir, workers=2).start()
        time.sleep(0.3)
    finally:
        clients.stop()
        svc.stop()
    clients.check()  # each call returned exactly once, with its own request's data, in order
    assert clients.retries > 0  # the restarts were really seen by the clients...
    assert "AESM_ATT_KEY_NOT_INITIALIZED" not in clients.retry_reasons  # ...and the key survived them all


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killed_service_leaves_no_workers_and_its_stale_socket_is_replaced(
        platform: SimPlatform, tmp_path: Path) -> None:
    sock = str(tmp_path / "aesm.socket")
    svc = ServiceProcess(sock, platform.platform_dir, workers=2).start()
    with open(f"/proc/{svc.pid}/task/{svc.pid}/children") as f:
        workers = [int(x) for x in f.read().split()]
    assert len(workers) == 2
    svc.kill()  # SIGKILL: no drain, no unlink
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)  # workers notice their supervisor is gone and stop
    assert not any(map(_alive, workers))
    assert os.path.exists(sock)  # stale socket file left behind
    with ServiceProcess(sock, platform.platform_dir, workers=1):
        provider = OutOfProcessProvider(sock, deadline=10.0)
        quote = provider.get_quote(platform.enclave().report(provider.target_info(), b"again"))
        assert parse_quote(quote).report_body.report_data[:5] == b"again"
