"""What the admission webhook does to a Pod, as a pure function from Pod JSON to RFC 6902 JSON Patch.

A pod opts in with the annotation `quotehelper.io/quote-provider: aesm` (or Intel's
`sgx.intel.com/quote-provider: aesmd`); nothing else is ever touched. For each SGX container of an
opted-in pod (an app or init container that asks for enclave or EPC; every app container when none
does; ephemeral containers cannot: the API refuses resources on them and they are never in a CREATE):
- both EPC resource names become the one the cluster serves (`--epc-resource`): MiB count <-> bytes,
  rounded up; a container naming both keeps the larger amount;
- `default_epc_mib` MiB of EPC is added where a container asks for none (when configured);
- `sgx.intel.com/enclave: 1` is added (the enclave device, and through it the socket mount), unless
  `enclave_resource=False` (nodes whose only SGX plugin is Azure's legacy MiB one);
- env `SGX_AESM_ADDR=1` is added (any value selects out-of-process quoting in Intel's library);
- with `socket_delivery="hostPath"` (no device plugin delivers the socket), a `/var/run/aesmd` mount of
  a hostPath volume `aesmd-socket` is added unless the container already mounts that path;
- with `socket_delivery="plugin"`, a hand-made hostPath wiring of the socket directory (the AKS
  sample's `/var/run/aesmd` volume + mount) is removed from the container (and the volume from the pod
  once unused): kubelet would otherwise pass two mounts at `/var/run/aesmd` (the pod's and the
  plugin's) to the runtime, and the pod would keep a hostPath that Pod Security "baseline" forbids.
Applying the result to its own output yields no further patch (idempotent: reinvocation is safe).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from quotehelper.errors import QuoteHelperError
from quotehelper.k8s.quantity import bytes_to_mib, mib_count

QUOTE_PROVIDER_ANNOTATION = "quotehelper.io/quote-provider"
INTEL_QUOTE_PROVIDER_ANNOTATION = "sgx.intel.com/quote-provider"
OPT_IN = {QUOTE_PROVIDER_ANNOTATION: {"aesm", "aesmd"}, INTEL_QUOTE_PROVIDER_ANNOTATION: {"aesmd", "aesm"}}

ENCLAVE = "sgx.intel.com/enclave"
EPC_MIB = "kubernetes.azure.com/sgx_epc_mem_in_MiB"
EPC_BYTES = "sgx.intel.com/epc"
EPC_NAMES = (EPC_MIB, EPC_BYTES)
SGX_RESOURCES = (ENCLAVE, *EPC_NAMES)

AESMD_DIR = "/var/run/aesmd"
HOST_SOCKET_DIRS = {"/var/run/aesmd", "/run/aesmd"}  # /var/run is a symlink to /run on current distros
SOCKET_VOLUME = "aesmd-socket"
AESM_ADDR_ENV = "SGX_AESM_ADDR"
CONTAINER_LISTS = ("containers", "initContainers")  # the lists whose containers can ask for EPC


class MutationError(QuoteHelperError, ValueError):
    """An opted-in pod whose shape the mutation cannot work on (a string where a list belongs)."""


@dataclass(frozen=True)
class MutationConfig:
    epc_resource: str = EPC_MIB  # the EPC resource the cluster's device plugin serves
    socket_delivery: str = "plugin"  # "plugin": Allocate mounts the socket; "hostPath": the webhook does
    enclave_resource: bool = True  # False where no plugin serves sgx.intel.com/enclave (legacy AKS nodes)
    default_epc_mib: int = 0  # EPC given to an SGX container that asks for none (0: add none)

    def __post_init__(self) -> None:
        if self.epc_resource not in EPC_NAMES:
            raise MutationError(f"epc_resource must be one of {EPC_NAMES}")
        if self.socket_delivery not in ("plugin", "hostPath"):
            raise MutationError("socket_delivery must be 'plugin' or 'hostPath'")


def opted_in(pod: Any) -> bool:
    """True when the pod's annotations ask for the quote provider. Any other shape is not opted in."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(annotations, dict):
        return False
    return any(isinstance(v := annotations.get(key), str) and v in values for key, values in OPT_IN.items())


