"""Tenants as real processes under distinct uids, each in its own pod-shaped cgroup v2 directory (a test
subtree), against the real service (2 worker processes, tenants by pod): a flooding tenant does not
starve a polite one, a connection-holding tenant cannot lock it out, a denied tenant gets AESM's
service-unavailable answer and a log line naming it. No timings are asserted: only who was answered."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotehelper.aesm.options import ServeOptions
from quotehelper.platform.sim import SimPlatform
from tests.aesm.conftest import ThreadedService
from tests.aesm.tenants import PodCgroups, flood, hold, polite, quote_frames, spawn

POLITE_UID, FLOOD_UID = 1000, 2000


@pytest.fixture(scope="module")
def pods() -> Iterator[PodCgroups]:
    pc = PodCgroups()
    if pc.unavailable:
        pytest.skip(f"tenants as real processes need root and a writable cgroup v2 hierarchy: {pc.unavailable}")
    yield pc
    pc.close()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="qh-tenants-"))
    d.chmod(0o755)  # the clients run as other uids: they must reach the socket
    yield d
    shutil.rmtree(d, ignore_errors=True)


def serve(shared_dir: Path, platform: SimPlatform, **opts: object) -> ThreadedService:
    o = ServeOptions(**{"read_timeout": 1.0, "memo": True, **opts})  # type: ignore[arg-type]
    return ThreadedService(str(shared_dir / "aesm.socket"), platform, workers=2, options=o).start()


@pytest.mark.parametrize("conns", [64, 512])
def test_a_getquote_flood_does_not_starve_a_polite_tenant(pods: PodCgroups, shared_dir: Path, platform: SimPlatform,
                                                          conns: int) -> None:
    frames = quote_frames(platform)
    # A small queue (4 engine calls per tenant per worker) so the flood is over its share from the start.
    svc = serve(shared_dir, platform, queue_limit=8)
    try:
        fl = spawn(flood, svc.sock, [frames[2]], conns, 3.0, uid=FLOOD_UID, gid=FLOOD_UID,
                   cgroup=pods.pod()[0])
        po = spawn(polite, svc.sock, frames, 20, 0.03, 0.5, uid=POLITE_UID, gid=POLITE_UID, cgroup=pods.pod()[0])
        p, f = po.result(), fl.result()
    finally:
        svc.stop()
    assert (p["ok"], p["failed"]) == (20, [])  # every polite quote answered, no AESM_BUSY among them
    assert f["replies"] > 0
    assert f["busy"] > 0  # the flood really was over its share: it, not the polite tenant, got BUSY
    # (with tenant_by="none", i.e. without this fairness, the polite tenant gets BUSY here too)


def test_a_tenant_holding_3000_connections_cannot_lock_out_another(
        pods: PodCgroups, shared_dir: Path, platform: SimPlatform) -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 3200:
        pytest.skip("the connection holder needs a hard RLIMIT_NOFILE of at least 3200")
    frames = quote_frames(platform)
    svc = serve(shared_dir, platform)  # 1024 connections per worker, 512 per tenant
    try:
        holder = spawn(hold, svc.sock, 3000, 6.0, uid=FLOOD_UID, gid=FLOOD_UID, cgroup=pods.pod()[0])
        po = spawn(polite, svc.sock, frames, 40, 0.02, 1.5, uid=POLITE_UID, gid=POLITE_UID, cgroup=pods.pod()[0])
        p, h = po.result(), holder.result()
    finally:
        svc.stop()
    assert (p["ok"], p["failed"]) == (40, [])
    assert h["peak_held"] > 2 * 512  # it held more than two workers' tenant shares...
    assert h["reopened"] > 0  # ...and its excess connections were the ones closed
    # (with tenant_by="none" the holder fills both workers and the polite tenant is refused)


def test_denied_tenants_get_service_unavailable_and_a_log_line(
        pods: PodCgroups, shared_dir: Path, platform: SimPlatform, capfd: pytest.CaptureFixture[str]) -> None:
    frames = quote_frames(platform)
    denied_dir, denied_uid = pods.pod()
    logs = shared_dir / "pods"
    (logs / f"team-x_signer-0_{denied_uid}").mkdir(parents=True)
    svc = serve(shared_dir, platform, deny_namespaces=("team-x",), deny_uids=(FLOOD_UID,), pods_log_dir=str(logs))
    try:
        by_ns = spawn(polite, svc.sock, frames, 2, 0.0, uid=POLITE_UID, gid=POLITE_UID, cgroup=denied_dir)
        by_uid = spawn(polite, svc.sock, frames, 2, 0.0, uid=FLOOD_UID, gid=FLOOD_UID, cgroup=pods.pod()[0])
        ok = spawn(polite, svc.sock, frames, 2, 0.0, uid=POLITE_UID, gid=POLITE_UID, cgroup=pods.pod()[0])
        ns, uid, fine = by_ns.result(), by_uid.result(), ok.result()
    finally:
        svc.stop()
    assert ns["failed"] == uid["failed"] == [[30, 30, 30]] * 2  # AESM_SERVICE_UNAVAILABLE for every call
    assert (fine["ok"], fine["failed"]) == (2, [])  # same uid as the denied pod, another pod: served
    err = capfd.readouterr().err
    assert "denied team-x/signer-0 (denied) uid=1000" in err
    assert f"uid={FLOOD_UID} gid={FLOOD_UID}" in err and "AESM_SERVICE_UNAVAILABLE" in err
