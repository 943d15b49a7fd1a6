"""A node, end to end, the way kubelet would run it. The device plugin answers a fake kubelet over gRPC;
the quote service runs as the quote-helper DaemonSet's pod would (its own mount namespace holding the
enclave + provision grants, merged as kubelet merges them, and its own mount of the host socket
directory); an application "pod" gets exactly the Allocate answer for EPC and quotes through the
mounted socket; the service's health probe runs inside its pod. Root is needed for the namespaces."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from quotehelper.aesm.launch import ServiceProcess, wait_for_socket
from quotehelper.errors import QuoteHelperError
from quotehelper.k8s.deviceplugin import api_pb2, framework, sgx
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.verify import Collateral, TrustAnchor, verify_quote
from tests.k8s.kubelet import FakeKubelet, kubelet_merge

SERVICE_SOCKET_DIR = "/run/quotehelper-socket"  # as in deploy/base/quote-helper.yaml


def namespaces_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("mount") is not None


def pod_argv(alloc: api_pb2.ContainerAllocateResponse, argv: list[str]) -> list[str]:
    """What kubelet + the runtime do with an Allocate answer, minus the image: a private mount namespace
    with a fresh /run (so the host's sockets are not visible), each Mount and DeviceSpec bind-mounted at
    its container path (read-only where asked), and an environment holding only the Allocate envs."""
    lines = ["set -eu", "mount --make-rprivate /", "mount -t tmpfs -o mode=0755 pod-run /run"]
    binds = [(m.host_path, m.container_path, m.read_only) for m in alloc.mounts]
    binds += [(d.host_path, d.container_path, "w" not in d.permissions) for d in alloc.devices]
    for host, container, ro in binds:
        q_host, q_cont = shlex.quote(host), shlex.quote(container)
        lines.append(f"if [ -d {q_host} ]; then mkdir -p {q_cont}; else mkdir -p $(dirname {q_cont}); touch {q_cont}; fi")
        lines.append(f"mount --bind {q_host} {q_cont}")
        if ro:
            lines.append(f"mount -o remount,bind,ro {q_cont}")
    env = ["PATH=/usr/bin:/bin", "HOME=/nonexistent"] + [f"{k}={v}" for k, v in sorted(alloc.envs.items())]
    lines.append("exec env -i " + " ".join(map(shlex.quote, env + argv)))
    return ["unshare", "--mount", "--", "sh", "-c", "\n".join(lines)]


def run_in_pod(alloc: api_pb2.ContainerAllocateResponse, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(pod_argv(alloc, argv), capture_output=True, text=True, timeout=120)


@dataclass
class Node:
    root: Path
    plat: SimPlatform
    grants: dict[str, api_pb2.ContainerAllocateResponse]
    service_pod: api_pb2.ContainerAllocateResponse | None  # None: the service runs on the host

    @property
    def host_socket(self) -> str:
        return str(self.root / "aesmd" / "aesm.socket")


def allocate_everything(root: Path, plat: SimPlatform) -> dict[str, api_pb2.ContainerAllocateResponse]:
    """The device plugin (simulation mode), registered with a fake kubelet: its answer per resource."""
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


@pytest.fixture(scope="module")
def node():
    root = Path(tempfile.mkdtemp(prefix="qh-node-"))
    (root / "aesmd").mkdir()
    plat = sgx.prepare_simulated_platform(root / "platform")  # what `device-plugin --simulate` does
    grants = allocate_everything(root, plat)
    service_pod = None
    if namespaces_available():
        # The quote-helper pod: enclave + provision grants, plus its own hostPath socket directory.
        service_pod = kubelet_merge(grants[sgx.ENCLAVE_RESOURCE], grants[sgx.PROVISION_RESOURCE])
        service_pod.mounts.add(container_path=SERVICE_SOCKET_DIR, host_path=str(root / "aesmd"))
        log = (root / "service.log").open("wb")
        proc = subprocess.Popen(
            pod_argv(service_pod, [sys.executable, "-m", "quotehelper.cli", "serve", "--engine", "sim",
                                   "--platform", str(plat.platform_dir), "--workers", "1",
                                   "--socket", f"{SERVICE_SOCKET_DIR}/aesm.socket"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        stop = lambda: proc.send_signal(signal.SIGTERM)  # noqa: E731 (exec chain: this pid is the service)
    else:
        svc = ServiceProcess(root / "aesmd" / "aesm.socket", plat.platform_dir, workers=1).start()
        proc, stop = svc.proc, svc.stop
    try:
        try:
            wait_for_socket(str(root / "aesmd" / "aesm.socket"), 30, proc)
        except QuoteHelperError as e:
            log_file = root / "service.log"
            pytest.fail(f"{e}: {log_file.read_text()[-2000:] if log_file.exists() else ''}")
        yield Node(root, plat, grants, service_pod)
    finally:
        stop()
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(root, ignore_errors=True)


def health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quotehelper.cli", "health", *args], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "SGX_AESM_ADDR"})


def test_health_passes_only_when_a_self_test_quote_verifies(node, tmp_path):
    sock, platform = node.host_socket, str(node.plat.platform_dir)
    ok = health("--socket", sock, "--platform", platform)
    assert ok.returncode == 0, ok.stderr
    assert "self-test quote verified (UpToDate)" in ok.stdout
    hw = health("--socket", sock, "--engine", "dcap")
    assert hw.returncode == 0 and "no self-test quote" in hw.stdout

    # Nothing listening: unhealthy, and the reason names the step and the socket.
    gone = health("--socket", str(tmp_path / "nothing.socket"), "--platform", platform)
    assert gone.returncode == 1 and "init_quote_ex(probe)" in gone.stderr and "nothing.socket" in gone.stderr
    # A stale socket file nobody serves.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.socket"))
    stale.close()
    assert health("--socket", str(tmp_path / "stale.socket"), "--engine", "dcap").returncode == 1
    # The service quotes for another CPU than the self-test enclave's: its report MAC cannot match.
    other = SimPlatform.create(tmp_path / "other" / "platform")
    bad = health("--socket", sock, "--platform", str(other.platform_dir))
    assert bad.returncode == 1 and "get_quote_ex" in bad.stderr


POD_PROGRAM = textwrap.dedent("""
    import sys
    from quotehelper.aesm.client import provider_from_env
    from quotehelper.platform.sim import SimPlatform, default_platform_dir
    # Only what Allocate gave this process: SGX_AESM_ADDR (out-of-process) and the platform location.
    provider = provider_from_env(deadline=float(sys.argv[1]))
    assert provider.mode == "out-of-process", provider.mode
    plat = SimPlatform.open(default_platform_dir())
    report = plat.enclave(mr_enclave=bytes(range(32))).report(provider.target_info(), b"pod nonce " + bytes(54))
    sys.stdout.write(provider.get_quote(report).hex())
""")


def needs_namespaces() -> None:
    if not namespaces_available():
        pytest.skip("needs root and util-linux unshare/mount: mount namespaces and bind mounts, as "
                    "kubelet's container runtime does")


def test_app_pod_quotes_through_the_allocated_socket(node):
    needs_namespaces()
    # The app pod asked for EPC; the webhook also gave it the enclave resource: kubelet merges both.
    alloc = kubelet_merge(node.grants[sgx.EPC_RESOURCE], node.grants[sgx.ENCLAVE_RESOURCE])
    assert "/var/run/aesmd" in {m.container_path for m in alloc.mounts}

    pod = run_in_pod(alloc, [sys.executable, "-c", POD_PROGRAM, "20"])
    assert pod.returncode == 0, pod.stderr
    quote = bytes.fromhex(pod.stdout)
    body = parse_quote(quote).report_body
    assert body.mr_enclave == bytes(range(32)) and body.report_data.startswith(b"pod nonce ")
    coll = Collateral.from_dcap_qvl_json(node.plat.collateral().to_dcap_qvl_json())
    verdict = verify_quote(quote, coll, trusted_roots=(TrustAnchor.from_bytes(node.plat.root_ca_der()),))
    assert verdict.valid, verdict.error

    # Control: the same pod without the socket mount cannot reach the service (its /run is fresh), so
    # the allocated mount is what works.
    no_socket = api_pb2.ContainerAllocateResponse()
    no_socket.CopyFrom(alloc)
    del no_socket.mounts[:]
    no_socket.mounts.extend(m for m in alloc.mounts if m.container_path != "/var/run/aesmd")
    failed = run_in_pod(no_socket, [sys.executable, "-c", POD_PROGRAM, "0.5"])
    assert failed.returncode != 0 and "SERVICE_UNAVAILABLE" in failed.stderr


def test_service_pod_runs_on_a_read_only_platform_and_its_probe_passes_inside(node):
    """The quote service above runs in its pod with the platform and PKI read-only (as granted); its
    startup/liveness/readiness command, run in the same mounts, passes; and the pod could not write."""
    needs_namespaces()
    assert node.service_pod is not None
    ro = {m.container_path: m.read_only for m in node.service_pod.mounts}
    assert ro[str(node.plat.platform_dir)] and ro[str(node.plat.pki_dir)] and not ro[SERVICE_SOCKET_DIR]
    probe = run_in_pod(node.service_pod, [sys.executable, "-m", "quotehelper.cli", "health",
                                          "--socket", f"{SERVICE_SOCKET_DIR}/aesm.socket",
                                          "--platform", str(node.plat.platform_dir)])
    assert probe.returncode == 0, probe.stderr
    assert "self-test quote verified (UpToDate)" in probe.stdout
    write = run_in_pod(node.service_pod, ["/bin/sh", "-c", f"touch {node.plat.platform_dir}/x"])
    assert write.returncode != 0 and "Read-only file system" in write.stderr


APP_LOOP = textwrap.dedent("""
    import json, os, sys
    from quotehelper.aesm.client import provider_from_env
    from quotehelper.platform.sim import SimPlatform, default_platform_dir
    provider = provider_from_env(deadline=30.0)
    plat = SimPlatform.open(default_platform_dir())
    enclave = plat.enclave(mr_enclave=bytes(range(32)))
    n = 0
    while not os.path.exists(sys.argv[1]):
        provider.get_quote(enclave.report(provider.target_info(), n.to_bytes(8, "little")))
        n += 1
    print(json.dumps({"quotes": n, "retries": provider.retries, "reasons": dict(provider.retry_reasons)}))
""")


def _with_socket_dir(alloc: api_pb2.ContainerAllocateResponse, container_path: str,
                     host_dir: Path) -> api_pb2.ContainerAllocateResponse:
    """`alloc` with the socket directory at `container_path` bound to `host_dir` instead."""
    out = api_pb2.ContainerAllocateResponse()
    out.CopyFrom(alloc)
    del out.mounts[:]
    out.mounts.extend(m for m in alloc.mounts if m.container_path != container_path)
    out.mounts.add(container_path=container_path, host_path=str(host_dir), read_only=container_path != SERVICE_SOCKET_DIR)
    return out


def test_daemonset_update_by_take_over_between_pods_with_an_app_pod_quoting(node, tmp_path):
    """The DaemonSet's update path with the pods' real mounts: a surge pod's service takes the socket
    over from the running pod's through the shared host directory (rename seen through the app's
    read-only bind mount, flock across mount namespaces), the old pod gets SIGTERM and exits, and an app
    pod quoting all along never retries."""
    needs_namespaces()
    assert node.service_pod is not None
    host_dir = tmp_path / "aesmd"
    host_dir.mkdir()
    host_socket = str(host_dir / "aesm.socket")
    service_pod = _with_socket_dir(node.service_pod, SERVICE_SOCKET_DIR, host_dir)
    app_pod = _with_socket_dir(kubelet_merge(node.grants[sgx.EPC_RESOURCE], node.grants[sgx.ENCLAVE_RESOURCE]),
                               "/var/run/aesmd", host_dir)
    serve = [sys.executable, "-m", "quotehelper.cli", "serve", "--engine", "sim", "--platform",
             str(node.plat.platform_dir), "--workers", "1", "--take-over", "--socket",
             f"{SERVICE_SOCKET_DIR}/aesm.socket"]
    procs: list[subprocess.Popen] = []

    def start_pod(argv: list[str], alloc: api_pb2.ContainerAllocateResponse, **kw: object) -> subprocess.Popen:
        p = subprocess.Popen(pod_argv(alloc, argv), stdin=subprocess.DEVNULL, **kw)
        procs.append(p)
        return p

    try:
        old = start_pod(serve, service_pod, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_socket(host_socket, 30, old)
        stop_file = tmp_path / "stop"
        app = start_pod([sys.executable, "-c", APP_LOOP, str(stop_file)], app_pod, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        ino = os.stat(host_socket).st_ino
        new = start_pod(serve, service_pod, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while os.stat(host_socket).st_ino == ino:  # the surge pod's service published its socket
            assert new.poll() is None and time.monotonic() < deadline, "no take-over"
            time.sleep(0.02)
        time.sleep(0.5)
        old.send_signal(signal.SIGTERM)  # the DaemonSet deletes the old pod once the new one is ready
        assert old.wait(30) == 0
        assert os.path.exists(host_socket)  # the old service left the new socket alone
        time.sleep(0.5)
        stop_file.touch()
        out, err = app.communicate(timeout=60)
        assert app.returncode == 0, err
        result = json.loads(out)
        assert result["quotes"] > 10 and result["retries"] == 0, result
        new.send_signal(signal.SIGTERM)
        assert new.wait(30) == 0
        assert not os.path.exists(host_socket) and not os.path.exists(host_socket + ".lock")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
