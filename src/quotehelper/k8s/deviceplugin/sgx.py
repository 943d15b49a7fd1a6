"""The SGX part of the device plugin: which SGX devices a node has, and what Allocate grants.

Three resources, each served by its own `framework.PluginServer`:
- `sgx.intel.com/enclave`, `sgx.intel.com/provision`: N shared virtual devices that all map to the one
  device node (a device-plugin device cannot be shared between containers; Intel's trick).
- `kubernetes.azure.com/sgx_epc_mem_in_MiB`: one device per MiB of EPC (the legacy AKS resource),
  capped so a ListAndWatch message stays far below kubelet's 4 MiB gRPC limit.
Containers granted enclave or EPC also get the AESM socket directory as a Mount and `SGX_AESM_ADDR=1`,
so pods reach the quote service without a hostPath volume (Pod Security "baseline" forbids those).

In simulation mode the "device" is the software platform's directory: it is mounted, read-only,
instead of the device nodes; provision adds the platform's test PKI (read-only) for the quote service.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s.deviceplugin import api_pb2
from quotehelper.k8s.deviceplugin.framework import DeviceState

# One definition of the resource names, the socket directory and the env var, shared with the webhook.
# sgx.intel.com/epc (bytes) is not served here: the webhook translates it.
from quotehelper.k8s.mutate import AESM_ADDR_ENV, AESMD_DIR
from quotehelper.k8s.mutate import ENCLAVE as ENCLAVE_RESOURCE
from quotehelper.k8s.mutate import EPC_MIB as EPC_RESOURCE

if TYPE_CHECKING:
    from quotehelper.platform.sim import SimPlatform

log = logging.getLogger("quotehelper.k8s.deviceplugin")

PROVISION_RESOURCE = "sgx.intel.com/provision"

SIM_PLATFORM_ENV = "QUOTEHELPER_PLATFORM"  # where a simulated enclave finds its "CPU" (sim's default_platform_dir)

DEFAULT_SHARED_LIMIT = 110  # Intel's default enclave/provision count per node (kubelet's max pods)
# One EPC device serialises to ~22-28 bytes; 64 Ki devices ≈ 1.8 MB, under half of kubelet's 4 MiB.
DEFAULT_MAX_EPC_MIB = 64 * 1024


class DiscoveryError(QuoteHelperError):
    """The node's SGX devices or EPC size could not be determined."""


@dataclass(frozen=True)
class Grant:
    """One thing a container gets: a device node (DeviceSpec) or a directory (Mount)."""

    host_path: Path
    container_path: str
    is_device: bool
    read_only: bool = False

    def present(self) -> bool:
        return self.host_path.is_char_device() if self.is_device else self.host_path.is_dir()

    def apply(self, resp: api_pb2.ContainerAllocateResponse) -> None:
        if self.is_device:
            if not any(d.container_path == self.container_path for d in resp.devices):
                resp.devices.add(container_path=self.container_path, host_path=str(self.host_path),
                                 permissions="rw")
        elif not any(m.container_path == self.container_path for m in resp.mounts):
            resp.mounts.add(container_path=self.container_path, host_path=str(self.host_path),
                            read_only=self.read_only)


@dataclass(frozen=True)
class SgxNode:
    """What the node offers: grants per role, and EPC size (MiB) per NUMA node (-1 = unknown node)."""

    enclave: Grant
    provision: Grant
    aesmd_dir: Path
    epc_mib_by_numa: dict[int, int] = field(default_factory=dict)
    simulate: bool = False
    provision_extra: tuple[Grant, ...] = ()  # simulation: the test PKI the service signs collateral with

    @property
    def epc_mib(self) -> int:
        return sum(self.epc_mib_by_numa.values())

    def access_grants(self, resp: api_pb2.ContainerAllocateResponse) -> None:
        """Enclave access + the quote service's socket: what enclave and EPC containers get."""
        self.enclave.apply(resp)
        # Read-only is enough: connect() on a socket needs no write access to the file system.
        Grant(self.aesmd_dir, AESMD_DIR, is_device=False, read_only=True).apply(resp)
        resp.envs[AESM_ADDR_ENV] = "1"
        if self.simulate:
            resp.envs[SIM_PLATFORM_ENV] = self.enclave.container_path


