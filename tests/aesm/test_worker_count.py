"""The default number of quoting workers: the CPUs the service may actually use, capped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quotehelper.aesm.workers import MAX_DEFAULT_WORKERS, default_workers, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _cg(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),  # no cgroup files: the affinity mask
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, unlimited
    ({"cpu.max": "50000 100000\n"}, 1),  # v2, half a CPU: still one worker
    ({"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),  # v2, 1.5 CPUs: rounded up, never above affinity
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, unlimited
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1, one CPU
    ({"cpu.max": "garbage\n"}, AFFINITY),  # unreadable: ignored
])
def test_usable_cpus_follows_affinity_and_quota(tmp_path: Path, files: dict[str, str], expected: int) -> None:
    assert usable_cpus(_cg(tmp_path, files)) == expected


def test_default_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))  # a large node, no CPU limit
    monkeypatch.setattr("quotehelper.cpus._cpu_quota", lambda root: None)
    assert default_workers() == MAX_DEFAULT_WORKERS
    monkeypatch.setattr("quotehelper.cpus._cpu_quota", lambda root: 2.0)  # a 2-CPU limit on that node
    assert default_workers() == 2
