"""The software SGX platform: simulated CPU, app enclaves, PCE + QE3, an Intel-shaped test PKI and
signed collateral. Modules: cpu (keys, EREPORT/EGETKEY), enclave (app enclaves), qe (PCE, QE3 engine),
pki (simulated Intel CAs, PCK leaves, CRLs), collateral (TCB info, QE identity), store (atomic files),
platform (SimPlatform facade; its docstring lists the directory and export file names)."""

from quotehelper.platform.sim.collateral import TCB_STATUSES, Collateral
from quotehelper.platform.sim.cpu import EnclaveIdentity, SimCpu
from quotehelper.platform.sim.enclave import SimEnclave
from quotehelper.platform.sim.pki import SimPki
from quotehelper.platform.sim.platform import SimConfigError, SimPlatform, default_platform_dir
from quotehelper.platform.sim.qe import Qe3Engine
from quotehelper.platform.sim.store import PlatformStoreError

__all__ = ["TCB_STATUSES", "Collateral", "EnclaveIdentity", "PlatformStoreError", "Qe3Engine", "SimConfigError",
           "SimCpu", "SimEnclave", "SimPki", "SimPlatform", "default_platform_dir"]