# --- discovery ------------------------------------------------------------------------------------

def epc_from_sysfs(sys_root: Path = Path("/sys")) -> dict[int, int]:
    """EPC MiB per NUMA node from `node*/x86/sgx_total_bytes` (Linux ≥ 5.17); {} when absent."""
    out: dict[int, int] = {}
    for p in sorted(glob.glob(str(sys_root / "devices/system/node/node*/x86/sgx_total_bytes"))):
        node = int(Path(p).parent.parent.name.removeprefix("node"))
        total = int(Path(p).read_text().strip() or 0)
        if total:
            out[node] = total // (1024 * 1024)
    return out


def epc_from_cpuid(cpuid_dev: Path = Path("/dev/cpu/0/cpuid")) -> int:
    """EPC MiB from CPUID leaf 0x12, sub-leaves ≥ 2 (SDM vol. 3D 36.7.2), through the kernel's cpuid
    driver (pread at offset leaf | subleaf << 32 returns eax, ebx, ecx, edx); 0 when unavailable."""
    try:
        fd = open(cpuid_dev, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except OSError:
        return 0
    total = 0
    try:
        for sub in range(2, 66):
            eax, _ebx, ecx, edx = struct.unpack("<4I", os.pread(fd.fileno(), 16, 0x12 | (sub << 32)))
            if eax & 0xF != 1:  # 0 = no more sections, 1 = valid EPC section
                break
            total += (ecx & 0xFFFFF000) | ((edx & 0xFFFFF) << 32)
    except OSError:
        return 0
    finally:
        fd.close()
    return total // (1024 * 1024)


def cpu_has_sgx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " sgx" in line for line in text.splitlines())


def discover(dev_root: Path = Path("/dev"), sys_root: Path = Path("/sys"), *, epc_mib: int | None = None,
             aesmd_dir: Path = Path(AESMD_DIR)) -> SgxNode:
    """The hardware node: device nodes under `dev_root`, EPC from `--epc-mib`, sysfs or CPUID."""
    enclave = Grant(dev_root / "sgx_enclave", "/dev/sgx_enclave", is_device=True)
    provision = Grant(dev_root / "sgx_provision", "/dev/sgx_provision", is_device=True)
    if not enclave.present():
        hint = "the CPU reports sgx" if cpu_has_sgx() else "no sgx flag in /proc/cpuinfo"
        raise DiscoveryError(f"{enclave.host_path} is not a character device ({hint}); in-kernel SGX "
                             "driver (Linux >= 5.11) needed, or run with --simulate")
    by_numa = {-1: epc_mib} if epc_mib is not None else (epc_from_sysfs(sys_root) or {-1: epc_from_cpuid()})
    if sum(by_numa.values()) <= 0:
        raise DiscoveryError("EPC size unknown: no node*/x86/sgx_total_bytes in sysfs and CPUID leaf 0x12 "
                             "unreadable (modprobe cpuid); pass --epc-mib")
    return SgxNode(enclave, provision, aesmd_dir, by_numa)


def simulated(platform_dir: Path, *, epc_mib: int, aesmd_dir: Path = Path(AESMD_DIR),
              pki_dir: Path | None = None) -> SgxNode:
    """The software platform as the node's SGX: its directory is the device (same path in the container,
    since the platform records absolute paths), read-only for everyone. The provision grant adds its PKI
    directory, read-only too, so the quote service's health check can sign collateral for its self-test.

    Read-only for the quote service as well: kubelet keeps only the first of several device-plugin mounts
    at one container path (resources in map order), so a container granted enclave and provision must
    get identical mounts from both; the plugin makes the attestation key beforehand
    (`prepare_simulated_platform`)."""
    platform_dir = Path(platform_dir)
    extra = (Grant(Path(pki_dir), str(pki_dir), is_device=False, read_only=True),) if pki_dir else ()
    platform = Grant(platform_dir, str(platform_dir), is_device=False, read_only=True)
    return SgxNode(platform, platform, aesmd_dir, {-1: epc_mib}, simulate=True, provision_extra=extra)


