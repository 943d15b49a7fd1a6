"""Recorded /proc/PID/cgroup contents of Kubernetes pods' processes, per runtime, cgroup driver and
cgroup version, with the identity each must map to (canned data for test_tenant.py and test_multitenant.py).

Shapes as kubelet and the runtimes write them: the systemd driver names slices with the pod UID's dashes
turned into underscores and the container scope `cri-containerd-<id>.scope` / `crio-<id>.scope`; the
cgroupfs driver uses `/kubepods/<qos>/pod<uid>/<id>` (CRI-O: `crio-<id>`); Guaranteed pods have no QoS
level; cgroup v1 lists one line per hierarchy (and `0::/` on hybrid hosts).
"""

from __future__ import annotations

POD = "7d0b4b3e-5c1f-4c1a-9a51-2f0e3c8b9d12"
POD_ = POD.replace("-", "_")
CID = "4f1c2e9b8a7d6c5b4a3928171605f4e3d2c1b0a99887766554433221100ffee0"
STATIC_POD = "5e1f8b1d1f0c4a7f9f4be6c1d2a3b4c5"  # a static pod's UID: the manifest's hash, no dashes


def _v1(path: str) -> str:
    ctrls = ["misc", "rdma", "pids", "hugetlb", "net_cls,net_prio", "perf_event", "cpuset", "memory",
             "freezer", "blkio", "devices", "cpu,cpuacct"]
    lines = [f"{13 - i}:{c}:{path}" for i, c in enumerate(ctrls)]
    return "\n".join([*lines, f"1:name=systemd:{path}", "0::/"]) + "\n"


# (id, /proc/PID/cgroup text, pod UID, container ID, runtime)
RECORDED = [
    ("containerd-systemd-v2-burstable",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/cri-containerd-{CID}.scope\n",
     POD, CID, "containerd"),
    ("containerd-systemd-v2-guaranteed",
     f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{CID}.scope\n", POD, CID, "containerd"),
    ("containerd-cgroupfs-v2-besteffort", f"0::/kubepods/besteffort/pod{POD}/{CID}\n", POD, CID, None),
    ("containerd-systemd-v1",
     _v1(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/cri-containerd-{CID}.scope"),
     POD, CID, "containerd"),
    ("containerd-cgroupfs-v1-guaranteed", _v1(f"/kubepods/pod{POD}/{CID}"), POD, CID, None),
    ("crio-systemd-v2-burstable",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/crio-{CID}.scope\n",
     POD, CID, "crio"),
    ("crio-cgroupfs-v2", f"0::/kubepods/burstable/pod{POD}/crio-{CID}\n", POD, CID, "crio"),
    ("crio-systemd-v1",
     _v1(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/crio-{CID}.scope"),
     POD, CID, "crio"),
    ("crio-cgroupfs-v1", _v1(f"/kubepods/besteffort/pod{POD}/crio-{CID}"), POD, CID, "crio"),
    # Seen from a service in its own cgroup namespace: paths relative to its root.
    ("containerd-systemd-v2-cgroupns",
     f"0::/../../kubepods-besteffort-pod{POD_}.slice/cri-containerd-{CID}.scope\n", POD, CID, "containerd"),
    # kind / nested kubelet: the slices carry a kubelet- prefix.
    ("containerd-systemd-v2-kind",
     f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{POD_}.slice/cri-containerd-{CID}.scope\n", POD, CID, "containerd"),
    ("static-pod-cgroupfs-v2", f"0::/kubepods/burstable/pod{STATIC_POD}/{CID}\n", STATIC_POD, CID, None),
    ("docker-no-pod", f"0::/system.slice/docker-{CID}.scope\n", None, CID, "docker"),
    ("host-service", "0::/system.slice/sshd.service\n", None, None, None),
    ("host-v1", _v1("/user.slice/user-1000.slice/session-3.scope"), None, None, None),
]
