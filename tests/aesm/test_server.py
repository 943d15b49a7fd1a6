"""Robust serving: bad input gets AESM's answer while well-behaved clients keep getting quotes; bounded
queue (AESM_BUSY); worker replacement; socket creation, mode, stale/live handling."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import struct
import threading
import time
from pathlib import Path

import pytest

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm import sockets
from quotehelper.aesm.client import OutOfProcessProvider
from quotehelper.aesm.framing import encode_frame
from quotehelper.aesm.options import ServeOptions
from quotehelper.aesm.server import SocketInUse
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID, AttKeyId
from tests.aesm.conftest import ThreadedService, exchange

KID = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()


def quote_frame(report: bytes, buf_size: int, key: bytes = KID) -> bytes:
    req = pb.Request()
    req.getQuoteExReq.report = report
    req.getQuoteExReq.att_key_id = key
    req.getQuoteExReq.buf_size = buf_size
    req.getQuoteExReq.timeout = 15000
    return encode_frame(req.SerializeToString())


def error_code(reply: bytes) -> int:
    assert reply and struct.unpack_from("<I", reply)[0] == len(reply) - 4
    res = pb.Response.FromString(reply[4:])
    (field, sub), = res.ListFields()
    return sub.errorCode


class GoodClients:
    """Threads quoting through the client library for as long as the test runs."""

    def __init__(self, sock: str, platform: SimPlatform, n: int = 4) -> None:
        self.sock, self.platform, self.n = sock, platform, n
        self.ok = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        try:
            provider = OutOfProcessProvider(self.sock, deadline=10.0)
            enclave = self.platform.enclave()
            seq = 0
            while not self._stop.is_set():
                data = f"good {i} {seq}".encode()
                quote = provider.get_quote(enclave.report(provider.target_info(), data))
                assert parse_quote(quote).report_body.report_data[:len(data)] == data
                self.ok += 1
                seq += 1
        except BaseException as e:  # reported by stop()
            self.errors.append(e)

    def __enter__(self) -> GoodClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        assert not self.errors, self.errors
        assert self.ok > 0


def test_bad_input_gets_aesm_answers_while_good_clients_keep_quoting(
        service: ThreadedService, platform: SimPlatform) -> None:
    eng = platform.engine()
    report = platform.enclave().report(eng.target_info(), b"bad input").to_bytes()
    size = eng.quote_size(DEFAULT_ECDSA_ATT_KEY_ID)
    tampered = bytearray(report)
    tampered[400] ^= 0xFF  # flips a key_id byte: the QE derives another report key, MAC mismatch
    p384 = AttKeyId(mrsigner=DEFAULT_ECDSA_ATT_KEY_ID.mrsigner, prod_id=1, algorithm_id=3).to_bytes()
    with GoodClients(service.sock, platform) as good:
        for _ in range(3):
            # closed without a reply, as AESM does
            assert exchange(service.sock, quote_frame(report, size)[:100], shut_write=True) == b""  # truncated
            assert exchange(service.sock, struct.pack("<I", 1 << 30) + b"\0" * 64) == b""  # oversized length
            assert exchange(service.sock, encode_frame(b"\xff\xff\xff\xff garbage")) == b""  # garbage protobuf
            assert exchange(service.sock, encode_frame(b"")) == b""  # a Request with nothing AESM knows
            # answered with the matching sub-message and AESM's code
            assert error_code(exchange(service.sock, quote_frame(bytes(tampered), size))) == 47  # wrong MAC
            assert error_code(exchange(service.sock, quote_frame(report, size, p384))) == 38  # unknown key id
            assert error_code(exchange(service.sock, quote_frame(report, size - 1))) == 3  # buf_size too small
            assert error_code(exchange(service.sock, quote_frame(report[:-1], size))) == 3  # report length
        # A client that connects and sends nothing, and one that stalls mid-frame: dropped at the deadline.
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(service.sock)
        stalled.connect(service.sock)
        stalled.sendall(quote_frame(report, size)[:10])
        ok0 = good.ok
        time.sleep(0.5 * service.read_timeout)
        assert good.ok > ok0  # others are served while the stalled connections are held open
        for s in (silent, stalled):
            s.settimeout(5 * service.read_timeout)
            t0 = time.monotonic()
            assert s.recv(10) == b""
            assert time.monotonic() - t0 < 5 * service.read_timeout
            s.close()
        time.sleep(0.3)  # the good clients keep going after the bad ones are gone


def test_bounded_queue_answers_busy(platform: SimPlatform, tmp_path: Path) -> None:
    svc = ThreadedService(str(tmp_path / "s"), platform, workers=1, queue_limit=1).start()
    try:
        report = platform.enclave().report(platform.engine().target_info(), b"busy").to_bytes()
        frame = quote_frame(report, 8192)
        codes: list[int] = []
        lock = threading.Lock()

        def burst() -> None:
            for _ in range(20):
                c = error_code(exchange(svc.sock, frame))
                with lock:
                    codes.append(c)

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(codes) == 160 and set(codes) <= {0, 18}
        assert codes.count(18) > 0 and codes.count(0) > 0
    finally:
        svc.stop()


def test_killed_worker_is_replaced(platform: SimPlatform, tmp_path: Path) -> None:
    svc = ThreadedService(str(tmp_path / "s"), platform, workers=1).start()
    try:
        provider = OutOfProcessProvider(svc.sock, deadline=20.0)
        enclave = platform.enclave()
        provider.get_quote(enclave.report(provider.target_info(), b"before"))
        (pid,) = svc.supervisor.pids()
        os.kill(pid, signal.SIGKILL)
        quote = provider.get_quote(enclave.report(provider.target_info(), b"after"))
        assert parse_quote(quote).report_body.report_data[:5] == b"after"
        assert svc.supervisor.restarts == 1 and svc.supervisor.pids() != [pid]
    finally:
        svc.stop()


def test_socket_mode_stale_socket_and_live_server(platform: SimPlatform, tmp_path: Path) -> None:
    path = str(tmp_path / "aesm.socket")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on (a crashed service)
    svc = ThreadedService(path, platform, mode=0o660).start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert error_code(exchange(path, bytes.fromhex("06000000 aa01 03 48 9875"))) == 0
        with pytest.raises(SocketInUse):  # a live server is never hijacked
            ThreadedService(path, platform).start()
        assert error_code(exchange(path, bytes.fromhex("06000000 aa01 03 48 9875"))) == 0
    finally:
        svc.stop()
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")  # both removed on shutdown


def test_lock_taken_on_a_removed_file_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the lock file's removal at exit opens: we open the old file, its owner unlinks it and
    releases, we lock the orphan. _lock must notice and lock the file that is at the path."""
    lock = tmp_path / "aesm.socket.lock"
    lock.write_bytes(b"")
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock(fd: int, op: int) -> None:
        real_flock(fd, op)
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(lock)  # the previous owner exits between our open and our flock
    monkeypatch.setattr(sockets.fcntl, "flock", flock)
    fd = sockets._lock(str(tmp_path / "aesm.socket"))  # the socket path; the lock is <socket>.lock
    try:
        assert len(calls) == 2  # the orphan was given up and the file now at the path locked
        assert os.fstat(fd).st_ino == os.stat(lock).st_ino
    finally:
        os.close(fd)


