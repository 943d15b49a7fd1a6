"""Quote service throughput and latency, against transport floors measured in the same run.

N concurrent clients (default 32) each repeat the full exchange a real client makes for one quote -
InitQuoteEx, GetQuoteSizeEx, GetQuoteEx (the real protobuf bytes), each over a fresh connection with
AESM framing - for a fixed duration, in a closed loop. The same load generator runs first against two
echo servers (same framing, no protocol work), the floors: a bare asyncio echo server (asyncio streams:
the plainest form of the asyncio server the service was specified as), and the service's own socket and
transport code echoing (a stricter floor: that transport costs ~1/7 of asyncio streams' CPU per
connection). The generator is bench/aesm_loadgen.c (one thread, epoll, non-blocking
connects; ~30 us of CPU per exchange instead of ~140 for Python asyncio), compiled with the system
`cc` into a temporary directory; without `cc` (or with --python-loadgen) a Python asyncio generator
is used and the output says so.

Printed per phase: exchanges (quotes)/s; p50/p99 latency per whole exchange and per request (each
request is one connection; "last request" = GetQuoteEx); errors (a reply whose errorCode is not 0, or a
connection that fails); server and generator CPU per exchange; the service's peak RSS; the ratio to
each floor; worker scaling (--workers LIST, default 1,2); where the service's CPU goes; the highest
ratio to the transport floor any service could reach on these CPUs (zero protocol work, same engine).

    .venv/bin/python bench/quote_service.py [--clients 32] [--duration 5] [--workers 1,2]
    .venv/bin/python bench/quote_service.py --rss-quotes 100000   # RSS/PSS after that many quotes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from quotehelper.aesm import messages_pb2 as pb
from quotehelper.aesm.framing import encode_frame
from quotehelper.aesm.launch import ServiceProcess, wait_for_socket
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID

KID = DEFAULT_ECDSA_ATT_KEY_ID.to_bytes()


def exchange_frames(report: bytes, quote_size: int) -> list[bytes]:
    """The three requests libsgx_quote_ex sends for one quote (timeout 15000 as it sets it)."""
    init = pb.Request()
    init.initQuoteExReq.att_key_id = KID
    init.initQuoteExReq.b_pub_key_id = True
    init.initQuoteExReq.buf_size = 32
    init.initQuoteExReq.timeout = 15000
    size = pb.Request()
    size.getQuoteSizeExReq.att_key_id = KID
    size.getQuoteSizeExReq.timeout = 15000
    quote = pb.Request()
    quote.getQuoteExReq.report = report
    quote.getQuoteExReq.att_key_id = KID
    quote.getQuoteExReq.buf_size = quote_size
    quote.getQuoteExReq.timeout = 15000
    return [encode_frame(r.SerializeToString()) for r in (init, size, quote)]


# --- load generators ------------------------------------------------------------------------------------

@dataclass
class LoadResult:
    """One closed-loop run. Latencies in ms: per whole exchange, per request (all pooled), and per request
    position (the last one is GetQuoteEx for a quote exchange)."""

    exchanges: int
    requests: int
    errors: int
    elapsed: float
    loadgen_cpu: float
    exchange_ms: dict[str, float]
    request_ms: dict[str, float]
    stage_ms: list[dict[str, float]]
    generator: str

    @property
    def rate(self) -> float:
        return self.exchanges / self.elapsed if self.elapsed else 0.0


class CLoadGen:
    """bench/aesm_loadgen.c, compiled with the system `cc` into a temporary directory."""

    SOURCE = Path(__file__).with_name("aesm_loadgen.c")
    label = "C (bench/aesm_loadgen.c: epoll, one thread)"

    def __init__(self, workdir: Path) -> None:
        self.binary = workdir / "aesm_loadgen"
        self.workdir = workdir
        cc = shutil.which("cc")
        if cc is None:
            raise OSError("no `cc` on PATH")
        subprocess.run([cc, "-O2", "-o", str(self.binary), str(self.SOURCE)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def run(self, path: str, frames: list[bytes], clients: int, duration: float, check: bool,
            max_exchanges: int | None = None) -> LoadResult:
        ffile = self.workdir / "frames.bin"
        ffile.write_bytes(b"".join(frames))
        out = subprocess.run([str(self.binary), path, str(ffile), str(clients), str(duration),
                              str(max_exchanges or 0), "1" if check else "0"],
                             check=True, capture_output=True, text=True).stdout
        d = json.loads(out)
        return LoadResult(d["exchanges"], d["requests"], d["errors"], d["elapsed"], d["loadgen_cpu"],
                          d["exchange_ms"], d["request_ms"], d["stage_ms"], self.label)


async def _roundtrip(loop: asyncio.AbstractEventLoop, path: str, frame: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, path)
        await loop.sock_sendall(s, frame)
        buf = bytearray()
        need = 4
        while len(buf) < need:
            chunk = await loop.sock_recv(s, 65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(buf)} bytes")
            buf += chunk
            if need == 4 and len(buf) >= 4:
                need = 4 + struct.unpack_from("<I", buf)[0]
        return bytes(buf[4:need])
    finally:
        s.close()


def _summary(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "max": max(xs) * 1000 if xs else float("nan"),
            "mean": sum(xs) / len(xs) * 1000 if xs else float("nan")}


class PyLoadGen:
    """The fallback: the same closed loop in Python asyncio (it competes with the server for CPU)."""

    label = "Python asyncio"

    def run(self, path: str, frames: list[bytes], clients: int, duration: float, check: bool,
            max_exchanges: int | None = None) -> LoadResult:
        c0 = time.process_time()
        t0 = time.perf_counter()
        r = asyncio.run(self._load(path, frames, clients, duration, check, max_exchanges))
        elapsed = time.perf_counter() - t0
        n, lat, errors, stages = r
        every = [x for st in stages for x in st]
        return LoadResult(n, len(every), errors, elapsed, time.process_time() - c0, _summary(lat),
                          _summary(every), [_summary(st) for st in stages], self.label)

    async def _load(self, path: str, frames: list[bytes], clients: int, duration: float, check: bool,
                    max_exchanges: int | None) -> tuple[int, list[float], int, list[list[float]]]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        stages: list[list[float]] = [[] for _ in frames]
        errors = 0
        started = 0
        end = time.perf_counter() + duration

        async def client() -> None:
            nonlocal errors, started
            while time.perf_counter() < end and (max_exchanges is None or started < max_exchanges):
                started += 1
                t0 = time.perf_counter()
                try:
                    for i, frame in enumerate(frames):
                        t1 = time.perf_counter()
                        reply = await _roundtrip(loop, path, frame)
                        stages[i].append(time.perf_counter() - t1)
                        code = error_code(reply)  # same work in both phases; only the service's replies count
                        if check and code != 0:
                            raise ConnectionError(f"error code {code}")
                except OSError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(clients)))
        return len(latencies), latencies, errors, stages


def error_code(reply: bytes) -> int:
    """errorCode of a Response without a full parse: sub-message tag, length, then `08 <code>`."""
    i = 0
    for _ in range(2):  # skip the tag varint, then the length varint
        while i < len(reply) and reply[i] & 0x80:
            i += 1
        i += 1
    return reply[i + 1] if i + 1 < len(reply) and reply[i] == 0x08 else -1


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000 if xs else float("nan")


def rss_kb(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in kB, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split between the processes sharing them), in kB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def service_rss(pid: int) -> dict[str, int]:
    main_now, main_peak = rss_kb(pid)
    kids = children(pid)
    workers = [rss_kb(c) for c in kids]
    return {"main_now": main_now, "main_peak": main_peak,
            "workers_peak": sum(p for _, p in workers), "workers_now": sum(n for n, _ in workers),
            "n_workers": len(workers), "workers_each": [n for n, _ in workers], "pss_total": pss_kb(pid) + sum(pss_kb(c) for c in kids)}


def run_echo_server(path: str, processes: int, kind: str) -> None:
    """Child-process mode: an echo server on `path` in `processes` processes sharing the listening socket
    (as the service's workers do). kind "transport": the service's own socket and transport code with the
    echo responder; kind "bare": the plainest asyncio echo server (streams: read the 4-byte length and the
    payload, write both back, close), i.e. the asyncio server the service was specified as, doing nothing."""
    import signal

    from quotehelper.aesm.framing import MAX_FRAME
    from quotehelper.aesm.server import AesmServer, ServiceSocket, echo_responder

    owner = ServiceSocket(path)
    kids = []
    for _ in range(processes - 1):
        pid = os.fork()  # before any event loop exists
        if pid == 0:
            kids = []
            break
        kids.append(pid)

    async def bare_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(4)
            n = struct.unpack("<I", head)[0]
            if n <= MAX_FRAME:
                writer.write(head + await reader.readexactly(n))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if kind == "bare":
            server = await asyncio.start_unix_server(bare_echo, sock=owner.sock.dup(), backlog=1024)
            await stop.wait()
            server.close()
            return
        aesm = AesmServer(owner.sock, echo_responder)
        await aesm.start()
        await stop.wait()
        await aesm.stop()

    asyncio.run(serve())
    if kids or processes == 1:
        for k in kids:
            os.kill(k, signal.SIGTERM)
            os.waitpid(k, 0)
        owner.close()


def _latency(r: LoadResult) -> str:
    e, q, last = r.exchange_ms, r.request_ms, r.stage_ms[-1]
    return (f"per exchange p50 {e['p50']:5.1f} p99 {e['p99']:5.1f} ms | per request p50 {q['p50']:4.1f} "
            f"p99 {q['p99']:4.1f} ms (last request p50 {last['p50']:.1f} p99 {last['p99']:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured phase")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure, comma separated")
    ap.add_argument("--rss-quotes", type=int, default=0,
                    help="instead: run this many quotes on the last worker count and report RSS")
    ap.add_argument("--python-loadgen", action="store_true", help="use the Python generator even if `cc` exists")
    ap.add_argument("--serve-echo", help=argparse.SUPPRESS)
    ap.add_argument("--echo-processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--echo-kind", default="transport", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_echo:
        run_echo_server(args.serve_echo, args.echo_processes, args.echo_kind)
        return

    worker_counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="qh-bench-") as tmp:
        gen: CLoadGen | PyLoadGen
        note = ""
        try:
            if args.python_loadgen:
                raise OSError("--python-loadgen given")
            gen = CLoadGen(Path(tmp))
        except (OSError, subprocess.CalledProcessError) as e:
            detail = e.stderr.decode(errors="replace").strip() if isinstance(e, subprocess.CalledProcessError) else e
            note = f" (C generator unavailable: {detail}; the Python generator shares the CPUs with the server)"
            gen = PyLoadGen()
        plat = SimPlatform.create(Path(tmp) / "platform")
        eng = plat.engine()
        eng.init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
        report = plat.enclave().report(eng.target_info(), b"bench").to_bytes()
        frames = exchange_frames(report, eng.quote_size(DEFAULT_ECDSA_ATT_KEY_ID))
        probe = gen.run  # one generator for every phase: same framing, same connection pattern
        for _ in range(100):  # warm-up
            eng.get_quote(report, DEFAULT_ECDSA_ATT_KEY_ID, None)
        c0 = time.process_time()
        for _ in range(1000):
            eng.get_quote(report, DEFAULT_ECDSA_ATT_KEY_ID, None)
        engine_us = (time.process_time() - c0) / 1000 * 1e6
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.clients} clients; "
              f"one quote = InitQuoteEx + GetQuoteSizeEx + GetQuoteEx, fresh connection each; "
              f"load generator: {gen.label}{note}")

        if args.rss_quotes:
            sock = str(Path(tmp) / "svc.socket")
            with ServiceProcess(sock, plat.platform_dir, workers=worker_counts[-1]) as svc:
                r5 = probe(sock, frames, args.clients, 1e9, True, min(5000, args.rss_quotes))
                early = service_rss(svc.pid)
                res = probe(sock, frames, args.clients, 1e9, True, args.rss_quotes - r5.exchanges)
                r = service_rss(svc.pid)
            n = r5.exchanges + res.exchanges
            dt = r5.elapsed + res.elapsed
            print(f"{n} quotes in {dt:.1f}s ({n / dt:.0f}/s, errors {r5.errors + res.errors}, "
                  f"per exchange p99 {res.exchange_ms['p99']:.1f} ms, per request p99 {res.request_ms['p99']:.1f} ms)")
            for label, x in (("after 5000 quotes", early), (f"after {n} quotes", r)):
                print(f"service RSS {label}: main {x['main_now'] / 1024:.1f} MB (peak {x['main_peak'] / 1024:.1f}), "
                      f"{x['n_workers']} workers {x['workers_now'] / 1024:.1f} MB "
                      f"[{', '.join(f'{k / 1024:.1f}' for k in x['workers_each'])}] "
                      f"(peak {x['workers_peak'] / 1024:.1f}), total RSS {(x['main_now'] + x['workers_now']) / 1024:.1f} MB, "
                      f"total PSS {x['pss_total'] / 1024:.1f} MB")
            return

        # Two floors, same generator and frames, with as many serving processes as the service gets (the
        # best count is the floor): "bare", the plainest asyncio echo server (the floor: the
        # service was specified as an asyncio server); "transport", the service's own socket and transport
        # code echoing, a stricter floor (it is ~10x cheaper per connection than asyncio streams).
        floors: dict[str, float] = {}
        floor_cpu: dict[str, float] = {}  # echo server CPU per exchange in each kind's best run
        floor_gen: dict[str, float] = {}  # load generator CPU per exchange in that run
        for kind, label in (("bare", "bare asyncio echo"), ("transport", "transport echo")):
            floors[kind] = 0.0
            for procs in sorted(set(worker_counts)):
                sock = str(Path(tmp) / f"echo-{kind}{procs}.socket")
                echo = subprocess.Popen([sys.executable, __file__, "--serve-echo", sock, "--echo-processes",
                                         str(procs), "--echo-kind", kind])
                try:
                    wait_for_socket(sock)
                    probe(sock, frames, args.clients, 0.5, False)  # warm-up
                    pids = [echo.pid, *children(echo.pid)]
                    cpu0 = cpu_seconds(pids)
                    res = probe(sock, frames, args.clients, args.duration, False)
                    echo_cpu_us = (cpu_seconds(pids) - cpu0) / max(res.exchanges, 1) * 1e6
                finally:
                    echo.terminate()
                    echo.wait()
                if res.rate > floors[kind]:
                    floors[kind] = res.rate
                    floor_cpu[kind] = echo_cpu_us
                    floor_gen[kind] = res.loadgen_cpu / max(res.exchanges, 1) * 1e6
                print(f"{label + ',':18} {procs} process{'es' if procs > 1 else '  '}: {res.rate:6.0f} exchanges/s "
                      f"({3 * res.rate:6.0f} req/s)  {_latency(res)}  server CPU {echo_cpu_us:.0f} us/exchange, "
                      f"load generator {res.loadgen_cpu / max(res.exchanges, 1) * 1e6:.0f} us/exchange")
        floor = floors["transport"]
        print(f"floors (best process count): bare asyncio echo {floors['bare']:.0f} exchanges/s, "
              f"transport echo {floor:.0f} exchanges/s")

        results: dict[int, LoadResult] = {}
        cpu_per_quote: dict[int, float] = {}
        for w in worker_counts:
            sock = str(Path(tmp) / f"svc{w}.socket")
            with ServiceProcess(sock, plat.platform_dir, workers=w) as svc:
                probe(sock, frames, args.clients, 0.5, True)  # warm-up
                pids = [svc.pid, *children(svc.pid)]
                cpu0 = cpu_seconds(pids)
                res = probe(sock, frames, args.clients, args.duration, True)
                cpu_us = (cpu_seconds(pids) - cpu0) / max(res.exchanges, 1) * 1e6
                r = service_rss(svc.pid)
            results[w] = res
            cpu_per_quote[w] = cpu_us
            print(f"service, {w} worker{'s' if w > 1 else ' '}: {res.rate:6.0f} quotes/s    "
                  f"              {_latency(res)}  errors {res.errors}  ratio to floors {res.rate / floors['bare']:.2f} (bare) "
                  f"{res.rate / floor:.2f} (transport)  "
                  f"service CPU {cpu_us:.0f} us/quote  peak RSS main {r['main_peak'] / 1024:.1f} MB + "
                  f"{r['n_workers']} workers {r['workers_peak'] / 1024:.1f} MB")
        ws = sorted(results)
        if len(ws) > 1:
            print("scaling: " + ", ".join(f"{w} worker(s) {results[w].rate / results[ws[0]].rate:.2f}x" for w in ws))
        best = max(results.values(), key=lambda x: x.rate)
        # Closed loop: every client has exactly one exchange outstanding, so by Little's law the mean
        # exchange latency is clients / throughput; a p99 is at least that mean.
        print(f"closed-loop check (best run, {best.rate:.0f} quotes/s): mean exchange latency must be "
              f"{args.clients} / {best.rate:.0f} = {args.clients / best.rate * 1000:.1f} ms "
              f"(measured {best.exchange_ms['mean']:.1f}), mean request {best.request_ms['mean']:.1f} ms")
        # Where the service's CPU goes, next to the floor's: the engine's work (ECDSA signing, REPORT MAC)
        # is work the echo floor does not do.
        best_cpu = cpu_per_quote[max(results, key=lambda w: results[w].rate)]
        t_cpu = floor_cpu["transport"]
        print(f"CPU per quote (best run): service {best_cpu:.0f} us = echo transport {t_cpu:.0f} + engine "
              f"{engine_us:.0f} (in-process get_quote, measured alone) + protocol/rest {best_cpu - t_cpu - engine_us:.0f}")
        # The transport floor's ceiling: CPU-bound on CPUs shared with the generator, a service with zero
        # protocol work still pays transport + engine per quote, so it cannot beat (echo + generator) /
        # (echo + engine + generator) of the transport floor, whatever it is written in.
        gen_cpu = best.loadgen_cpu / max(best.exchanges, 1) * 1e6
        t_gen = floor_gen["transport"]
        ceiling = (t_cpu + t_gen) / (t_cpu + engine_us + gen_cpu)
        print(f"ceiling against the transport floor with zero protocol work, CPU-bound: ({t_cpu:.0f} + {t_gen:.0f}) / "
              f"({t_cpu:.0f} + {engine_us:.0f} + {gen_cpu:.0f}) = {ceiling:.2f}")
        print(f"targets: ratio >= 0.6 -> {best.rate / floors['bare']:.2f} of the bare asyncio echo floor, "
              f"{best.rate / floor:.2f} of the transport echo floor; p99 <= 10 ms -> per request "
              f"{best.request_ms['p99']:.1f} ms, per whole quote {best.exchange_ms['p99']:.1f} ms; "
              f"scaling with workers -> {'yes' if len(ws) < 2 or results[ws[-1]].rate > results[ws[0]].rate else 'NO'}")


if __name__ == "__main__":
    main()
