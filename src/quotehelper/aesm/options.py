"""The quote service's per-worker options, in one frozen dataclass (defaults written once, here).

Standard library only: the supervisor imports it and stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quotehelper.aesm.framing import MAX_FRAME
from quotehelper.errors import QuoteHelperError

TENANT_MODES = ("pod", "uid", "none")
MAX_ANTICIPATION = 0.02  # seconds: 5 ticks at HZ=250, and the shared bucket's size (anticipate.BURST)


class ServeOptionsError(QuoteHelperError):
    """An option value the service cannot run with."""


@dataclass(frozen=True)
class ServeOptions:
    """Per-worker serving limits (AesmServer, AesmResponder, FairQueue) and the tenant policy.

    Times in seconds, sizes in bytes, counts per worker process. A tenant is who connects, from the kernel:
    `tenant_by="pod"` maps the peer's cgroup to its Kubernetes pod (else container, else uid), "uid" uses
    the peer's uid, "none" puts everyone in one tenant (no fairness, as before multi-tenancy).
    """

    read_timeout: float = 5.0
    write_timeout: float = 15.0
    max_frame: int = MAX_FRAME
    max_connections: int = 1024  # connections one worker holds open (waiting for a request/engine/reader)
    max_buffered: int = 32 << 20
    queue_limit: int = 512  # engine calls queued in a worker (~2 KB each); when full the biggest tenant gets AESM_BUSY
    drain_timeout: float = 20.0
    memo: bool = False
    metrics: bool = False  # write prometheus values to $PROMETHEUS_MULTIPROC_DIR (set by the supervisor)
    tenant_by: str = "pod"
    # One tenant's share of a worker (0 = automatic): connections, half of max_connections, so no tenant
    # fills any worker (hence not every worker) and others always find room; queued engine calls, all of
    # queue_limit, since a full queue evicts from the tenant with the most queued.
    tenant_max_connections: int = 0
    tenant_queue_limit: int = 0
    allow_uids: tuple[int, ...] = ()  # empty allow lists: everyone not denied is allowed
    allow_gids: tuple[int, ...] = ()
    allow_namespaces: tuple[str, ...] = ()
    deny_uids: tuple[int, ...] = ()
    deny_gids: tuple[int, ...] = ()
    deny_namespaces: tuple[str, ...] = ()
    deny_pods: tuple[str, ...] = ()  # "namespace/name" or a pod UID
    pods_log_dir: str = "/var/log/pods"  # kubelet's <namespace>_<name>_<uid> directories: pod UID -> name
    metrics_tenants: int = 10  # tenants with their own metric labels (the busiest); the rest are "other"
    # Seconds heavy tenants wait after a light tenant is answered (anticipate.py; 0 = never)
    anticipation: float = 0.01

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # from JSON (the worker's argv) lists arrive: make them tuples
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        if self.tenant_by not in TENANT_MODES:
            raise ServeOptionsError(f"tenant_by must be one of {', '.join(TENANT_MODES)}, not {self.tenant_by!r}")
        for name in ("max_connections", "queue_limit"):
            if getattr(self, name) < 1:
                raise ServeOptionsError(f"{name} must be at least 1")
        for name in ("tenant_max_connections", "tenant_queue_limit", "metrics_tenants"):
            if getattr(self, name) < 0:
                raise ServeOptionsError(f"{name} must be 0 (automatic) or more")
        if not 0 <= self.anticipation <= MAX_ANTICIPATION:
            raise ServeOptionsError(f"anticipation must be between 0 and {MAX_ANTICIPATION} seconds")

    @property
    def tenant_connections(self) -> int:
        """Connections one tenant may hold in one worker."""
        if self.tenant_by == "none":
            return self.max_connections
        return self.tenant_max_connections or max(1, self.max_connections // 2)

    @property
    def tenant_queue(self) -> int:
        """Engine calls one tenant may have queued in one worker: by default the whole queue, as a full
        queue makes room for a tenant with fewer queued (FairQueue.push)."""
        return self.tenant_queue_limit or self.queue_limit

    @property
    def anticipates(self) -> bool:
        """Whether workers hold heavy tenants for light ones (needs tenants to tell apart)."""
        return self.anticipation > 0 and self.tenant_by != "none"

    @property
    def access_control(self) -> bool:
        return any((self.allow_uids, self.allow_gids, self.allow_namespaces, self.deny_uids, self.deny_gids,
                    self.deny_namespaces, self.deny_pods))
