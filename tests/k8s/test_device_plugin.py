"""The device plugin against a fake kubelet speaking real gRPC over Unix sockets."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import grpc
import pytest

from quotehelper.k8s.deviceplugin import api_pb2, api_pb2_grpc, framework, sgx
from tests.k8s.kubelet import FakeKubelet, kubelet_merge

RESOURCES = {sgx.ENCLAVE_RESOURCE, sgx.PROVISION_RESOURCE, sgx.EPC_RESOURCE}


@pytest.fixture
def short_tmp(tmp_path_factory) -> Path:
    # Unix socket paths must stay under 108 bytes; pytest's per-test dirs can get long.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="qh-dp-"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


class Running:
    """A PluginManager running in a thread, stopped at teardown."""

    def __init__(self, node: sgx.SgxNode, plugin_dir: Path, **limits) -> None:
        self.servers = [framework.PluginServer(b, plugin_dir) for b in sgx.backends(node, **limits)]
        self.manager = framework.PluginManager(self.servers, plugin_dir, poll_interval=0.05,
                                               health_interval=0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.manager.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def run(short_tmp):
    started: list[Running] = []

    def start(node, **limits) -> Running:
        r = Running(node, short_tmp / "plugins", **limits)
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def sim_node(root: Path, epc_mib: int = 64) -> sgx.SgxNode:
    (root / "platform").mkdir(parents=True, exist_ok=True)
    (root / "aesmd").mkdir(exist_ok=True)
    (root / "pki").mkdir(exist_ok=True)
    return sgx.simulated(root / "platform", epc_mib=epc_mib, aesmd_dir=root / "aesmd", pki_dir=root / "pki")


def fake_dev_node(root: Path) -> Path:
    """/dev/sgx_enclave and /dev/sgx_provision as real character devices (root can mknod /dev/null's
    numbers anywhere); skip where that is not allowed."""
    dev = root / "dev"
    dev.mkdir()
    try:
        for name in ("sgx_enclave", "sgx_provision"):
            os.mknod(dev / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD)")
    return dev


def test_register_then_kubelet_calls_back_simulated(short_tmp, run):
    kubelet = FakeKubelet(short_tmp / "plugins").start()
    node = sim_node(short_tmp, epc_mib=64)
    try:
        run(node, enclave_limit=5, provision_limit=3)
        regs = kubelet.wait_registrations(3)
        assert set(regs) == RESOURCES
        for req in regs.values():
            assert req.version == "v1beta1"
            assert "/" not in req.endpoint and (short_tmp / "plugins" / req.endpoint).is_socket()
            opts = kubelet.options(req)
            assert opts.get_preferred_allocation_available and not opts.pre_start_required

        enclave = kubelet.first_devices(regs[sgx.ENCLAVE_RESOURCE])
        assert [d.ID for d in enclave] == [f"sgx-enclave-{i}" for i in range(5)]
        assert {d.health for d in enclave} == {"Healthy"}
        assert len(kubelet.first_devices(regs[sgx.PROVISION_RESOURCE])) == 3
        epc = kubelet.first_devices(regs[sgx.EPC_RESOURCE])
        assert len(epc) == 64 and len({d.ID for d in epc}) == 64

        # EPC container: platform (read-only), quote-service socket dir (read-only), env; no device node.
        got = kubelet.allocate(regs[sgx.EPC_RESOURCE], "epc-0", "epc-7", "epc-63")
        mounts = {m.container_path: (m.host_path, m.read_only) for m in got.mounts}
        assert mounts == {"/var/run/aesmd": (str(short_tmp / "aesmd"), True),
                          str(short_tmp / "platform"): (str(short_tmp / "platform"), True)}
        assert dict(got.envs) == {"SGX_AESM_ADDR": "1",
                                  "QUOTEHELPER_PLATFORM": str(short_tmp / "platform")}
        assert not got.devices

        same = kubelet.allocate(regs[sgx.ENCLAVE_RESOURCE], "sgx-enclave-4")
        assert {m.container_path for m in same.mounts} == set(mounts) and same.envs["SGX_AESM_ADDR"] == "1"

        # Provision (the quote service's own grant): the platform and its PKI, no socket, no env. Where
        # it overlaps the enclave grant (same container path) it is identical: kubelet keeps either one.
        prov = kubelet.allocate(regs[sgx.PROVISION_RESOURCE], "sgx-provision-0")
        assert [(m.container_path, m.read_only) for m in prov.mounts] == [(str(short_tmp / "platform"), True),
                                                                         (str(short_tmp / "pki"), True)]
        assert prov.mounts[0] in same.mounts
        assert not prov.envs

        # Unknown device: a precise gRPC error, the server keeps serving.
        with pytest.raises(grpc.RpcError) as e:
            kubelet.allocate(regs[sgx.EPC_RESOURCE], "epc-64")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "epc-64" in e.value.details()
        assert len(kubelet.first_devices(regs[sgx.EPC_RESOURCE])) == 64

        with kubelet.channel(regs[sgx.EPC_RESOURCE]) as ch:
            pref = api_pb2_grpc.DevicePluginStub(ch).GetPreferredAllocation(
                api_pb2.PreferredAllocationRequest(container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=["epc-1", "epc-2", "epc-3"], must_include_deviceIDs=["epc-9"],
                        allocation_size=2)]), timeout=5)
        assert list(pref.container_responses[0].deviceIDs) == ["epc-9", "epc-1"]
    finally:
        kubelet.stop()


def test_hardware_devices_unhealthy_when_they_vanish(short_tmp, run):
    dev = fake_dev_node(short_tmp)
    (short_tmp / "aesmd").mkdir()
    node = sgx.discover(dev, short_tmp / "nosys", epc_mib=16, aesmd_dir=short_tmp / "aesmd")
    kubelet = FakeKubelet(short_tmp / "plugins").start()
    try:
        run(node, enclave_limit=2, provision_limit=2)
        regs = kubelet.wait_registrations(3)
        got = kubelet.allocate(regs[sgx.EPC_RESOURCE], "epc-3")
        assert [(d.container_path, d.host_path, d.permissions) for d in got.devices] == [
            ("/dev/sgx_enclave", str(dev / "sgx_enclave"), "rw")]
        assert [(m.container_path, m.read_only) for m in got.mounts] == [("/var/run/aesmd", True)]
        assert dict(got.envs) == {"SGX_AESM_ADDR": "1"}
        prov = kubelet.allocate(regs[sgx.PROVISION_RESOURCE], "sgx-provision-1")
        assert [d.container_path for d in prov.devices] == ["/dev/sgx_provision"] and not prov.mounts
        # The quote service's pod (enclave + provision) and an app pod (EPC + enclave): kubelet merges the
        # answers keeping the first entry per container path, so overlapping entries must be identical.
        service = kubelet_merge(kubelet.allocate(regs[sgx.ENCLAVE_RESOURCE], "sgx-enclave-0"), prov)
        assert {d.container_path for d in service.devices} == {"/dev/sgx_enclave", "/dev/sgx_provision"}
        app = kubelet_merge(got, kubelet.allocate(regs[sgx.ENCLAVE_RESOURCE], "sgx-enclave-1"))
        assert app == got

        # Watch the EPC stream: the first message is all healthy; deleting the device node flips it.
        with kubelet.channel(regs[sgx.EPC_RESOURCE]) as ch:
            stream = api_pb2_grpc.DevicePluginStub(ch).ListAndWatch(api_pb2.Empty(), timeout=10)
            assert {d.health for d in next(stream).devices} == {"Healthy"}
            (dev / "sgx_enclave").unlink()
            update = next(stream)
            stream.cancel()
        assert len(update.devices) == 16 and {d.health for d in update.devices} == {"Unhealthy"}
        with pytest.raises(grpc.RpcError) as e:
            kubelet.allocate(regs[sgx.ENCLAVE_RESOURCE], "sgx-enclave-0")
        assert "unhealthy" in e.value.details()
        # The provision device is still there and still allocatable.
        assert kubelet.allocate(regs[sgx.PROVISION_RESOURCE], "sgx-provision-0").devices
    finally:
        kubelet.stop()


def test_reregisters_when_kubelet_sock_is_recreated(short_tmp, run):
    kubelet = FakeKubelet(short_tmp / "plugins").start()
    try:
        running = run(sim_node(short_tmp), enclave_limit=1, provision_limit=1)
        kubelet.wait_registrations(3)
        wait_for(lambda: running.manager.registrations == 3)

        # 1) kubelet.sock deleted and recreated (plugin sockets untouched).
        kubelet.stop()
        time.sleep(0.2)
        assert kubelet.registered.empty()
        kubelet = FakeKubelet(short_tmp / "plugins").start()
        regs = kubelet.wait_registrations(3)
        assert set(regs) == RESOURCES

        # 2) a real kubelet restart: it also deletes every plugin socket; the plugin serves anew.
        kubelet.stop(remove_sockets=True)
        kubelet = FakeKubelet(short_tmp / "plugins").start()
        regs = kubelet.wait_registrations(3)
        wait_for(lambda: running.manager.registrations == 9)
        got = kubelet.allocate(regs[sgx.ENCLAVE_RESOURCE], "sgx-enclave-0")
        assert got.envs["SGX_AESM_ADDR"] == "1"
    finally:
        kubelet.stop()


def test_refuses_a_socket_another_live_plugin_serves(short_tmp):
    node = sim_node(short_tmp)
    first = framework.PluginServer(sgx.EnclaveBackend(node, 1), short_tmp / "plugins")
    first.start()
    try:
        second = framework.PluginServer(sgx.EnclaveBackend(node, 1), short_tmp / "plugins")
        with pytest.raises(framework.DevicePluginError, match="already served"):
            second.start()
    finally:
        first.stop()
    assert not (short_tmp / "plugins" / sgx.EnclaveBackend.endpoint).exists()
    # A stale socket file (nobody listening) is replaced.
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(short_tmp / "plugins" / sgx.EnclaveBackend.endpoint))
    s.close()
    again = framework.PluginServer(sgx.EnclaveBackend(node, 1), short_tmp / "plugins")
    again.start()
    again.stop()


def test_epc_capped_well_under_kubelets_4mib_limit(short_tmp):
    node = sgx.SgxNode(sgx.Grant(short_tmp, "/x", False), sgx.Grant(short_tmp, "/x", False), short_tmp,
                       {0: 150 * 1024, 1: 150 * 1024})  # a 300 GiB two-socket node
    backend = sgx.EpcBackend(node)
    devices = backend.devices()
    assert len(devices) == sgx.DEFAULT_MAX_EPC_MIB
    assert {d.numa_node for d in devices} == {0}  # node 0 fills the cap first
    size = api_pb2.ListAndWatchResponse(devices=[d.to_proto() for d in devices]).ByteSize()
    assert size < 2 * 1024 * 1024, size
    small = sgx.EpcBackend(sgx.SgxNode(node.enclave, node.provision, short_tmp, {0: 3, 1: 2})).devices()
    assert [(d.id, d.numa_node) for d in small] == [("epc-0", 0), ("epc-1", 0), ("epc-2", 0),
                                                    ("epc-3", 1), ("epc-4", 1)]


def test_discovery(short_tmp):
    sys_root = short_tmp / "sys"
    for node, total in ((0, 64 << 20), (1, 32 << 20)):
        p = sys_root / f"devices/system/node/node{node}/x86"
        p.mkdir(parents=True)
        (p / "sgx_total_bytes").write_text(f"{total}\n")
    assert sgx.epc_from_sysfs(sys_root) == {0: 64, 1: 32}
    assert sgx.epc_from_sysfs(short_tmp / "empty") == {}
    assert sgx.epc_from_cpuid(short_tmp / "no-cpuid") == 0

    with pytest.raises(sgx.DiscoveryError, match="sgx_enclave is not a character device"):
        sgx.discover(short_tmp / "nodev", sys_root)
    dev = fake_dev_node(short_tmp)
    node = sgx.discover(dev, sys_root)
    assert node.epc_mib_by_numa == {0: 64, 1: 32} and not node.simulate
    assert sgx.discover(dev, sys_root, epc_mib=10).epc_mib_by_numa == {-1: 10}
    if sgx.epc_from_cpuid() == 0:  # this machine has no SGX / no cpuid driver: the error names the fix
        with pytest.raises(sgx.DiscoveryError, match="--epc-mib"):
            sgx.discover(dev, short_tmp / "empty")


def test_command_waits_for_kubelet_registers_and_stops_cleanly_on_sigterm(short_tmp):
    import signal
    import subprocess
    import sys

    plugin_dir = short_tmp / "plugins"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quotehelper.cli", "device-plugin", "--simulate", "--plugin-dir", str(plugin_dir),
         "--platform", str(short_tmp / "sim" / "platform"), "--aesmd-dir", str(short_tmp / "aesmd"),
         "--epc-mib", "8", "--enclave-limit", "2", "--provision-limit", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kubelet = FakeKubelet(plugin_dir)
    try:
        # kubelet comes up after the plugin: registration happens when kubelet.sock appears.
        wait_for(lambda: len([p for p in plugin_dir.glob("*.sock")]) == 3 or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read()
        kubelet.start()
        regs = kubelet.wait_registrations(3, timeout=30)
        got = kubelet.allocate(regs[sgx.PROVISION_RESOURCE], "sgx-provision-1")
        platform = str((short_tmp / "sim" / "platform").absolute())
        assert [(m.container_path, m.read_only) for m in got.mounts] == [
            (platform, True), (str((short_tmp / "sim" / "pki").absolute()), True)]
        # The attestation key exists already, so the read-only platform can quote.
        assert (Path(platform) / "attestation_key.sealed").is_file()
        assert len(kubelet.first_devices(regs[sgx.EPC_RESOURCE])) == 8
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "signal 15: shutting down" in proc.stderr.read()
        assert list(plugin_dir.glob("quotehelper-*.sock")) == []  # its sockets removed, kubelet's kept
        assert (plugin_dir / "kubelet.sock").is_socket()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kubelet.stop()


def test_command_refuses_a_node_without_sgx(short_tmp):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "quotehelper.cli", "device-plugin", "--dev-root",
                        str(short_tmp / "nodev"), "--plugin-dir", str(short_tmp / "p")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "sgx_enclave is not a character device" in r.stderr and "--simulate" in r.stderr
