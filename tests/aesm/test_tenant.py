"""Tenant identity: recorded /proc/PID/cgroup lines of containerd and CRI-O pods (both drivers, both cgroup
versions) -> pod UID and container; pod names from kubelet's log directories; the per-peer cache;
allow/deny decisions."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotehelper.aesm.options import ServeOptions, ServeOptionsError
from quotehelper.aesm.tenant import CRED_TTL, PodNames, TenantRegistry, identity_from_cgroup
from tests.aesm.cgroups import CID, POD, RECORDED


@pytest.mark.parametrize(("text", "pod", "cid", "runtime"), [r[1:] for r in RECORDED], ids=[r[0] for r in RECORDED])
def test_recorded_cgroup_lines_map_to_pod_and_container(text: str, pod: str | None, cid: str | None,
                                                        runtime: str | None) -> None:
    ident = identity_from_cgroup(text)
    assert (ident.pod_uid, ident.container_id, ident.runtime) == (pod, cid, runtime)


def test_lookalikes_are_not_pods() -> None:
    assert identity_from_cgroup("0::/kubepods/burstable/pod1234/abc\n").pod_uid is None  # not a UID
    assert identity_from_cgroup(f"0::/kubepods/pod{POD}x/{CID}\n").pod_uid is None  # not a whole component
    assert identity_from_cgroup(f"0::/kubepods/pod{POD}/{CID[:-1]}\n").container_id is None  # 63 hex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a
    a.close()
    b.close()


def registry(tmp_path: Path, cgroup: str, clock: Clock, **opts: object) -> tuple[TenantRegistry, list[int]]:
    reads: list[int] = []

    def read(pid: int) -> str:
        reads.append(pid)
        return cgroup

    o = ServeOptions(pods_log_dir=str(tmp_path / "pods"), **opts)  # type: ignore[arg-type]
    return TenantRegistry(o, clock=clock, read_cgroup=read, pod_names=PodNames(o.pods_log_dir, clock)), reads


def test_pod_tenant_named_from_kubelet_log_dirs_and_cached_per_peer(tmp_path: Path, peer: socket.socket) -> None:
    clock = Clock()
    reg, reads = registry(tmp_path, RECORDED[0][1], clock)
    t = reg.identify(peer)
    assert (t.key, t.label, t.uid, t.denied) == (f"pod:{POD}", f"pod:{POD}", os.getuid(), False)
    assert reads == [os.getpid()]  # the peer (this process) as SO_PEERCRED reports it
    (tmp_path / "pods" / f"team-a_signer-7f9c_{POD}").mkdir(parents=True)
    assert reg.identify(peer) is t and len(reads) == 1  # cached: no /proc read
    clock.now += CRED_TTL + 0.1  # expired: read again; the pod's directory appeared meanwhile
    assert reg.identify(peer) is t and len(reads) == 2
    assert (t.label, t.namespace, t.pod) == ("team-a/signer-7f9c", "team-a", "signer-7f9c")


def test_without_a_pod_the_tenant_is_the_uid_and_modes_change_it(tmp_path: Path, peer: socket.socket) -> None:
    clock = Clock()
    assert registry(tmp_path, "0::/user.slice\n", clock)[0].identify(peer).key == f"uid:{os.getuid()}"
    assert registry(tmp_path, RECORDED[0][1], clock, tenant_by="uid")[0].identify(peer).key == f"uid:{os.getuid()}"
    reg, reads = registry(tmp_path, RECORDED[0][1], clock, tenant_by="none")
    assert reg.identify(peer).key == "all" and reads == []
    assert registry(tmp_path, "0::/system.slice/docker-" + CID + ".scope\n", clock)[0].identify(peer).key == \
        "container:" + CID[:12]


@pytest.mark.parametrize(("opts", "denied"), [
    ({}, False),
    ({"deny_uids": (os.getuid(),)}, True),
    ({"deny_gids": (os.getgid(),)}, True),
    ({"allow_uids": (os.getuid() + 1,)}, True),
    ({"allow_uids": (os.getuid() + 1,), "allow_gids": (os.getgid(),)}, False),
    ({"deny_namespaces": ("team-a",)}, True),
    ({"deny_namespaces": ("team-b",)}, False),
    ({"allow_namespaces": ("team-a",)}, False),
    ({"allow_namespaces": ("team-b",)}, True),
    ({"deny_pods": ("team-a/signer-7f9c",)}, True),
    ({"deny_pods": (POD,)}, True),
    ({"deny_pods": ("team-a/other",)}, False),
], ids=lambda x: ",".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else str(x))
def test_access_control(tmp_path: Path, peer: socket.socket, opts: dict, denied: bool) -> None:
    (tmp_path / "pods" / f"team-a_signer-7f9c_{POD}").mkdir(parents=True)
    t = registry(tmp_path, RECORDED[5][1], Clock(), **opts)[0].identify(peer)
    assert t.denied is denied
    assert t.label == "team-a/signer-7f9c" + (" (denied)" if denied else "")


def test_namespace_rules_need_a_known_namespace(tmp_path: Path, peer: socket.socket) -> None:
    # No kubelet log directory: the pod is known by UID only; a namespace deny cannot match, an allow
    # list of namespaces admits nobody it cannot place.
    assert not registry(tmp_path, RECORDED[0][1], Clock(), deny_namespaces=("team-a",))[0].identify(peer).denied
    assert registry(tmp_path, RECORDED[0][1], Clock(), allow_namespaces=("team-a",))[0].identify(peer).denied


def test_pod_dir_listing_is_rate_limited(tmp_path: Path) -> None:
    clock = Clock()
    names = PodNames(str(tmp_path), clock)
    assert names.lookup(POD) is None
    (tmp_path / f"ns_p_{POD}").mkdir()
    assert names.lookup(POD) is None  # listed less than a second ago
    clock.now += 1.0
    assert names.lookup(POD) == ("ns", "p")


def test_options_reject_nonsense() -> None:
    with pytest.raises(ServeOptionsError):
        ServeOptions(tenant_by="pid")
    with pytest.raises(ServeOptionsError):
        ServeOptions(tenant_queue_limit=-1)
    for bad in (-0.001, 0.021):
        with pytest.raises(ServeOptionsError, match="anticipation"):
            ServeOptions(anticipation=bad)
    assert not ServeOptions(anticipation=0).anticipates and not ServeOptions(tenant_by="none").anticipates
    assert ServeOptions().anticipates
    o = ServeOptions(deny_uids=[5], max_connections=100)  # type: ignore[arg-type]  # as from JSON
    assert o.deny_uids == (5,) and o.tenant_connections == 50 and o.tenant_queue == 512
