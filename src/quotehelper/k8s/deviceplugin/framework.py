"""Reusable kubelet device-plugin machinery (API v1beta1), knowing nothing of SGX.

A `PluginBackend` says which devices exist (and whether they are healthy) and what Allocate grants; a
`PluginServer` serves one backend on its own Unix socket in kubelet's device-plugin directory; a
`PluginManager` registers every server with kubelet and keeps them registered: kubelet deletes every
socket in that directory when it restarts and creates a fresh `kubelet.sock`, so the manager polls both
and re-creates its servers and re-registers (fast: kubelet shows 0 allocatable until plugins return).
Split as in Intel's device-plugin framework: this module is the server, `sgx.py` is the policy.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import stat
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s.deviceplugin import api_pb2, api_pb2_grpc

log = logging.getLogger("quotehelper.k8s.deviceplugin")

API_VERSION = "v1beta1"
DEVICE_PLUGIN_PATH = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


class DevicePluginError(QuoteHelperError):
    """The plugin cannot serve or register (socket in use, kubelet refused, ...)."""


class AllocationError(DevicePluginError):
    """Allocate asked for a device this plugin does not have or that is unhealthy."""


@dataclass(frozen=True)
class DeviceState:
    """One device as ListAndWatch reports it."""

    id: str
    healthy: bool = True
    numa_node: int | None = None

    def to_proto(self) -> api_pb2.Device:
        dev = api_pb2.Device(ID=self.id, health=HEALTHY if self.healthy else UNHEALTHY)
        if self.numa_node is not None:
            dev.topology.nodes.add(ID=self.numa_node)
        return dev


class PluginBackend(Protocol):
    """What a concrete plugin supplies; everything else is this module's job."""

    resource_name: str  # "vendor-domain/resourcetype"
    endpoint: str  # socket file name inside the device-plugin directory

    def devices(self) -> list[DeviceState]:
        """The current device list; called on every health poll, so it must be cheap."""
        ...

    def allocate(self, device_ids: Sequence[str]) -> api_pb2.ContainerAllocateResponse:
        """What a container granted these (known, healthy) devices gets."""
        ...


def unix_target(path: Path) -> str:
    return f"unix://{path}"