def prepare_simulated_platform(platform_dir: Path) -> SimPlatform:
    """Creates (or opens) the software platform and makes its attestation key now, while this process
    can write: the pods it is granted to see it read-only."""
    from quotehelper.platform.sim import SimPlatform
    from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID

    plat = SimPlatform.create(Path(platform_dir).absolute())  # idempotent: an existing one is kept
    plat.engine().init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    return plat


# --- the three plugin backends ----------------------------------------------------------------------

class _SgxBackend:
    resource_name: str
    endpoint: str

    def __init__(self, node: SgxNode) -> None:
        self.node = node


class EnclaveBackend(_SgxBackend):
    resource_name = ENCLAVE_RESOURCE
    endpoint = "quotehelper-sgx-enclave.sock"

    def __init__(self, node: SgxNode, limit: int = DEFAULT_SHARED_LIMIT) -> None:
        super().__init__(node)
        self.ids = [f"sgx-enclave-{i}" for i in range(limit)]

    def devices(self) -> list[DeviceState]:
        ok = self.node.enclave.present()
        return [DeviceState(i, ok) for i in self.ids]

    def allocate(self, device_ids: Sequence[str]) -> api_pb2.ContainerAllocateResponse:
        resp = api_pb2.ContainerAllocateResponse()
        self.node.access_grants(resp)
        return resp


class ProvisionBackend(_SgxBackend):
    resource_name = PROVISION_RESOURCE
    endpoint = "quotehelper-sgx-provision.sock"

    def __init__(self, node: SgxNode, limit: int = DEFAULT_SHARED_LIMIT) -> None:
        super().__init__(node)
        self.ids = [f"sgx-provision-{i}" for i in range(limit)]

    def devices(self) -> list[DeviceState]:
        ok = self.node.provision.present() and all(g.present() for g in self.node.provision_extra)
        return [DeviceState(i, ok) for i in self.ids]

    def allocate(self, device_ids: Sequence[str]) -> api_pb2.ContainerAllocateResponse:
        # The quote service's own grant: the provisioning key (or the simulated platform, read-write).
        resp = api_pb2.ContainerAllocateResponse()
        for grant in (self.node.provision, *self.node.provision_extra):
            grant.apply(resp)
        return resp


class EpcBackend(_SgxBackend):
    resource_name = EPC_RESOURCE
    endpoint = "quotehelper-sgx-epc.sock"

    def __init__(self, node: SgxNode, max_mib: int = DEFAULT_MAX_EPC_MIB) -> None:
        super().__init__(node)
        total = node.epc_mib
        if total > max_mib:
            log.warning("EPC %d MiB exceeds the %d MiB device cap; advertising %d", total, max_mib, max_mib)
        self._layout: list[tuple[str, int | None]] = []
        for numa, mib in sorted(node.epc_mib_by_numa.items()):
            for _ in range(mib):
                if len(self._layout) >= max_mib:
                    break
                self._layout.append((f"epc-{len(self._layout)}", None if numa < 0 else numa))

    def devices(self) -> list[DeviceState]:
        ok = self.node.enclave.present()
        return [DeviceState(i, ok, numa) for i, numa in self._layout]

    def allocate(self, device_ids: Sequence[str]) -> api_pb2.ContainerAllocateResponse:
        resp = api_pb2.ContainerAllocateResponse()
        self.node.access_grants(resp)
        return resp


def backends(node: SgxNode, *, enclave_limit: int = DEFAULT_SHARED_LIMIT,
             provision_limit: int = DEFAULT_SHARED_LIMIT, max_epc_mib: int = DEFAULT_MAX_EPC_MIB) -> list:
    return [EnclaveBackend(node, enclave_limit), ProvisionBackend(node, provision_limit),
            EpcBackend(node, max_epc_mib)]