def test_foreign_live_server_is_not_replaced(platform: SimPlatform, tmp_path: Path) -> None:
    path = str(tmp_path / "aesm.socket")
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # e.g. Intel's aesmd
    foreign.bind(path)
    foreign.listen(1)
    try:
        with pytest.raises(SocketInUse, match="live server"):
            ThreadedService(path, platform).start()
        assert os.path.exists(path)
    finally:
        foreign.close()


def test_regular_file_is_not_replaced(platform: SimPlatform, tmp_path: Path) -> None:
    path = tmp_path / "aesm.socket"
    path.write_text("not a socket")
    with pytest.raises(Exception, match="not a socket"):
        ThreadedService(str(path), platform).start()
    assert path.read_text() == "not a socket"


def memfd_holds(pid: int) -> set[str]:
    """The inodes of the anticipation memfds a process has mapped (/proc/PID/maps)."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[4] for line in f if "memfd:quotehelper-hold" in line}


def test_workers_share_one_anticipation_state_and_a_replacement_joins_it(platform: SimPlatform,
                                                                         tmp_path: Path) -> None:
    """The hold is service-wide: every worker maps the same memfd (same inode), a replaced worker too;
    --anticipation 0 maps none."""
    svc = ThreadedService(str(tmp_path / "s"), platform, workers=2).start()
    try:
        provider = OutOfProcessProvider(svc.sock, deadline=20.0)
        provider.target_info()
        first, second = svc.supervisor.pids()
        shared = memfd_holds(first)
        assert len(shared) == 1 and memfd_holds(second) == shared
        os.kill(first, signal.SIGKILL)
        provider.target_info()
        for _ in range(100):
            if svc.supervisor.restarts == 1 and len(svc.supervisor.pids()) == 2:
                break
            time.sleep(0.05)
        assert all(memfd_holds(p) == shared for p in svc.supervisor.pids())
    finally:
        svc.stop()
    off = ThreadedService(str(tmp_path / "t"), platform, workers=1,
                          options=ServeOptions(anticipation=0, read_timeout=1.0)).start()
    try:
        assert memfd_holds(off.supervisor.pids()[0]) == set()
    finally:
        off.stop()
