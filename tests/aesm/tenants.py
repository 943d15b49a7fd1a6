"""Tenants as real processes: raw-socket clients (standard library only) run in forked children under a
chosen uid/gid and in a chosen cgroup v2 directory shaped like a Kubernetes pod's, so the service tells
them apart exactly as it would on a node. Used by test_multitenant.py and bench/fairness.py.

Client kinds (each returns a JSON-able dict):
- `polite`: one full quote (the frames given, each on a fresh connection) every `interval` seconds;
- `flood`: `conns` connections always in flight, each sending one frame and reading to EOF, repeated;
- `hold`: `conns` connections opened and kept open sending nothing; each one the server closes is reopened.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import selectors
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# --- replies ------------------------------------------------------------------------------------------


def _varint(b: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def reply_code(reply: bytes) -> int:
    """errorCode of an AESM reply frame (Response -> its one sub-message -> field 1), -1 if none/garbled."""
    try:
        if len(reply) < 4 or struct.unpack_from("<I", reply)[0] != len(reply) - 4:
            return -1
        _, i = _varint(reply, 4)  # the sub-message's tag
        _, i = _varint(reply, i)  # its length
        if reply[i] != 0x08:  # errorCode, field 1, always first
            return -1
        return _varint(reply, i + 1)[0]
    except IndexError:
        return -1


def roundtrip(path: str, frame: bytes, timeout: float = 20.0) -> bytes:
    """One exchange as libsgx_quote_ex makes it (SocketTransporter::transact): connect, send the frame,
    read the 4-byte length and that many bytes, close; it does not wait for the server's EOF. Returns
    what arrived (short if the server closed first, b"" on a socket error)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(frame)
        out = bytearray()
        want = 4
        while len(out) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if want == 4 and len(out) >= 4:
                want = 4 + struct.unpack_from("<I", out)[0]
        return bytes(out)
    except OSError:
        return b""
    finally:
        s.close()


# --- client kinds ---------------------------------------------------------------------------------------

def polite(path: str, frames: list[bytes], n: int, interval: float, delay: float = 0.0) -> dict[str, Any]:
    time.sleep(delay)
    ok, codes, lat = 0, [], []
    for _ in range(n):
        t0 = time.perf_counter()
        got = [reply_code(roundtrip(path, f)) for f in frames]
        lat.append((time.perf_counter() - t0) * 1000)
        if all(c == 0 for c in got):
            ok += 1
        else:
            codes.append(got)
        time.sleep(max(0.0, interval - (time.perf_counter() - t0)))
    return {"ok": ok, "failed": codes, "latency_ms": lat}


def flood(path: str, frames: list[bytes], conns: int, duration: float) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    stats = {"replies": 0, "busy": 0, "other_codes": 0, "closed": 0, "connect_errors": 0}
    bufs: dict[socket.socket, bytearray] = {}
    k = 0

    def start() -> None:
        nonlocal k
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5.0)
        try:
            s.connect(path)
            s.sendall(frames[k % len(frames)])
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            time.sleep(0.001)
            return
        k += 1
        s.setblocking(False)
        bufs[s] = bytearray()
        sel.register(s, selectors.EVENT_READ)

    end = time.monotonic() + duration
    while len(bufs) < conns and time.monotonic() < end:
        start()
    while time.monotonic() < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                chunk = s.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                bufs[s] += chunk  # type: ignore[index]
                continue
            reply = bytes(bufs.pop(s))  # type: ignore[call-overload]
            sel.unregister(s)
            s.close()  # type: ignore[union-attr]
            code = reply_code(reply)
            if code == 0:
                stats["replies"] += 1
            elif code == 18:
                stats["busy"] += 1
            elif code < 0:
                stats["closed"] += 1
            else:
                stats["other_codes"] += 1
            start()
    stats["elapsed"] = duration
    for s in bufs:
        s.close()
    return stats


