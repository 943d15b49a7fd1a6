"""The software SGX platform: simulated CPU, app enclaves, PCE + QE3, an Intel-shaped test PKI and
signed collateral. Modules: cpu (keys, EREPORT/EGETKEY), enclave (app enclaves), qe (PCE, QE3 engine),
pki (simulated Intel CAs, PCK leaves, CRLs), collateral (TCB info, QE identity), store (atomic files),
platform (SimPlatform facade; its docstring lists the directory and export file names)."""

import importlib
from typing import TYPE_CHECKING, Any

# Names -> defining module, imported on first use (PEP 562): a worker that only opens a platform to quote
# never loads the PKI and collateral builders.
_EXPORTS = {
    "TCB_STATUSES": "collateral", "Collateral": "collateral", "EnclaveIdentity": "cpu", "SimCpu": "cpu",
    "SimEnclave": "enclave", "SimPki": "pki", "SimConfigError": "platform", "SimPlatform": "platform",
    "default_platform_dir": "platform", "Qe3Engine": "qe", "PlatformStoreError": "store",
}

if TYPE_CHECKING:
    from quotehelper.platform.sim.collateral import TCB_STATUSES, Collateral
    from quotehelper.platform.sim.cpu import EnclaveIdentity, SimCpu
    from quotehelper.platform.sim.enclave import SimEnclave
    from quotehelper.platform.sim.pki import SimPki
    from quotehelper.platform.sim.platform import SimConfigError, SimPlatform, default_platform_dir
    from quotehelper.platform.sim.qe import Qe3Engine
    from quotehelper.platform.sim.store import PlatformStoreError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["TCB_STATUSES", "Collateral", "EnclaveIdentity", "PlatformStoreError", "Qe3Engine", "SimConfigError",
           "SimCpu", "SimEnclave", "SimPki", "SimPlatform", "default_platform_dir"]