def _check_shape(spec: Any) -> None:
    """The parts of a PodSpec the mutation reads or writes have the types the Pod API gives them."""
    if not isinstance(spec, dict):
        raise MutationError("spec is not an object")
    for name in (*CONTAINER_LISTS, "ephemeralContainers", "volumes"):
        items = spec.get(name)
        if items is not None and (not isinstance(items, list) or not all(isinstance(i, dict) for i in items)):
            raise MutationError(f"spec.{name} is not a list of objects")
    for name in CONTAINER_LISTS:
        for i, c in enumerate(spec.get(name) or []):
            res = c.get("resources")
            if res is not None and (not isinstance(res, dict) or
                                    not all(isinstance(res.get(k), dict | None) for k in ("limits", "requests"))):
                raise MutationError(f"spec.{name}[{i}].resources is not an object of objects")
            for field in ("env", "volumeMounts"):
                items = c.get(field)
                if items is not None and (not isinstance(items, list) or not all(isinstance(x, dict) for x in items)):
                    raise MutationError(f"spec.{name}[{i}].{field} is not a list of objects")
            if not all(isinstance(m.get("mountPath", ""), str) for m in c.get("volumeMounts") or []):
                raise MutationError(f"spec.{name}[{i}].volumeMounts: a mountPath is not a string")
    for v in spec.get("volumes") or []:
        if not isinstance(v.get("hostPath"), dict | None) or not isinstance(_obj(v.get("hostPath")).get("path", ""),
                                                                           str):
            raise MutationError(f"spec.volumes: {str(v.get('name'))[:60]!r} has a malformed hostPath")


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _pointer(*parts: str | int) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _epc_mib(resources: dict[str, Any]) -> int | None:
    """The EPC a requests/limits map asks for, in MiB, whichever name it uses (the larger if both)."""
    amounts = []
    if EPC_MIB in resources:
        amounts.append(mib_count(resources[EPC_MIB]))
    if EPC_BYTES in resources:
        amounts.append(bytes_to_mib(resources[EPC_BYTES]))
    return max(amounts) if amounts else None


def _translate_epc(resources: dict[str, Any], target: str) -> None:
    mib = _epc_mib(resources)
    if mib is None:
        return
    for name in EPC_NAMES:
        resources.pop(name, None)
    resources[target] = str(mib) if target == EPC_MIB else f"{mib}Mi"


def _wants_sgx(container: dict[str, Any]) -> bool:
    res = container.get("resources") or {}
    return any(name in (res.get(kind) or {}) for kind in ("limits", "requests") for name in SGX_RESOURCES)


def _hand_wired_socket_volumes(spec: dict[str, Any]) -> set[str]:
    return {v.get("name") for v in spec.get("volumes") or []
            if ((v.get("hostPath") or {}).get("path") or "").rstrip("/") in HOST_SOCKET_DIRS}


def _mutate_container(c: dict[str, Any], cfg: MutationConfig, hand_wired: set[str]) -> None:
    resources = c["resources"] = c.get("resources") or {}
    limits = resources["limits"] = resources.get("limits") or {}
    requests = resources.get("requests")
    _translate_epc(limits, cfg.epc_resource)
    if requests:
        _translate_epc(requests, cfg.epc_resource)
        # Extended resources need requests == limits; a request-only amount becomes the limit.
        if cfg.epc_resource in requests and cfg.epc_resource not in limits:
            limits[cfg.epc_resource] = requests[cfg.epc_resource]
    if cfg.default_epc_mib and cfg.epc_resource not in limits:
        limits[cfg.epc_resource] = str(cfg.default_epc_mib) if cfg.epc_resource == EPC_MIB else f"{cfg.default_epc_mib}Mi"
    if cfg.enclave_resource:
        limits.setdefault(ENCLAVE, "1")
        if requests is not None and any(n in requests for n in SGX_RESOURCES):
            requests.setdefault(ENCLAVE, limits[ENCLAVE])

    env = c["env"] = c.get("env") or []
    if not any(e.get("name") == AESM_ADDR_ENV for e in env):
        env.append({"name": AESM_ADDR_ENV, "value": "1"})

    if cfg.socket_delivery == "hostPath":
        mounts = c.setdefault("volumeMounts", [])
        if not any(m.get("mountPath", "").rstrip("/") == AESMD_DIR for m in mounts):
            mounts.append({"name": SOCKET_VOLUME, "mountPath": AESMD_DIR})
    elif hand_wired and c.get("volumeMounts"):
        keep = [m for m in c["volumeMounts"]
                if not (m.get("name") in hand_wired and m.get("mountPath", "").rstrip("/") == AESMD_DIR)]
        if not keep:
            del c["volumeMounts"]
        elif len(keep) != len(c["volumeMounts"]):
            c["volumeMounts"] = keep


