"""Prometheus metrics of a real `quotehelper serve` child process, scraped over real HTTP.

Values reach the scrape through the workers' 0.1 s flushes, so every check polls the endpoint until the
expected value shows up (bounded) and then asserts the exact numbers."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.framing import encode_frame, recv_frame
from quotehelper.aesm.launch import ServiceProcess
from quotehelper.aesm.metrics import QUOTE_BUCKETS, LatencyBuckets, parse_addr, top_tenants
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID
from tests.aesm.conftest import exchange

KID = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _frames(report: bytes) -> list[bytes]:
    """One quote as libsgx_quote_ex asks for it: InitQuoteEx, GetQuoteSizeEx, GetQuoteEx."""
    init = pb.Request()
    init.initQuoteExReq.att_key_id = KID
    init.initQuoteExReq.b_pub_key_id = True
    init.initQuoteExReq.buf_size = 32
    size = pb.Request()
    size.getQuoteSizeExReq.att_key_id = KID
    quote = pb.Request()
    quote.getQuoteExReq.report = report
    quote.getQuoteExReq.att_key_id = KID
    quote.getQuoteExReq.buf_size = 8192
    return [encode_frame(r.SerializeToString()) for r in (init, size, quote)]


def _code(reply: bytes) -> int:
    res = pb.Response.FromString(reply[4:])
    (_, sub), = res.ListFields()
    return int(sub.errorCode)


def _quote(sock: str, frames: list[bytes]) -> list[int]:
    return [_code(exchange(sock, f)) for f in frames]


class MetricsService:
    """`quotehelper serve --metrics-addr 127.0.0.1:0` in a child process; the port comes from its ready line."""

    def __init__(self, tmp: Path, plat: SimPlatform, monkeypatch: pytest.MonkeyPatch, *, metrics: bool = True,
                 workers: int = 1, extra: list[str] | None = None) -> None:
        self.tmp = tmp
        monkeypatch.setenv("TMPDIR", str(tmp))  # where the service creates its multiprocess directory
        self.sock = str(tmp / "aesm.socket")
        self.err_path = tmp / "serve.err"
        self.err = self.err_path.open("wb")
        args = (["--metrics-addr", "127.0.0.1:0"] if metrics else []) + (extra or [])
        self.svc = ServiceProcess(self.sock, plat.platform_dir, workers=workers, extra=args, stderr=self.err.fileno())
        self.url = ""

    def __enter__(self) -> MetricsService:
        self.svc.start()
        end = time.monotonic() + 20
        while time.monotonic() < end:  # the ready line follows the last worker's start
            text = self.err_path.read_text()
            if "quotehelper serve:" in text:
                if "metrics on " in text:
                    self.url = text.split("metrics on ", 1)[1].split()[0]
                return self
            time.sleep(0.02)
        raise AssertionError(f"no ready line: {self.err_path.read_text()}")

    def __exit__(self, *exc: object) -> None:
        try:
            assert self.svc.stop() == 0, self.err_path.read_text()
        finally:
            self.svc.kill()
            self.err.close()

    def worker_pids(self) -> list[int]:
        with open(f"/proc/{self.svc.pid}/task/{self.svc.pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def scrape(self) -> Samples:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            assert r.status == 200
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def scrape_until(self, pred: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
        end = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            if pred(samples) or time.monotonic() > end:
                return samples
            time.sleep(0.05)


def requests(s: Samples, call: str, code: str) -> float:
    return s.get(("quotehelper_aesm_requests_total", (("call", call), ("code", code))), 0.0)


def dropped(s: Samples, reason: str) -> float:
    return s.get(("quotehelper_aesm_connections_dropped_total", (("reason", reason),)), 0.0)


def metric(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


def _multiproc_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("quotehelper-metrics-*"))


def _tcp_listen_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A":  # LISTEN
                    inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_requests_results_latency_and_drops(platform: SimPlatform, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine = platform.engine()
    report = platform.enclave().report(engine.target_info(), b"metrics").to_bytes()
    bad_mac = report[:-1] + bytes([report[-1] ^ 1])
    with MetricsService(tmp_path, platform, monkeypatch,
                        extra=["--queue-limit", "1", "--read-timeout", "0.3", "--tenant-by", "uid"]) as svc:
        (mp_dir,) = _multiproc_dirs(tmp_path)
        assert stat.S_IMODE(mp_dir.stat().st_mode) == 0o700
        # ServiceProcess waited for one GetSupportedAttKeyIDNum answer: the readiness probe.
        before = svc.scrape_until(lambda s: requests(s, "GetSupportedAttKeyIDNum", "AESM_SUCCESS") >= 1)
        assert metric(before, "quotehelper_aesm_service_info", engine="sim", version="0.1.0") == 1
        assert metric(before, "quotehelper_aesm_workers") == 1
        assert metric(before, "quotehelper_aesm_worker_restarts_total") == 0
        assert requests(before, "GetSupportedAttKeyIDNum", "AESM_SUCCESS") == 1

        assert _quote(svc.sock, _frames(report)) == [0, 0, 0]
        assert _quote(svc.sock, _frames(bad_mac)) == [0, 0, 47]  # AESM_INVALID_REPORT
        legacy, select = pb.Request(), pb.Request()
        legacy.getWhiteListSizeReq.SetInParent()
        select.selectAttKeyIDReq.SetInParent()
        assert _code(exchange(svc.sock, encode_frame(legacy.SerializeToString()))) == 30  # service unavailable
        assert _code(exchange(svc.sock, encode_frame(select.SerializeToString()))) == 0
        assert exchange(svc.sock, b"\x03\x00\x00\x00\xff\xff\xff") == b""  # not a Request: closed unanswered
        assert exchange(svc.sock, (2 << 20).to_bytes(4, "little") + b"x") == b""  # above the 1 MiB frame cap
        assert exchange(svc.sock, _frames(report)[2][:100], timeout=5) == b""  # stalls: read deadline

        s = svc.scrape_until(lambda s: dropped(s, "read_deadline") >= 1
                             and requests(s, "GetQuoteEx", "AESM_INVALID_REPORT") >= 1)
        assert requests(s, "InitQuoteEx", "AESM_SUCCESS") == 2
        assert requests(s, "GetQuoteSizeEx", "AESM_SUCCESS") == 2
        assert requests(s, "GetQuoteEx", "AESM_SUCCESS") == 1
        assert requests(s, "GetQuoteEx", "AESM_INVALID_REPORT") == 1
        assert requests(s, "unparseable", "none") == 1
        assert requests(s, "legacy", "AESM_SERVICE_UNAVAILABLE") == 1
        assert requests(s, "SelectAttKeyID", "AESM_SUCCESS") == 1
        assert requests(s, "GetSupportedAttKeyIDNum", "AESM_SUCCESS") == 1
        assert dropped(s, "unparseable") == 1
        assert dropped(s, "frame_too_large") == 1
        assert dropped(s, "read_deadline") == 1
        # Both GetQuoteEx calls reached the engine (the bad MAC is the engine's verdict); each was timed.
        assert metric(s, "quotehelper_aesm_quote_seconds_count") == 2
        assert 0 < metric(s, "quotehelper_aesm_quote_seconds_sum") < 1
        assert metric(s, "quotehelper_aesm_quote_seconds_bucket", le="+Inf") == 2
        le = [metric(s, "quotehelper_aesm_quote_seconds_bucket", le=str(b)) for b in QUOTE_BUCKETS]
        assert le == sorted(le) and le[-1] <= 2  # cumulative
        assert ("quotehelper_aesm_queue_depth", (("worker", "0"),)) in s
        assert metric(s, "quotehelper_aesm_anticipation_held_seconds_total") == 0  # a lone tenant: never held

        # AESM_BUSY: the worker is stopped while 40 GetQuoteEx requests pile up in the backlog; resumed, it
        # takes them in one accept batch with room for one engine call in its queue.
        (worker,) = svc.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        conns = []
        try:
            for _ in range(40):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(20)
                c.connect(svc.sock)
                c.sendall(_frames(report)[2])
                conns.append(c)
        finally:
            os.kill(worker, signal.SIGCONT)
        codes = []
        for c in conns:
            codes.append(_code(encode_frame(recv_frame(c))))
            c.close()
        busy, ok = codes.count(18), codes.count(0)
        assert busy >= 1 and busy + ok == 40
        s = svc.scrape_until(lambda s: requests(s, "GetQuoteEx", "AESM_BUSY") >= busy
                             and requests(s, "GetQuoteEx", "AESM_SUCCESS") >= 1 + ok)
        assert requests(s, "GetQuoteEx", "AESM_BUSY") == busy
        assert requests(s, "GetQuoteEx", "AESM_SUCCESS") == 1 + ok
        assert metric(s, "quotehelper_aesm_quote_seconds_count") == 2 + ok  # busy replies never reach the engine

        # The same, per tenant (this process's uid): every request the responder saw (probe 1, quotes 6,
        # legacy, select, unparseable, 40 GetQuoteEx), the drops attributed to it.
        t = f"uid:{os.getuid()}"
        s = svc.scrape_until(lambda s: metric(s, "quotehelper_aesm_tenant_requests_total", tenant=t) >= 50
                             and metric(s, "quotehelper_aesm_tenant_dropped_total", tenant=t, reason="busy") >= busy)
        assert metric(s, "quotehelper_aesm_tenant_requests_total", tenant=t) == 50
        assert metric(s, "quotehelper_aesm_tenant_dropped_total", tenant=t, reason="busy") == busy
        assert metric(s, "quotehelper_aesm_tenant_dropped_total", tenant=t, reason="read_deadline") == 1
        assert metric(s, "quotehelper_aesm_tenant_dropped_total", tenant=t, reason="frame_too_large") == 1
        assert metric(s, "quotehelper_aesm_tenant_errors_total", tenant=t) == 3 + busy  # 47, 30, unparseable
        assert metric(s, "quotehelper_aesm_tenant_queue_wait_seconds_count", tenant=t) >= 2 + ok
    assert _multiproc_dirs(tmp_path) == []  # removed on exit


def test_tenant_metrics_keep_the_busiest_by_name_and_fold_the_rest() -> None:
    snaps = [{f"k{i}": {"label": f"ns/p{i}", "requests": i, "errors": 1, "dropped": {"busy": i},
                        "wait_sum": 0.5, "wait_count": 1} for i in range(1, 13)},
             {"k12": {"label": "ns/p12", "requests": 100, "errors": 0, "dropped": {"tenant_connection_cap": 2},
                      "wait_sum": 0.0, "wait_count": 0}}]  # a second worker's view of one tenant
    top = top_tenants(snaps, 3)
    assert sorted(top) == ["ns/p10", "ns/p11", "ns/p12", "other"]
    assert top["ns/p12"]["requests"] == 112 and top["ns/p12"]["dropped"] == {"busy": 12, "tenant_connection_cap": 2}
    assert top["other"]["requests"] == sum(range(1, 10)) and top["other"]["errors"] == 9
    assert top["other"]["dropped"] == {"busy": sum(range(1, 10))} and top["other"]["wait_count"] == 9
    assert sorted(top_tenants(snaps, 0)) == ["other"]


def test_killed_worker_counts_kept_once_and_restart_counted(platform: SimPlatform, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    report = platform.enclave().report(platform.engine().target_info(), b"restart").to_bytes()
    frames = _frames(report)
    with MetricsService(tmp_path, platform, monkeypatch, workers=2) as svc:
        for _ in range(12):
            assert _quote(svc.sock, frames) == [0, 0, 0]
        # Flushed (every 0.1 s) before the kill: a SIGKILL loses what a worker counted since its last flush.
        calls = ("InitQuoteEx", "GetQuoteSizeEx", "GetQuoteEx")
        s = svc.scrape_until(lambda s: all(requests(s, c, "AESM_SUCCESS") >= 12 for c in calls))
        assert [requests(s, c, "AESM_SUCCESS") for c in calls] == [12, 12, 12]
        (mp_dir,) = _multiproc_dirs(tmp_path)
        # Both workers are killed, so whichever answered the quotes loses its process, not its counts.
        victims = svc.worker_pids()
        assert len(victims) == 2
        assert all((mp_dir / f"gauge_livemax_{v}.db").exists() for v in victims)
        assert any((mp_dir / f"counter_{v}.db").exists() for v in victims)
        for v in victims:
            os.kill(v, signal.SIGKILL)
        s = svc.scrape_until(lambda s: metric(s, "quotehelper_aesm_worker_restarts_total") >= 2
                             and metric(s, "quotehelper_aesm_workers") == 2)
        assert metric(s, "quotehelper_aesm_worker_restarts_total") == 2
        assert metric(s, "quotehelper_aesm_workers") == 2
        assert not set(victims) & set(svc.worker_pids())
        # mark_process_dead: the dead workers' live gauge files are gone; their counters stay counted.
        assert not any((mp_dir / f"gauge_livemax_{v}.db").exists() for v in victims)
        assert [requests(s, c, "AESM_SUCCESS") for c in calls] == [12, 12, 12]
        for _ in range(8):
            assert _quote(svc.sock, frames) == [0, 0, 0]
        svc.scrape_until(lambda s: all(requests(s, c, "AESM_SUCCESS") >= 20 for c in calls))
        time.sleep(0.3)  # two more flush intervals: nothing counted twice shows up late
        s = svc.scrape()
        assert [requests(s, c, "AESM_SUCCESS") for c in calls] == [20, 20, 20]
        assert metric(s, "quotehelper_aesm_quote_seconds_count") == 20
        assert sorted(k[1] for k in s if k[0] == "quotehelper_aesm_queue_depth") == [
            (("worker", "0"),), (("worker", "1"),)]


def test_metrics_off_no_port_no_files(platform: SimPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = platform.enclave().report(platform.engine().target_info(), b"off").to_bytes()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    tmp = tmp_path / "off"
    tmp.mkdir()
    with MetricsService(tmp, platform, monkeypatch, metrics=False) as svc:
        assert _quote(svc.sock, _frames(report)) == [0, 0, 0]
        assert svc.url == ""
        pids = [svc.svc.pid, *svc.worker_pids()]
        listening = _tcp_listen_inodes()
        assert all(not (_socket_inodes(p) & listening) for p in pids)
        for p in pids:
            with open(f"/proc/{p}/environ", "rb") as f:
                assert b"PROMETHEUS_MULTIPROC_DIR" not in f.read()
        assert _multiproc_dirs(tmp) == []
    # The same checks see the port and the directory when metrics are on (so they can fail).
    on = tmp_path / "on"
    on.mkdir()
    with MetricsService(on, platform, monkeypatch) as svc:
        assert _socket_inodes(svc.svc.pid) & _tcp_listen_inodes()
        assert len(_multiproc_dirs(on)) == 1
    assert sorted(os.listdir(tmp)) == ["serve.err"]  # nothing else left behind


def test_bad_metrics_addr_and_port_in_use(platform: SimPlatform, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    svc = ServiceProcess(str(tmp_path / "a.sock"), platform.platform_dir, workers=1,
                         extra=["--metrics-addr", "localhost"], stderr=None)
    with pytest.raises(Exception, match="exited with code 2"):
        svc.start(timeout=20)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        err = tmp_path / "err"
        with err.open("wb") as f:
            svc = ServiceProcess(str(tmp_path / "b.sock"), platform.platform_dir, workers=1,
                                 extra=["--metrics-addr", f"127.0.0.1:{busy.getsockname()[1]}"], stderr=f.fileno())
            with pytest.raises(Exception, match="exited with code 1"):
                svc.start(timeout=20)
        assert "Error:" in err.read_text() and "in use" in err.read_text()
        assert _multiproc_dirs(tmp_path) == []
    finally:
        busy.close()


def test_parse_addr_and_latency_buckets() -> None:
    assert parse_addr("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_addr("[::1]:0") == ("::1", 0)
    assert parse_addr(":9464") == ("0.0.0.0", 9464)
    for bad in ("9464", "host:", "host:70000", "host:x"):
        with pytest.raises(ValueError):
            parse_addr(bad)
    b = LatencyBuckets((1e-3, 2e-3))
    for v in (0.5e-3, 1e-3, 1.5e-3, 3e-3):  # a value equal to a bound belongs to it (le)
        b.observe(v)
    assert b.take() == ([2, 1, 1], pytest.approx(6e-3))
    assert b.take() == ([0, 0, 0], 0.0)
