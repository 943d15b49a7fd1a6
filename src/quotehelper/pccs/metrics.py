"""PCCS metrics (Prometheus): requests by route and status, cache hits and misses, upstream errors and
latency, refresh failures, and from the store at scrape time: each collateral kind's age and the time
left to its soonest nextUpdate. A replica has its own registry (tests run several in one process)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from quotehelper.pccs.store import CollateralDao


class _StoreCollector:
    def __init__(self, dao: CollateralDao) -> None:
        self.dao = dao

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        now = time.time()
        age = GaugeMetricFamily("pccs_collateral_age_seconds", "Age of the oldest stored item of each kind",
                                labels=["kind"])
        left = GaugeMetricFamily("pccs_collateral_next_update_seconds",
                                 "Seconds until the soonest nextUpdate of each kind (negative: expired, not served)",
                                 labels=["kind"])
        items = GaugeMetricFamily("pccs_collateral_items", "Stored items of each kind", labels=["kind"])
        try:
            rows = self.dao.summary()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is restarting
            rows = []
        for kind, count, oldest, soonest in rows:
            age.add_metric([kind], now - oldest)
            left.add_metric([kind], soonest - now)
            items.add_metric([kind], count)
        yield from (age, left, items)


class PccsMetrics:
    def __init__(self, dao: CollateralDao | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pccs_requests", "Requests by route and HTTP status", ["route", "status"], registry=r)
        self._cache = Counter("pccs_cache", "Collateral lookups by kind and result (hit, miss)", ["kind", "result"],
                              registry=r)
        self._upstream_errors = Counter("pccs_upstream_errors", "Failed upstream requests by kind and reason",
                                        ["kind", "reason"], registry=r)
        self._upstream_seconds = Histogram("pccs_upstream_seconds", "Upstream request latency", ["kind"], registry=r)
        self._refresh_failed = Counter("pccs_refresh_failures", "Refreshes that failed (the stored copy is served "
                                       "while valid: stale until the next success)", ["kind"], registry=r)
        self.recoveries = Counter("pccs_tcb_recoveries", "Later TCB evaluations noticed", registry=r)
        if dao is not None:
            r.register(_StoreCollector(dao))

    def cache(self, kind: str, result: str) -> None:
        self._cache.labels(kind, result).inc()

    def upstream_error(self, kind: str, reason: str) -> None:
        self._upstream_errors.labels(kind, reason).inc()

    def upstream_latency(self, kind: str, seconds: float) -> None:
        self._upstream_seconds.labels(kind).observe(seconds)

    def refresh_failed(self, kind: str) -> None:
        self._refresh_failed.labels(kind).inc()
