"""A fake kubelet for device-plugin tests: a real gRPC Registration server on `<dir>/kubelet.sock`, and
the calls kubelet makes back to a registered plugin (over the plugin's own Unix socket)."""

from __future__ import annotations

import contextlib
import queue
import time
from concurrent import futures
from pathlib import Path

import grpc

from quotehelper.k8s.deviceplugin import api_pb2, api_pb2_grpc


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, sink: queue.Queue) -> None:
        self.sink = sink

    def Register(self, request, context):  # noqa: N802
        if request.version != "v1beta1":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version}")
        self.sink.put(request)
        return api_pb2.Empty()


class FakeKubelet:
    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / "kubelet.sock"
        self.registered: queue.Queue[api_pb2.RegisterRequest] = queue.Queue()
        self._server: grpc.Server | None = None

    def start(self) -> FakeKubelet:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self.registered), server)
        assert server.add_insecure_port(f"unix://{self.socket}") != 0
        server.start()
        self._server = server
        return self

    def stop(self, remove_sockets: bool = False) -> None:
        """Stops; with remove_sockets, does what a restarting kubelet does to the directory."""
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        if remove_sockets:
            for p in self.plugin_dir.iterdir():
                if p.is_socket():
                    p.unlink()

    def wait_registrations(self, n: int, timeout: float = 10.0) -> dict[str, api_pb2.RegisterRequest]:
        out: dict[str, api_pb2.RegisterRequest] = {}
        deadline = time.monotonic() + timeout
        while len(out) < n:
            req = self.registered.get(timeout=max(0.01, deadline - time.monotonic()))
            out[req.resource_name] = req
        return out

    # --- kubelet -> plugin ---
    def channel(self, req: api_pb2.RegisterRequest) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.plugin_dir / req.endpoint}")

    def options(self, req: api_pb2.RegisterRequest) -> api_pb2.DevicePluginOptions:
        with self.channel(req) as ch:
            return api_pb2_grpc.DevicePluginStub(ch).GetDevicePluginOptions(api_pb2.Empty(), timeout=5)

    def first_devices(self, req: api_pb2.RegisterRequest) -> list[api_pb2.Device]:
        with self.channel(req) as ch:
            stream = api_pb2_grpc.DevicePluginStub(ch).ListAndWatch(api_pb2.Empty(), timeout=5)
            first = next(stream)
            stream.cancel()
            return list(first.devices)

    def allocate(self, req: api_pb2.RegisterRequest, *device_ids: str) -> api_pb2.ContainerAllocateResponse:
        with self.channel(req) as ch:
            resp = api_pb2_grpc.DevicePluginStub(ch).Allocate(
                api_pb2.AllocateRequest(container_requests=[
                    api_pb2.ContainerAllocateRequest(devices_ids=list(device_ids))]), timeout=5)
        assert len(resp.container_responses) == 1
        return resp.container_responses[0]


def kubelet_merge(*answers: api_pb2.ContainerAllocateResponse) -> api_pb2.ContainerAllocateResponse:
    """How kubelet combines the Allocate answers of a container's resources: per container path the
    first mount / device / env wins (and resources come in map order). Our grants must therefore agree
    wherever they overlap, which this asserts."""
    out = api_pb2.ContainerAllocateResponse()
    mounts: dict[str, api_pb2.Mount] = {}
    devices: dict[str, api_pb2.DeviceSpec] = {}
    for a in answers:
        for m in a.mounts:
            assert mounts.setdefault(m.container_path, m) == m, f"conflicting mounts at {m.container_path}"
        for d in a.devices:
            assert devices.setdefault(d.container_path, d) == d, f"conflicting devices at {d.container_path}"
        for k, v in a.envs.items():
            assert out.envs.setdefault(k, v) == v, f"conflicting env {k}"
    out.mounts.extend(mounts.values())
    out.devices.extend(devices.values())
    return out
