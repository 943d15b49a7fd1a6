"""Every collateral URL in one place: Intel PCS v4, Intel's PCCS (v3/v4 paths), Azure THIM, ours.

A base URL may be given bare (`https://pccs.example:8081`) or with the API path
(`https://pccs.example:8081/sgx/certification/v4/`, what `sgx_default_qcnl.conf` holds); both give
the same endpoints. Query values are upper-case hex where PCS expects hex; PCESVN and PCE-ID are the
little-endian bytes of the 16-bit values, as Intel's QCNL sends them (collateral-service.md §3.2).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from quotehelper.pcs.errors import PcsCode, PcsError

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
UPDATE_TYPES = ("standard", "early")
CA_TYPES = ("processor", "platform")
TEES = ("sgx", "tdx")
_API_PATH = re.compile(r"/(sgx|tdx)/certification/v(\d+)/?$")


def _hex16_le(value: int) -> str:
    return value.to_bytes(2, "little").hex().upper()


@dataclass(frozen=True)
class Endpoints:
    """URL builder for one collateral service. `kind` is "pcs" (Intel), "thim" (Azure) or "pccs"
    (Intel's PCCS, ours, or anything else that serves the PCS v4 paths)."""

    root: str            # scheme://host[:port][/prefix], no trailing slash, no /sgx/certification/vN
    version: int = 4
    kind: str = "pccs"
    client_id: str = "production_client"  # THIM's clientid parameter

    @classmethod
    def parse(cls, base_url: str) -> Endpoints:
        url = base_url.strip()
        try:
            parts = urllib.parse.urlsplit(url)
            _ = parts.port  # raises for a port out of range
        except ValueError as e:
            raise PcsError(PcsCode.BAD_OPTION, f"collateral service URL {base_url!r}: {e}", {"url": base_url}) from e
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PcsError(PcsCode.BAD_OPTION, f"collateral service URL must be http(s)://host[:port][/path], "
                           f"got {base_url!r}", {"url": base_url})
        path = parts.path.rstrip("/")
        version = 4
        m = _API_PATH.search(path + "/")
        if m:
            version = int(m.group(2))
            path = path[:m.start()]
        if version not in (3, 4):
            raise PcsError(PcsCode.BAD_OPTION, f"PCS API version {version} is not supported (3 or 4)",
                           {"url": base_url})
        host = parts.hostname or ""
        kind = ("pcs" if host.endswith("trustedservices.intel.com") else
                "thim" if host.endswith(("thim.azure.net", "acccache.azure.net")) or "/THIM" in path else "pccs")
        return cls(f"{parts.scheme}://{parts.netloc}{path}", version, kind)

    def _url(self, tee: str, route: str, params: dict[str, str | int | None]) -> str:
        if tee not in TEES:
            raise PcsError(PcsCode.BAD_OPTION, f"TEE must be sgx or tdx, got {tee!r}")
        query = {k: str(v) for k, v in params.items() if v is not None}
        if self.kind == "thim":
            query["clientid"] = self.client_id
        qs = urllib.parse.urlencode(query, safe=",")
        return f"{self.root}/{tee}/certification/v{self.version}/{route}" + (f"?{qs}" if qs else "")

    # ---- collateral for verification ---------------------------------------------------------------
    def tcb(self, tee: str, fmspc: bytes, update: str = "standard", evaluation_number: int | None = None) -> str:
        # PCS takes either update or tcbEvaluationDataNumber, not both
        return self._url(tee, "tcb", {"fmspc": fmspc.hex().upper(),
                                      "update": update if evaluation_number is None else None,
                                      "tcbEvaluationDataNumber": evaluation_number})

    def qe_identity(self, tee: str, update: str = "standard", evaluation_number: int | None = None) -> str:
        return self._url(tee, "qe/identity", {"update": update if evaluation_number is None else None,
                                              "tcbEvaluationDataNumber": evaluation_number})

    def qve_identity(self, update: str = "standard") -> str:
        return self._url("sgx", "qve/identity", {"update": update})

    def pckcrl(self, ca: str, der: bool = True) -> str:
        # PCK CRLs live on the SGX path for TDX too (both Intel and Azure).
        return self._url("sgx", "pckcrl", {"ca": ca, "encoding": "der" if der else None})

    def rootcacrl(self) -> str:
        """PCCS's (and THIM's) root CA CRL route; Intel's PCS has none (use the root's CDP)."""
        return self._url("sgx", "rootcacrl", {})

    def tcb_evaluation_data_numbers(self, tee: str = "sgx") -> str:
        return self._url(tee, "tcbevaluationdatanumbers", {})

    # ---- PCK certificates --------------------------------------------------------------------------
    def pckcert(self, *, cpusvn: bytes, pcesvn: int, pceid: int, encrypted_ppid: bytes | None = None,
                qeid: bytes | None = None) -> str:
        # Azure's service takes PCESVN and PCE-ID big-endian (collateral-service.md §4.3)
        enc16 = (lambda v: v.to_bytes(2, "big").hex().upper()) if self.kind == "thim" else _hex16_le
        return self._url("sgx", "pckcert", {
            "qeid": qeid.hex().upper() if qeid is not None else None,
            "encrypted_ppid": encrypted_ppid.hex().upper() if encrypted_ppid is not None else None,
            "cpusvn": cpusvn.hex().upper(), "pcesvn": enc16(pcesvn), "pceid": enc16(pceid)})

    def pckcerts(self, *, encrypted_ppid: bytes, pceid: int) -> str:
        return self._url("sgx", "pckcerts", {"encrypted_ppid": encrypted_ppid.hex().upper(),
                                             "pceid": _hex16_le(pceid)})
