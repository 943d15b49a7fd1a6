"""A node, end to end, the way kubelet would run it: the quote service (a real child process), the device
plugin answering a fake kubelet over gRPC, and a "pod" process started in its own mount namespace with
exactly the mounts and envs of the plugin's Allocate answer, which gets a quote through the mounted
socket. Plus `quotehelper health` against the same service."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from quotehelper.aesm.launch import ServiceProcess
from quotehelper.k8s.deviceplugin import api_pb2, framework, sgx
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.verify import Collateral, TrustAnchor, verify_quote
from tests.k8s.kubelet import FakeKubelet


@pytest.fixture(scope="module")
def node():
    """A software platform, its quote service on <tmp>/aesmd/aesm.socket, stopped at the end."""
    root = Path(tempfile.mkdtemp(prefix="qh-node-"))
    plat = SimPlatform.create(root / "platform")
    (root / "aesmd").mkdir()
    svc = ServiceProcess(root / "aesmd" / "aesm.socket", plat.platform_dir, workers=1).start()
    try:
        yield root, plat
    finally:
        svc.stop()
        svc.kill()
        shutil.rmtree(root, ignore_errors=True)


def health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quotehelper.cli", "health", *args], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "SGX_AESM_ADDR"})


def test_health_passes_only_when_a_self_test_quote_verifies(node, tmp_path):
    root, plat = node
    sock = str(root / "aesmd" / "aesm.socket")
    ok = health("--socket", sock, "--platform", str(plat.platform_dir))
    assert ok.returncode == 0, ok.stderr
    assert "self-test quote verified (UpToDate)" in ok.stdout
    hw = health("--socket", sock, "--engine", "dcap")
    assert hw.returncode == 0 and "no self-test quote" in hw.stdout

    # Nothing listening: unhealthy, and the reason names the step and the socket.
    gone = health("--socket", str(tmp_path / "nothing.socket"), "--platform", str(plat.platform_dir))
    assert gone.returncode == 1 and "init_quote_ex(probe)" in gone.stderr and "nothing.socket" in gone.stderr
    # A stale socket file nobody serves.
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.socket"))
    stale.close()
    assert health("--socket", str(tmp_path / "stale.socket"), "--engine", "dcap").returncode == 1
    # The service quotes for another CPU than the self-test enclave's: its report MAC cannot match.
    other = SimPlatform.create(tmp_path / "other" / "platform")
    bad = health("--socket", sock, "--platform", str(other.platform_dir))
    assert bad.returncode == 1 and "get_quote_ex" in bad.stderr


POD_PROGRAM = textwrap.dedent("""
    import os, sys
    from quotehelper.aesm.client import provider_from_env
    from quotehelper.platform.sim import SimPlatform, default_platform_dir
    # Only what Allocate gave this process: SGX_AESM_ADDR (out-of-process) and the platform location.
    provider = provider_from_env(deadline=float(sys.argv[1]))
    assert provider.mode == "out-of-process", provider.mode
    plat = SimPlatform.open(default_platform_dir())
    report = plat.enclave(mr_enclave=bytes(range(32))).report(provider.target_info(), b"pod nonce " + bytes(54))
    sys.stdout.write(provider.get_quote(report).hex())
