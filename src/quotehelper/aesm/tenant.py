"""Who is asking: a connection's tenant, from the kernel, cheaply enough for the accept path.

SO_PEERCRED gives the peer's (pid, uid, gid) as of connect(), in this process's pid namespace (pid 0 when
the peer is in a namespace we cannot see: the service then needs `hostPID` to see pods). In "pod" mode
the pid's `/proc/PID/cgroup` names its pod and container, for containerd and CRI-O, cgroup v1 and v2,
systemd and cgroupfs drivers:

    0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
    0::/kubepods/besteffort/pod<uid>/<id>                        (cgroupfs driver, containerd)
    0::/kubepods/burstable/pod<uid>/crio-<id>                    (cgroupfs driver, CRI-O)
    11:memory:/kubepods/pod<uid>/<id>                            (cgroup v1: one line per hierarchy)

Costs (measured): getsockopt(SO_PEERCRED) ~1 us; reading /proc/PID/cgroup ~13 us, so a peer's
(pid, uid, gid) is remembered for `CRED_TTL` seconds and a cgroup path's parse for the process's life;
nothing here waits on disk or network. The pod's namespace and name are not in the cgroup: they come
from kubelet's log directories (`/var/log/pods/<namespace>_<name>_<uid>`), listed at most once per
second when an unknown pod appears; without them a pod is known by UID only.

A pid reused within CRED_TTL by a process in another cgroup with the same uid and gid would be taken for
the previous one; pids are allocated cyclically, so that needs the whole pid space to wrap in that time.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from quotehelper.aesm.options import ServeOptions

log = logging.getLogger(__name__)

CRED_TTL = 2.0  # seconds a (pid, uid, gid) keeps its tenant without re-reading /proc/PID/cgroup
CRED_CACHE_MAX = 4096  # entries; cleared when full (re-reading costs ~13 us a peer)
PODS_REFRESH = 1.0  # seconds between listings of the pods log directory
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

# A pod UID: a UUID with dashes (cgroupfs) or underscores (systemd slice names), or a static pod's 32 hex.
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32})"
                  r"(?:\.slice)?(?:/|$)")
# The container: the last path component, a 64-hex ID with the runtime's prefix (systemd) or bare.
_CONTAINER = re.compile(r"/(?:(cri-containerd|crio|crio-conmon|docker|containerd)-)?([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class CgroupIdentity:
    """What a cgroup path says: the pod UID (dashed form) and container ID, when it says them."""

    pod_uid: str | None = None
    container_id: str | None = None
    runtime: str | None = None  # "containerd", "crio", "docker", or None (cgroupfs paths do not say)


@functools.lru_cache(maxsize=1024)
def identity_from_path(path: str) -> CgroupIdentity:
    """One cgroup path (as in /proc/PID/cgroup, possibly relative to a cgroup namespace: `/../..`)."""
    pod = _POD.search(path)
    cont = _CONTAINER.search(path)
    pod_uid = pod.group(1).replace("_", "-") if pod else None
    runtime = None
    if cont and cont.group(1):
        runtime = {"cri-containerd": "containerd", "crio-conmon": "crio"}.get(cont.group(1), cont.group(1))
    return CgroupIdentity(pod_uid, cont.group(2) if cont else None, runtime)


def identity_from_cgroup(text: str) -> CgroupIdentity:
    """The contents of /proc/PID/cgroup -> identity. The v2 line (`0::`) is preferred; on v1 the first
    hierarchy that names a pod (they normally all agree)."""
    best = CgroupIdentity()
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        ident = identity_from_path(path)
        if ident.pod_uid or ident.container_id:
            if not controllers:
                return ident
            if best.pod_uid is None and (ident.pod_uid or best.container_id is None):
                best = ident
    return best


def read_cgroup(pid: int) -> str | None:
    """/proc/PID/cgroup, or None when the process is gone or invisible (pid 0: another pid namespace)."""
    if pid <= 0:
        return None
    try:
        fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


class PodNames:
    """Pod UID -> (namespace, name), from kubelet's pod log directories `<namespace>_<name>_<uid>`."""

    def __init__(self, directory: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.clock = clock
        self.names: dict[str, tuple[str, str]] = {}
        self._listed = -PODS_REFRESH

    def lookup(self, pod_uid: str) -> tuple[str, str] | None:
        hit = self.names.get(pod_uid)
        if hit is None and self.clock() - self._listed >= PODS_REFRESH:
            self.refresh()
            hit = self.names.get(pod_uid)
        return hit

    def refresh(self) -> None:
        self._listed = self.clock()
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return
        names = {}
        for e in entries:
            parts = e.split("_")  # namespaces and pod names are DNS labels: no "_" in them
            if len(parts) == 3:
                names[parts[2]] = (parts[0], parts[1])
        self.names = names


class Tenant:
    """One tenant's identity and, in each worker, its live counts (connections held, engine calls queued)
    and cumulative statistics (for metrics and logs)."""

    __slots__ = ("key", "label", "uid", "gid", "pod_uid", "container_id", "namespace", "pod", "denied",
                 "conns", "queued", "requests", "errors", "busy", "refused", "dropped", "wait_sum",
                 "wait_count", "last_seen", "log_at", "waiting")

    def __init__(self, key: str, label: str, uid: int = -1, gid: int = -1, *, pod_uid: str | None = None,
                 container_id: str | None = None, namespace: str | None = None, pod: str | None = None,
                 denied: bool = False) -> None:
        self.key = key  # stable identity (pod UID, uid, ...)
        self.label = label  # human form for logs and metrics ("namespace/name", "uid:1000")
        self.uid, self.gid = uid, gid
        self.pod_uid, self.container_id, self.namespace, self.pod = pod_uid, container_id, namespace, pod
        self.denied = denied
        self.conns = 0  # connections held by the server (not the ones answered at accept)
        self.queued = 0  # engine calls in the fair queue
        self.requests = self.errors = self.busy = self.refused = 0
        self.dropped: dict[str, int] = {}  # reason -> connections closed unanswered because of this tenant's caps
        self.wait_sum = 0.0  # seconds engine calls waited in the queue
        self.wait_count = 0
        self.last_seen = 0.0
        self.log_at = 0.0  # when this tenant's last rate-limited log line was written
        self.waiting = 0  # accepted connections waiting in the server's per-tenant queue

    def describe(self) -> str:
        """For log lines: label plus what the kernel said."""
        bits = [self.label]
        if self.uid >= 0:
            bits.append(f"uid={self.uid} gid={self.gid}")
        if self.pod_uid:
            bits.append(f"pod_uid={self.pod_uid}")
        if self.container_id:
            bits.append(f"container={self.container_id[:12]}")
        return " ".join(bits)

    def __repr__(self) -> str:
        return f"Tenant({self.describe()})"


class TenantMix:
    """Whether tenants take turns: `seen(tenant, now)` on each arrival (callers skip it while `tenant is
    last`, the common case of one client); `active(now)` within `WINDOW` seconds of an arrival from
    another tenant than the one before. Used by the server (connections, loop time) and the responder
    (requests, perf_counter), each with its own clock; denied tenants are not passed in."""

    WINDOW = 1.0
    __slots__ = ("last", "at")

    def __init__(self) -> None:
        self.last: Tenant | None = None
        self.at = float("-inf")  # when an arrival last came from another tenant than the one before

    def seen(self, tenant: Tenant, now: float) -> None:
        if tenant is not self.last:
            if self.last is not None:
                self.at = now
            self.last = tenant

    def active(self, now: float) -> bool:
        return now - self.at < self.WINDOW


class TenantRegistry:
    """Maps a connected socket to its Tenant, per worker. `identify(sock)` costs ~1.5 us on a cache hit."""

    MAX_TENANTS = 4096  # idle tenants beyond this are forgotten (their statistics fold into "other")

    def __init__(self, options: ServeOptions, *, clock: Callable[[], float] = time.monotonic,
                 read_cgroup: Callable[[int], str | None] = read_cgroup,
                 pod_names: PodNames | None = None) -> None:
        self.options = options
        self.mode = options.tenant_by
        self.clock = clock
        self._read_cgroup = read_cgroup
        self.pod_names = pod_names or PodNames(options.pods_log_dir, clock)
        self.tenants: dict[tuple[str, bool], Tenant] = {}
        self.forgotten = Tenant("other", "other")  # statistics of tenants dropped from the table
        self._creds: dict[bytes, tuple[Tenant, float]] = {}
        self._acl = options.access_control
        self._everyone = Tenant("all", "all")

    def identify(self, sock: socket.socket) -> Tenant:
        if self.mode == "none" and not self._acl:
            return self._everyone
        try:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            cred = _UCRED.pack(0, -1, -1)
        hit = self._creds.get(cred)
        now = self.clock()
        if hit is not None and hit[1] > now:
            return hit[0]
        tenant = self._resolve(*_UCRED.unpack(cred))
        if len(self._creds) >= CRED_CACHE_MAX:
            self._creds.clear()
        self._creds[cred] = (tenant, now + CRED_TTL)
        return tenant

    def _resolve(self, pid: int, uid: int, gid: int) -> Tenant:
        ident = CgroupIdentity()
        names = None
        if self.mode == "pod":
            text = self._read_cgroup(pid)
            if text:
                ident = identity_from_cgroup(text)
            if ident.pod_uid:
                names = self.pod_names.lookup(ident.pod_uid)
        if self.mode == "none":
            key, label = "all", "all"
        elif ident.pod_uid:
            key = "pod:" + ident.pod_uid
            label = f"{names[0]}/{names[1]}" if names else key
        elif ident.container_id:
            key = label = "container:" + ident.container_id[:12]
        else:
            key = label = f"uid:{uid}"
        denied = self._denied(uid, gid, ident.pod_uid, names)
        t = self.tenants.get((key, denied))
        if t is None:
            if len(self.tenants) >= self.MAX_TENANTS:
                self._forget_idle()
            t = Tenant(key, label + (" (denied)" if denied else ""), uid, gid, pod_uid=ident.pod_uid,
                       container_id=ident.container_id, namespace=names[0] if names else None,
                       pod=names[1] if names else None, denied=denied)
            self.tenants[(key, denied)] = t
        elif names and t.namespace is None:  # the pod's name appeared after its first connection
            t.namespace, t.pod = names
            t.label = label + (" (denied)" if denied else "")
        return t

    def _denied(self, uid: int, gid: int, pod_uid: str | None, names: tuple[str, str] | None) -> bool:
        o = self.options
        if not self._acl:
            return False
        ns = names[0] if names else None
        pod = f"{names[0]}/{names[1]}" if names else None
        if uid in o.deny_uids or gid in o.deny_gids or (ns is not None and ns in o.deny_namespaces) \
                or (pod_uid is not None and pod_uid in o.deny_pods) or (pod is not None and pod in o.deny_pods):
            return True
        if o.allow_uids or o.allow_gids or o.allow_namespaces:
            return not (uid in o.allow_uids or gid in o.allow_gids or (ns is not None and ns in o.allow_namespaces))
        return False

    def _forget_idle(self) -> None:
        """Drops tenants with nothing held, waiting or queued, oldest first, down to 3/4 of the table."""
        idle = sorted((t for t in self.tenants.values() if not t.conns and not t.queued and not t.waiting),
                      key=lambda t: t.last_seen)
        f = self.forgotten
        for t in idle[: len(self.tenants) - self.MAX_TENANTS * 3 // 4]:
            del self.tenants[(t.key, t.denied)]
            f.requests += t.requests
            f.errors += t.errors
            f.busy += t.busy
            f.refused += t.refused
            f.wait_sum += t.wait_sum
            f.wait_count += t.wait_count
            for r, n in t.dropped.items():
                f.dropped[r] = f.dropped.get(r, 0) + n
        self._creds.clear()

    def all(self) -> list[Tenant]:
        """Every tenant this worker knows, plus the forgotten ones' totals if any."""
        extra = [self.forgotten] if self.forgotten.requests or self.forgotten.dropped else []
        if self.mode == "none" and not self._acl:
            return [self._everyone]
        return list(self.tenants.values()) + extra