def mutate(pod: dict[str, Any], cfg: MutationConfig = MutationConfig()) -> dict[str, Any]:  # noqa: B008
    """The mutated copy of an opted-in pod (the pod itself, unchanged, when it did not opt in)."""
    if not opted_in(pod):
        return pod
    new = copy.deepcopy(pod)
    spec = new.setdefault("spec", {})
    _check_shape(spec)
    containers = spec.get("containers") or []
    every_sgx = [c for name in CONTAINER_LISTS for c in spec.get(name) or [] if _wants_sgx(c)]
    targets = every_sgx or containers
    hand_wired = _hand_wired_socket_volumes(spec)
    for c in targets:
        _mutate_container(c, cfg, hand_wired)
    if cfg.socket_delivery == "plugin" and hand_wired:
        every = [*containers, *(spec.get("initContainers") or []), *(spec.get("ephemeralContainers") or [])]
        used = {m.get("name") for c in every for m in c.get("volumeMounts") or []}
        volumes = [v for v in spec["volumes"] if v.get("name") not in hand_wired or v.get("name") in used]
        if not volumes:
            del spec["volumes"]
        elif len(volumes) != len(spec["volumes"]):
            spec["volumes"] = volumes
    if cfg.socket_delivery == "hostPath":
        wired = [*containers, *(spec.get("initContainers") or [])]
        uses_volume = any(m.get("name") == SOCKET_VOLUME for c in wired for m in c.get("volumeMounts") or [])
        volumes = spec.get("volumes") or []
        if uses_volume and not any(v.get("name") == SOCKET_VOLUME for v in volumes):
            spec["volumes"] = [*volumes, {"name": SOCKET_VOLUME,
                                          "hostPath": {"path": AESMD_DIR, "type": "DirectoryOrCreate"}}]
    return new


def diff_patch(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch turning `old` into `new`, at the granularity the mutation works on: a container's
    `resources`, `env`, `volumeMounts`, and the pod's `volumes` (whole-field add/replace/remove)."""
    ops: list[dict[str, Any]] = []

    def field_op(before: dict[str, Any], after: dict[str, Any], field: str, *path: str | int) -> None:
        if after.get(field) == before.get(field) and (field in after) == (field in before):
            return
        pointer = _pointer(*path, field)
        if field not in after:
            ops.append({"op": "remove", "path": pointer})
        else:
            ops.append({"op": "replace" if field in before else "add", "path": pointer, "value": after[field]})

    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for name in CONTAINER_LISTS:
        pairs = zip(old_spec.get(name) or [], new_spec.get(name) or [], strict=True)
        for i, (before, after) in enumerate(pairs):
            for field in ("resources", "env", "volumeMounts"):
                field_op(before, after, field, "spec", name, i)
    field_op(old_spec, new_spec, "volumes", "spec")
    return ops


def patch_for(pod: dict[str, Any], cfg: MutationConfig = MutationConfig()) -> list[dict[str, Any]]:  # noqa: B008
    return diff_patch(pod, mutate(pod, cfg))
