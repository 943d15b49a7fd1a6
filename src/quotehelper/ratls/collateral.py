"""Collateral for a peer's quote: a small pluggable interface.

A `CollateralSource` is any callable `source(quote: bytes) -> Collateral | None` (None = "I have none
for this quote"). Files and fixed objects satisfy it here; the endorsements extension is read per
certificate by the verifier; a PCS/PCCS client can plug in later by reading the FMSPC and CA type from
the quote's PCK certificate and answering with its verified cache's collateral. Sources should hand
out the *same* Collateral object while it is unchanged: the verifier caches verified collateral by
content hash, and an object keeps its hash computed.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from quotehelper.inputs import as_path
from quotehelper.verify.collateral import Collateral, load_collateral


class CollateralSource(Protocol):
    def __call__(self, quote: bytes) -> Collateral | None: ...


def as_collateral(obj: Any) -> Collateral:
    """verify.Collateral as is; anything with `to_dcap_qvl_json()` (e.g. `SimPlatform.collateral()`) converted."""
    if isinstance(obj, Collateral):
        return obj
    return Collateral.from_dcap_qvl_json(obj.to_dcap_qvl_json(), source=type(obj).__name__)


class StaticCollateral:
    """One collateral object for every quote (a single platform family, or tests)."""

    def __init__(self, collateral: Any) -> None:
        self.collateral = as_collateral(collateral)

    def __call__(self, quote: bytes) -> Collateral | None:
        return self.collateral


class FileCollateral:
    """`load_collateral(path)` (dcap-qvl JSON file or a folder of PCS responses), re-read only when the
    path's modification time changes. Raises VerificationError(COLLATERAL_MALFORMED) on bad files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = as_path(path, "collateral path")
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._value: Collateral | None = None

    def __call__(self, quote: bytes) -> Collateral | None:
        stamp = self.path.stat().st_mtime
        with self._lock:
            if self._value is None or stamp != self._stamp:
                self._value, self._stamp = load_collateral(self.path), stamp
            return self._value


class FirstOf:
    """The first source that answers (e.g. a local file, then a PCS client)."""

    def __init__(self, *sources: CollateralSource) -> None:
        self.sources = sources

    def __call__(self, quote: bytes) -> Collateral | None:
        for s in self.sources:
            c = s(quote)
            if c is not None:
                return c
        return None