def socket_is_served(path: Path) -> bool:
    """True if something accepts connections on the Unix socket at `path` (a live duplicate plugin)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, ctime) of a socket file, or None when it is missing. A recreated file may reuse the
    inode number, so the change time is part of the identity."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, server: PluginServer) -> None:
        self._s = server

    def GetDevicePluginOptions(self, request, context):  # noqa: N802 (gRPC method names)
        return self._s.options

    def ListAndWatch(self, request, context) -> Iterator[api_pb2.ListAndWatchResponse]:  # noqa: N802
        seen = -1
        while True:
            with self._s._cond:
                while self._s._version == seen and not self._s._closing and context.is_active():
                    self._s._cond.wait(timeout=1.0)
                if self._s._closing or not context.is_active():
                    return
                seen, response = self._s._version, self._s._response
            yield response

    def GetPreferredAllocation(self, request, context):  # noqa: N802
        out = api_pb2.PreferredAllocationResponse()
        healthy = self._s.healthy_ids()
        for req in request.container_requests:
            # The devices kubelet insists on, topped up with healthy available ones in its order.
            chosen = list(req.must_include_deviceIDs)
            for dev in req.available_deviceIDs:
                if len(chosen) >= req.allocation_size:
                    break
                if dev in healthy and dev not in chosen:
                    chosen.append(dev)
            out.container_responses.add(deviceIDs=chosen)
        return out

    def Allocate(self, request, context):  # noqa: N802
        out = api_pb2.AllocateResponse()
        for req in request.container_requests:
            try:
                out.container_responses.append(self._s.allocate(list(req.devices_ids)))
            except AllocationError as e:
                # The rule: push a fresh ListAndWatch update, then fail the whole call.
                self._s.refresh()
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return out

    def PreStartContainer(self, request, context):  # noqa: N802
        return api_pb2.PreStartContainerResponse()


class PluginServer:
    """One backend served on `<plugin_dir>/<backend.endpoint>`."""

    def __init__(self, backend: PluginBackend, plugin_dir: Path = DEVICE_PLUGIN_PATH, workers: int = 4) -> None:
        self.backend = backend
        self.plugin_dir = Path(plugin_dir)
        self.socket_path = self.plugin_dir / backend.endpoint
        self.options = api_pb2.DevicePluginOptions(pre_start_required=False,
                                                   get_preferred_allocation_available=True)
        self._workers = workers
        self._cond = threading.Condition()
        self._version = 0
        self._devices: list[DeviceState] = []
        self._response = api_pb2.ListAndWatchResponse()
        self._closing = False
        self._server: grpc.Server | None = None
        self._socket_id: tuple[int, int, int] | None = None
        self.refresh()

    # --- device state -------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-reads the backend's device list; wakes every ListAndWatch stream if it changed."""
        devices = self.backend.devices()
        with self._cond:
            if devices == self._devices and self._version:
                return False
            self._devices = devices
            # Built once per change, shared by every stream (EPC lists can hold tens of thousands).
            self._response = api_pb2.ListAndWatchResponse(devices=[d.to_proto() for d in devices])
            self._version += 1
            self._cond.notify_all()
        unhealthy = sum(not d.healthy for d in devices)
        log.info("%s: %d devices, %d unhealthy", self.backend.resource_name, len(devices), unhealthy)
        return True

    def healthy_ids(self) -> set[str]:
        with self._cond:
            return {d.id for d in self._devices if d.healthy}

    def allocate(self, device_ids: list[str]) -> api_pb2.ContainerAllocateResponse:
        if not device_ids:
            raise AllocationError(f"{self.backend.resource_name}: Allocate named no device")
        healthy = self.healthy_ids()
        bad = [d for d in device_ids if d not in healthy]
        if bad:
            raise AllocationError(f"{self.backend.resource_name}: unknown or unhealthy devices {bad[:5]}")
        return self.backend.allocate(device_ids)

    # --- serving ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            if socket_is_served(self.socket_path):
                raise DevicePluginError(f"{self.socket_path} is already served by another process")
            self.socket_path.unlink()
        with self._cond:
            self._closing = False
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers,
                                                        thread_name_prefix=self.backend.endpoint))
        api_pb2_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)
        if server.add_insecure_port(unix_target(self.socket_path)) == 0:
            raise DevicePluginError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server
        self._socket_id = _identity(self.socket_path)
        log.info("%s: serving on %s", self.backend.resource_name, self.socket_path)

    def socket_alive(self) -> bool:
        """False once kubelet (or anyone) removed or replaced our socket file."""
        return self._socket_id is not None and _identity(self.socket_path) == self._socket_id

    def stop(self, grace: float = 1.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self.socket_alive():
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self._socket_id = None

    def restart(self) -> None:
        self.stop(grace=0)
        self.start()

    def register(self, kubelet_socket: Path, timeout: float = 5.0) -> None:
        """Register with kubelet; our server must already be serving (kubelet dials back at once)."""
        req = api_pb2.RegisterRequest(version=API_VERSION, endpoint=self.backend.endpoint,
                                      resource_name=self.backend.resource_name, options=self.options)
        with grpc.insecure_channel(unix_target(kubelet_socket)) as channel:
            try:
                api_pb2_grpc.RegistrationStub(channel).Register(req, timeout=timeout)
            except grpc.RpcError as e:
                raise DevicePluginError(
                    f"kubelet refused {self.backend.resource_name}: {e.code().name} {e.details()}") from e
        log.info("%s: registered with kubelet at %s", self.backend.resource_name, kubelet_socket)


class PluginManager:
    """Runs a set of plugin servers against one kubelet until `stop` is set."""

    def __init__(self, servers: Sequence[PluginServer], plugin_dir: Path = DEVICE_PLUGIN_PATH,
                 poll_interval: float = 1.0, health_interval: float = 5.0) -> None:
        self.servers = list(servers)
        self.kubelet_socket = Path(plugin_dir) / KUBELET_SOCKET
        self.poll_interval = poll_interval
        self.health_interval = health_interval
        self.registrations = 0  # successful Register calls, for tests and logs
        self._registered_with: tuple[int, int, int] | None = None

    def _ensure_registered(self) -> None:
        for srv in self.servers:
            if not srv.socket_alive():
                log.warning("%s: socket %s vanished (kubelet restart?); serving again",
                            srv.backend.resource_name, srv.socket_path)
                srv.restart()
                self._registered_with = None
        kubelet = _identity(self.kubelet_socket)
        if kubelet is None:  # kubelet is (re)starting: register with whatever socket comes next
            self._registered_with = None
            return
        if kubelet == self._registered_with:
            return
        try:
            for srv in self.servers:
                srv.register(self.kubelet_socket)
                self.registrations += 1
        except DevicePluginError as e:
            log.warning("registration failed, retrying: %s", e)
            return
        self._registered_with = kubelet

    def run(self, stop: threading.Event) -> None:
        for srv in self.servers:
            srv.start()
        try:
            since_health = 0.0
            while not stop.is_set():
                self._ensure_registered()
                since_health += self.poll_interval
                if since_health >= self.health_interval:
                    since_health = 0.0
                    for srv in self.servers:
                        srv.refresh()
                stop.wait(self.poll_interval)
        finally:
            for srv in self.servers:
                srv.stop()
            log.info("device plugin stopped")

