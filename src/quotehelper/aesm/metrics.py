"""Prometheus metrics of the quote service, in prometheus_client's multiprocess mode.

Each worker process writes its values to mmap'd files in a private directory (PROMETHEUS_MULTIPROC_DIR);
the supervisor serves /metrics over HTTP with a MultiProcessCollector that sums them, and calls
`mark_process_dead` when a worker exits (its counters stay counted, its live gauges go away).

Hot path: a multiprocess counter increment costs ~1.5 us (labels lookup + lock + mmap write, ~3 us with
the lookup) and a histogram observation ~3 us, so ~12 us per quote (three requests and one timing).
Instead the responder and the server count in plain dicts and lists (`RequestCounts`, `LatencyBuckets`,
`AesmServer.stats`; ~0.2 us per request, kept whether metrics are on or off), and `WorkerMetrics.flush`
adds what changed to the prometheus values every `FLUSH_INTERVAL` seconds and once more at exit.
A worker killed with SIGKILL loses at most its last interval.

prometheus_client is imported only when metrics are on (it loads ssl, http.server and wsgiref), and
this module's own imports stay light because every worker loads it. A restarted worker's counter
files stay in the directory (its counts must), a few KB each.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)


class _Responder(Protocol):  # what a flush reads of AesmResponder (no import: metrics stays below server)
    counts: dict[tuple[str, str], int]
    quote_latency: LatencyBuckets
    queued: int

    def take_peak_queue(self) -> int: ...


class _Held(Protocol):
    held: float


class _Server(Protocol):
    stats: dict[str, int]
    anticipation: _Held | None


class _Tenants(Protocol):
    def all(self) -> Iterable[Any]: ...  # tenant.Tenant objects

PREFIX = "quotehelper_aesm_"
FLUSH_INTERVAL = 0.1  # seconds between a worker's flushes to the shared files
# Engine get_quote: ~40 us on a fast core for the software QE, milliseconds for DCAP's enclave.
QUOTE_BUCKETS = (25e-6, 50e-6, 75e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3)

# Request label for a Response sub-message field (the call that was answered).
CALL_LABELS = {
    "initQuoteExRes": "InitQuoteEx", "getQuoteSizeExRes": "GetQuoteSizeEx", "getQuoteExRes": "GetQuoteEx",
    "selectAttKeyIDRes": "SelectAttKeyID", "getSupportedAttKeyIDNumRes": "GetSupportedAttKeyIDNum",
    "getSupportedAttKeyIDsRes": "GetSupportedAttKeyIDs",
}
LEGACY = "legacy"
UNPARSEABLE = ("unparseable", "none")  # (call, code) of a payload closed unanswered

# AesmServer.stats key -> `reason` label of the connections-dropped counter.
DROP_REASONS = {
    "oversized": "frame_too_large",
    "read_timeouts": "read_deadline",
    "write_timeouts": "write_deadline",
    "closed_unanswered": "unparseable",
    "rejected": "connection_cap",
    "truncated": "truncated",
    "over_budget": "buffer_budget",
    "tenant_cap": "tenant_connection_cap",
    "evicted": "evicted_for_other_tenant",
}
TENANT_FILE_INTERVAL = 1.0  # seconds between a worker's per-tenant snapshots
TENANT_FILE_PREFIX = "tenants-"


class LatencyBuckets:
    """A histogram kept in a list: `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = QUOTE_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: above the largest bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le semantics: == bound counts in it
        self.sum += seconds

    def take(self) -> tuple[list[int], float]:
        """Counts and sum since the last take."""
        counts, total = self.counts, self.sum
        self.counts = [0] * len(counts)
        self.sum = 0.0
        return counts, total


# --- worker side --------------------------------------------------------------------------------------

class WorkerMetrics:
    """The worker's prometheus values (in PROMETHEUS_MULTIPROC_DIR, which must be set before the first
    prometheus_client import); `flush` moves the responder's and server's local counts into them."""

    def __init__(self, index: int) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            raise RuntimeError("WorkerMetrics needs PROMETHEUS_MULTIPROC_DIR")
        self.requests = Counter(PREFIX + "requests", "AESM requests answered (or closed unanswered), by call and "
                                "aesm_error_t result code", ["call", "code"])
        self.dropped = Counter(PREFIX + "connections_dropped", "Connections closed without a reply, by reason",
                               ["reason"])
        self.quote_seconds = Histogram(PREFIX + "quote_seconds", "Engine get_quote time per GetQuoteEx call "
                                       "(successful or not)", buckets=QUOTE_BUCKETS)
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Engine calls queued in a worker (highest since the "
                                 "previous update, every 0.1 s)", ["worker"], multiprocess_mode="livemax")
        self.queue_depth_w = self.queue_depth.labels(str(index))
        self.queue_depth_w.set(0)
        self.held = Counter(PREFIX + "anticipation_held_seconds", "Seconds heavy tenants were held while light "
                            "ones were answered (--anticipation; each worker counts the extensions it made)")
        self._held_seen = 0.0
        self._children: dict[tuple[str, str], Any] = {}
        self._server_seen: dict[str, int] = {}
        # Batched histogram updates need the per-bucket values; prometheus_client has no public
        # "observe n times" (checked here, and by the scrape tests, so an upgrade that changes it fails loudly).
        self._hist_buckets = getattr(self.quote_seconds, "_buckets", None)
        self._hist_sum = getattr(self.quote_seconds, "_sum", None)
        if self._hist_buckets is None or self._hist_sum is None or len(self._hist_buckets) != len(QUOTE_BUCKETS) + 1:
            raise RuntimeError("unsupported prometheus_client version: Histogram internals changed")

    def flush(self, responder: _Responder, server: _Server, tenants: _Tenants | None = None) -> None:
        counts = responder.counts
        if counts:
            responder.counts = {}
            for key, n in counts.items():
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self.requests.labels(*key)
                child.inc(n)
        buckets, total = responder.quote_latency.take()
        if any(buckets):
            for value, n in zip(self._hist_buckets, buckets, strict=True):
                if n:
                    value.inc(n)
            self._hist_sum.inc(total)
        stats = server.stats
        for key, reason in DROP_REASONS.items():
            n = stats[key] - self._server_seen.get(key, 0)
            if n:
                self._server_seen[key] = stats[key]
                self.dropped.labels(reason).inc(n)
        self.queue_depth_w.set(max(responder.take_peak_queue(), responder.queued))
        ant = server.anticipation
        if ant is not None and ant.held > self._held_seen:
            self.held.inc(ant.held - self._held_seen)
            self._held_seen = ant.held
        if tenants is not None:
            self._write_tenants(tenants)

    _tenants_written = 0.0
    _tenants_last: dict[str, Any] | None = None

    def _write_tenants(self, tenants: _Tenants, now: float | None = None) -> None:
        """This worker's cumulative per-tenant counts, as JSON beside the prometheus files, at most every
        TENANT_FILE_INTERVAL (the supervisor picks the top tenants at scrape time)."""
        import time

        now = time.monotonic() if now is None else now
        if now - self._tenants_written < TENANT_FILE_INTERVAL:
            return
        self._tenants_written = now
        snap = tenant_snapshot(tenants.all())
        if snap == self._tenants_last:
            return
        self._tenants_last = snap
        d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        path = os.path.join(d, f"{TENANT_FILE_PREFIX}{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(snap, f)
        os.replace(path + ".tmp", path)


def tenant_snapshot(tenants: Iterable[Any]) -> dict[str, Any]:
    """key -> {label, requests, errors, dropped: {reason: n}, wait_sum, wait_count} for tenants that asked."""
    out: dict[str, Any] = {}
    for t in tenants:
        if not (t.requests or t.dropped):
            continue
        dropped = {DROP_REASONS.get(r, r): n for r, n in t.dropped.items()}
        if t.busy:
            dropped["busy"] = t.busy
        if t.refused:
            dropped["denied"] = t.refused
        key = t.key + (" denied" if t.denied else "")
        out[key] = {"label": t.label, "requests": t.requests, "errors": t.errors, "dropped": dropped,
                    "wait_sum": t.wait_sum, "wait_count": t.wait_count}
    return out


def top_tenants(snapshots: Iterable[dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    """Sums workers' snapshots per tenant, keeps the `n` with the most requests under their labels and
    folds the rest into "other": at most n + 1 label values, whatever the number of tenants."""
    total: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for key, v in snap.items():
            t = total.setdefault(key, {"label": v["label"], "requests": 0, "errors": 0, "dropped": {},
                                       "wait_sum": 0.0, "wait_count": 0})
            for f in ("requests", "errors", "wait_sum", "wait_count"):
                t[f] += v[f]
            for r, k in v["dropped"].items():
                t["dropped"][r] = t["dropped"].get(r, 0) + k
    ranked = sorted(total.values(), key=lambda t: (-t["requests"], t["label"]))
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(ranked):
        label = t["label"] if i < n else "other"
        o = out.setdefault(label, {"requests": 0, "errors": 0, "dropped": {}, "wait_sum": 0.0, "wait_count": 0})
        for f in ("requests", "errors", "wait_sum", "wait_count"):
            o[f] += t[f]
        for r, k in t["dropped"].items():
            o["dropped"][r] = o["dropped"].get(r, 0) + k
    return out


def start_flushing(metrics: WorkerMetrics, responder: _Responder, server: _Server, tenants: _Tenants | None = None,
                   interval: float = FLUSH_INTERVAL) -> Callable[[], None]:
    """Flush every `interval` on the running loop; returns `stop`, which cancels and flushes a last time."""
    import asyncio

    loop = asyncio.get_running_loop()
    handle: list[asyncio.TimerHandle] = []

    def tick() -> None:
        try:
            metrics.flush(responder, server, tenants)
        except Exception:  # metrics must never take the worker down
            log.exception("metrics flush failed")
        handle[:] = [loop.call_later(interval, tick)]

    handle.append(loop.call_later(interval, tick))

    def stop() -> None:
        for h in handle:
            h.cancel()
        metrics._tenants_written = float("-inf")  # the last per-tenant counts too
        try:
            metrics.flush(responder, server, tenants)
        except Exception:
            log.exception("metrics flush failed")

    return stop


# --- supervisor side ----------------------------------------------------------------------------------

def parse_addr(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:9464; an empty host means all interfaces) -> (host, port)."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:9464 or [::]:9464)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port_s)


def engine_label(target: str) -> str:
    """The engine spec's module, short: 'quotehelper.platform.sim:SimPlatform.open' -> 'sim'."""
    return target.partition(":")[0].rsplit(".", 1)[-1]


class MetricsEndpoint:
    """The supervisor's side: a private multiprocess directory (0700, removed on close), exported to the
    workers through PROMETHEUS_MULTIPROC_DIR, and the /metrics HTTP server (prometheus_client's own)."""

    def __init__(self, addr: tuple[str, int], *, engine: str, version: str,
                 restarts: Callable[[], int], workers: Callable[[], int], tenants: int = 10) -> None:
        self.addr = addr
        self.tenants = tenants  # tenants with their own label value
        import threading

        self._files_lock = threading.Lock()
        self.engine = engine
        self.version = version
        self._restarts = restarts
        self._workers = workers
        self.directory: str | None = None
        self._httpd: Any = None
        self._thread: Any = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def start(self) -> None:
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="quotehelper-metrics-")  # mode 0700
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.directory  # inherited by the workers
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            registry.register(_Serialized(MultiProcessCollector(None, path=self.directory), self._files_lock))
            registry.register(_SupervisorCollector(self))
            self._httpd, self._thread = start_http_server(self.addr[1], self.addr[0], registry=registry)
        except BaseException:
            self.close()
            raise

    def worker_exited(self, pid: int) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        if self.directory is not None:
            with self._files_lock:  # not while a scrape reads the files it removes (that scrape would fail)
                mark_process_dead(pid, self.directory)

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None
        if self.directory is not None:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == self.directory:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            self.directory = None


class _Serialized:
    """A collector run under a lock (the HTTP server's thread vs mark_process_dead on the event loop)."""

    def __init__(self, inner: Any, lock: Any) -> None:
        self.inner, self.lock = inner, lock

    def collect(self) -> Iterator[Any]:
        with self.lock:
            return iter(list(self.inner.collect()))


class _SupervisorCollector:
    """Values the supervisor itself knows, collected at scrape time (no files)."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        e = self.endpoint
        yield CounterMetricFamily(PREFIX + "worker_restarts", "Quoting workers that exited unexpectedly and "
                                  "were replaced", value=e._restarts())
        yield GaugeMetricFamily(PREFIX + "workers", "Quoting worker processes running", value=e._workers())
        info = GaugeMetricFamily(PREFIX + "service_info", "The quote service: engine and version (value 1)",
                                 labels=["engine", "version"])
        info.add_metric([e.engine, e.version], 1)
        yield info
        try:
            tenants = list(self._tenants())
        except Exception:  # the per-tenant part must never fail the whole scrape
            log.exception("per-tenant metrics unavailable for this scrape")
            tenants = []
        yield from tenants

    def _tenants(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, SummaryMetricFamily

        e = self.endpoint
        snaps = []
        for name in os.listdir(e.directory or "."):
            if name.startswith(TENANT_FILE_PREFIX) and name.endswith(".json"):
                try:
                    with open(os.path.join(e.directory or ".", name)) as f:
                        snaps.append(json.load(f))
                except (OSError, ValueError):  # a worker replacing its file right now: next scrape
                    continue
        top = top_tenants(snaps, e.tenants)
        req = CounterMetricFamily(PREFIX + "tenant_requests", "Requests per tenant (the busiest tenants by "
                                  "name, the rest as \"other\")", labels=["tenant"])
        err = CounterMetricFamily(PREFIX + "tenant_errors", "Requests per tenant answered with an error "
                                  "code or closed unanswered", labels=["tenant"])
        drop = CounterMetricFamily(PREFIX + "tenant_dropped", "Requests or connections refused per tenant, by "
                                   "reason (busy, denied, tenant_connection_cap, read_deadline, ...)",
                                   labels=["tenant", "reason"])
        wait = SummaryMetricFamily(PREFIX + "tenant_queue_wait_seconds", "Time engine calls waited in the "
                                   "fair queue, per tenant", labels=["tenant"])
        for label, t in sorted(top.items()):
            req.add_metric([label], t["requests"])
            err.add_metric([label], t["errors"])
            for reason, n in sorted(t["dropped"].items()):
                drop.add_metric([label, reason], n)
            wait.add_metric([label], t["wait_count"], t["wait_sum"])
        yield from (req, err, drop, wait)