""")


def run_as_pod(alloc: api_pb2.ContainerAllocateResponse, program: str, *args: str) -> subprocess.CompletedProcess:
    """What kubelet + the runtime do with an Allocate answer, minus the image: a private mount namespace
    with a fresh /run (so the host's sockets are not visible), each Mount bind-mounted at its container
    path (remounted read-only where asked), each DeviceSpec bind-mounted likewise, and a clean
    environment holding only the Allocate envs (plus PATH)."""
    lines = ["set -eu", "mount --make-rprivate /", "mount -t tmpfs -o mode=0755 pod-run /run"]
    binds = [(m.host_path, m.container_path, m.read_only) for m in alloc.mounts]
    binds += [(d.host_path, d.container_path, "w" not in d.permissions) for d in alloc.devices]
    for host, container, ro in binds:
        q_host, q_cont = shlex.quote(host), shlex.quote(container)
        lines.append(f"[ -d {q_host} ] && mkdir -p {q_cont} || {{ mkdir -p $(dirname {q_cont}); touch {q_cont}; }}")
        lines.append(f"mount --bind {q_host} {q_cont}")
        if ro:
            lines.append(f"mount -o remount,bind,ro {q_cont}")
    env = ["PATH=/usr/bin:/bin", "HOME=/nonexistent"] + [f"{k}={v}" for k, v in sorted(alloc.envs.items())]
    lines.append("exec env -i " + " ".join(shlex.quote(e) for e in env) + " " +
                 f"{shlex.quote(sys.executable)} -c {shlex.quote(program)} " + " ".join(map(shlex.quote, args)))
    return subprocess.run(["unshare", "--mount", "--", "sh", "-c", "\n".join(lines)], capture_output=True,
                          text=True, timeout=120)


def needs_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mount namespaces and bind mounts, as kubelet's runtime does")
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("util-linux unshare/mount not installed")


@pytest.fixture(scope="module")
def allocations(node) -> dict[str, api_pb2.ContainerAllocateResponse]:
    """What the device plugin, registered with a fake kubelet, answers for each resource."""
    root, plat = node
    plugin_dir = Path(tempfile.mkdtemp(prefix="qh-kl-"))
    kubelet = FakeKubelet(plugin_dir).start()
    sim = sgx.simulated(plat.platform_dir, epc_mib=32, aesmd_dir=root / "aesmd", pki_dir=plat.pki_dir)
    manager = framework.PluginManager([framework.PluginServer(b, plugin_dir) for b in sgx.backends(sim)],
                                      plugin_dir, poll_interval=0.05)
    stop = threading.Event()
    t = threading.Thread(target=manager.run, args=(stop,), daemon=True)
    t.start()
    try:
        regs = kubelet.wait_registrations(3)
        return {sgx.EPC_RESOURCE: kubelet.allocate(regs[sgx.EPC_RESOURCE], "epc-0", "epc-1", "epc-2", "epc-3"),
                sgx.ENCLAVE_RESOURCE: kubelet.allocate(regs[sgx.ENCLAVE_RESOURCE], "sgx-enclave-0"),
                sgx.PROVISION_RESOURCE: kubelet.allocate(regs[sgx.PROVISION_RESOURCE], "sgx-provision-0")}
    finally:
        stop.set()
        t.join(10)
        kubelet.stop()
        shutil.rmtree(plugin_dir, ignore_errors=True)


def test_pod_in_its_own_mount_namespace_quotes_through_the_allocated_socket(node, allocations):
    needs_namespaces()
    root, plat = node
    alloc = allocations[sgx.EPC_RESOURCE]
    # The socket is reachable only through the allocated mount (the pod's /run is a fresh tmpfs).
    assert "/var/run/aesmd" in {m.container_path for m in alloc.mounts}

    pod = run_as_pod(alloc, POD_PROGRAM, "20")
    assert pod.returncode == 0, pod.stderr
    quote = bytes.fromhex(pod.stdout)
    body = parse_quote(quote).report_body
    assert body.mr_enclave == bytes(range(32)) and body.report_data.startswith(b"pod nonce ")
    verdict = verify_quote(quote, Collateral.from_dcap_qvl_json(plat.collateral().to_dcap_qvl_json()),
                           trusted_roots=(TrustAnchor.from_bytes(plat.root_ca_der()),))
    assert verdict.valid, verdict.error

    # Control: the same pod without the socket mount cannot reach the service (so the mount is what works).
    no_socket = api_pb2.ContainerAllocateResponse()
    no_socket.CopyFrom(alloc)
    del no_socket.mounts[:]
    no_socket.mounts.extend(m for m in alloc.mounts if m.container_path != "/var/run/aesmd")
    failed = run_as_pod(no_socket, POD_PROGRAM, "0.5")
    assert failed.returncode != 0 and "SERVICE_UNAVAILABLE" in failed.stderr


def test_quote_helper_pods_health_probe_with_its_allocated_grants(node, allocations):
    """The quote-helper DaemonSet's pod (simulate overlay): enclave + provision grants from the plugin
    (platform read-write, PKI read-only) and its own hostPath socket directory; its probe passes there."""
    needs_namespaces()
    root, plat = node
    pod = api_pb2.ContainerAllocateResponse()
    pod.MergeFrom(allocations[sgx.ENCLAVE_RESOURCE])
    pod.MergeFrom(allocations[sgx.PROVISION_RESOURCE])
    # Both grants name the platform: the runtime would refuse a duplicate mount point; keep the rw one.
    mounts = {m.container_path: m for m in pod.mounts}
    mounts[str(plat.platform_dir)] = next(m for m in allocations[sgx.PROVISION_RESOURCE].mounts
                                          if m.container_path == str(plat.platform_dir))
    mounts["/var/run/aesmd"] = api_pb2.Mount(container_path="/var/run/aesmd", host_path=str(root / "aesmd"))
    del pod.mounts[:]
    pod.mounts.extend(mounts.values())
    assert mounts[str(plat.pki_dir)].read_only
    probe = ("import sys; from quotehelper.cli import main; "
             "sys.argv = ['quotehelper', 'health', '--platform', sys.argv[1]]; main()")
    r = run_as_pod(pod, probe, str(plat.platform_dir))
    assert r.returncode == 0, r.stderr
    assert "self-test quote verified (UpToDate)" in r.stdout
