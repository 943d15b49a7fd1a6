"""How many CPUs this process may use (a container's CPU limit, not the node's count). No heavy imports:
`verify --batch` asks it before anything else is loaded."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, bounded by a cgroup CPU quota (a container's CPU
    limit; cgroup v2 `cpu.max`, or v1 `cpu/cpu.cfs_quota_us` + `cpu.cfs_period_us`). os.cpu_count() is
    the node's count, which in a pod is not what the service gets."""
    n = len(os.sched_getaffinity(0))
    quota = _cpu_quota(cgroup_root)
    return max(1, min(n, math.ceil(quota))) if quota is not None else max(1, n)


def _cpu_quota(root: Path) -> float | None:
    """The CPU quota in CPUs, or None when unlimited or unreadable."""
    try:
        q, p = (root / "cpu.max").read_text().split()[:2]
        return None if q == "max" else int(q) / int(p)
    except (OSError, ValueError):
        pass
    try:
        q1 = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p1 = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q1 / p1 if q1 > 0 and p1 > 0 else None
    except (OSError, ValueError):
        return None
