"""Real service processes: SIGTERM drains in-flight requests; 10 restarts under 16 quoting clients with
zero client-visible failures and no lost or duplicated responses."""

from __future__ import annotations

import collections
import os
import signal
import socket
import threading
import time
from pathlib import Path

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.client import OutOfProcessProvider
from quotehelper.aesm.framing import encode_frame, recv_frame
from quotehelper.aesm.launch import ServiceProcess
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID


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
    stop = threading.Event()
    results: dict[int, list[bytes]] = {}
    requested: dict[int, int] = {}
    failures: list[BaseException] = []
    providers: list[OutOfProcessProvider] = []

    def client(i: int) -> None:
        provider = OutOfProcessProvider(sock, deadline=30.0)
        providers.append(provider)
        enclave = platform.enclave(mr_enclave=bytes([i]) * 32)
        got: list[bytes] = []
        results[i] = got
        requested[i] = 0
        seq = 0
        try:
            while not stop.is_set():
                data = f"client {i} request {seq}".encode()
                requested[i] += 1
                quote = provider.get_quote(enclave.report(provider.target_info(), data))
                got.append(parse_quote(quote).report_body.report_data[:len(data)])
                seq += 1
        except BaseException as e:
            failures.append(e)

    svc = ServiceProcess(sock, platform.platform_dir, workers=2).start()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            time.sleep(0.3)
            assert svc.stop() == 0
            svc = ServiceProcess(sock, platform.platform_dir, workers=2).start()
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        svc.stop()
    assert not failures, failures[:3]
    for i in range(16):
        # Each call returned exactly once, with its own request's data, in order: nothing lost or duplicated.
        assert results[i] == [f"client {i} request {n}".encode() for n in range(requested[i])]
        assert requested[i] > 0
    reasons = sum((p.retry_reasons for p in providers), start=collections.Counter())
    assert sum(p.retries for p in providers) > 0  # the restarts were really seen by the clients...
    assert "AESM_ATT_KEY_NOT_INITIALIZED" not in reasons  # ...and the key survived every one of them


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