def hold(path: str, conns: int, duration: float) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    held: set[socket.socket] = set()
    stats = {"peak_held": 0, "reopened": 0, "connect_errors": 0}

    def open_one() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            return
        s.setblocking(False)
        held.add(s)
        sel.register(s, selectors.EVENT_READ)

    end = time.monotonic() + duration
    while len(held) < conns and time.monotonic() < end:
        open_one()
    stats["peak_held"] = len(held)
    while time.monotonic() < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            sel.unregister(s)
            held.discard(s)  # type: ignore[arg-type]
            s.close()  # type: ignore[union-attr]
            stats["reopened"] += 1
            open_one()
        stats["peak_held"] = max(stats["peak_held"], len(held))
    for s in held:
        s.close()
    return stats


# --- running a client as another tenant ------------------------------------------------------------------

class Child:
    """A forked client process; `result()` waits for its JSON."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid, self.fd = pid, fd

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        out = bytearray()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            if not r:
                break
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            out += chunk
        os.close(self.fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        d: dict[str, Any] = json.loads(out) if out else {"exception": "no result (timed out or crashed)"}
        if "exception" in d:
            raise AssertionError(f"client {self.pid} failed: {d['exception']}")
        return d


def spawn(fn: Callable[..., dict[str, Any]], *args: Any, uid: int | None = None, gid: int | None = None,
          cgroup: Path | None = None) -> Child:
    """Runs fn(*args) in a forked child that first joins `cgroup`, raises its fd limit, then drops to
    gid/uid. Fork (not exec) so the child needs no access to this interpreter's files after setuid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text("0")
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            if gid is not None:
                os.setgroups([])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
            data = json.dumps(fn(*args)).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data = json.dumps({"exception": repr(e)}).encode()
            code = 1
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(code)
    os.close(w)
    return Child(pid, r)


# --- pod-shaped cgroups -----------------------------------------------------------------------------------

def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


class PodCgroups:
    """Temporary cgroup v2 directories laid out as kubelet's systemd driver names them (containerd), under
    one test subtree; `unavailable` says why they cannot be made here (then tests fall back or skip)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.unavailable: str | None = None
        mount = cgroup2_mount()
        if os.geteuid() != 0:
            self.unavailable = "not root: cannot create cgroups or switch uids"
        elif mount is None:
            self.unavailable = "no cgroup v2 hierarchy mounted"
        else:
            root = Path(mount) / f"qh-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                root.mkdir()
                self.root = root
            except OSError as e:
                self.unavailable = f"cannot create a cgroup under {mount}: {e}"
        self._made: list[Path] = []

    def pod(self, pod_uid: str | None = None, container_id: str | None = None) -> tuple[Path, str]:
        """A fresh pod's container cgroup; returns (directory, pod UID)."""
        assert self.root is not None, self.unavailable
        pod_uid = pod_uid or str(uuid.uuid4())
        cid = container_id or uuid.uuid4().hex + uuid.uuid4().hex
        parts = ["kubepods.slice", "kubepods-besteffort.slice",
                 f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice", f"cri-containerd-{cid}.scope"]
        d = self.root
        for p in parts:
            d = d / p
            if not d.exists():
                d.mkdir()
                self._made.append(d)
        return d, pod_uid

    def close(self) -> None:
        for d in [*reversed(self._made), *([self.root] if self.root else [])]:
            for _ in range(50):  # a child that just exited may still be leaving the cgroup
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@contextlib.contextmanager
def pod_cgroups() -> Iterator[PodCgroups]:
    pc = PodCgroups()
    try:
        yield pc
    finally:
        pc.close()


def quote_frames(platform: Any) -> list[bytes]:
    """The three requests libsgx_quote_ex sends for one quote (InitQuoteEx, GetQuoteSizeEx, GetQuoteEx),
    for a report made on `platform` (a SimPlatform)."""
    from quotehelper.aesm.client import get_quote_ex_request, get_quote_size_ex_request, init_quote_ex_request
    from quotehelper.aesm.framing import encode_frame
    from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID as KID

    eng = platform.engine()
    eng.init_quote(KID)
    report = platform.enclave().report(eng.target_info(), b"tenant")
    reqs = (init_quote_ex_request(KID, 32), get_quote_size_ex_request(KID),
            get_quote_ex_request(report, eng.quote_size(KID), KID))
    return [encode_frame(r.SerializeToString()) for r in reqs]
