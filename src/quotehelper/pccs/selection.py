"""Intel's "best PCK certificate" selection (PCKCertSelectionLib, collateral-service.md §2.3).

Given the platform's raw TCB (CPUSVN, PCESVN), its PCE-ID, the SGX TCB info of its FMSPC (tcbType 0, so a
certificate's 16 TCB components are its CPUSVN bytes) and its PCK certificates:
  1. each certificate must belong to the FMSPC, the PCE-ID and one PPID;
  2. A >= B when no component (16 SVNs + PCESVN) of A is lower; "lower" when some are lower and none higher;
  3. one bucket per TCB level, newest first, plus a last one; each certificate goes in the first level it is
     >= to, each bucket keeps its highest certificate first;
  4. the first certificate, walking the buckets in order, that the raw TCB is >= to is the choice.
So the chosen certificate is the highest-level one the platform's current TCB still dominates, never one
above it.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from cryptography import x509

from quotehelper.errors import FormatError, QuoteHelperError
from quotehelper.sgx.pck import SGX_EXTENSION_OID, PckExtension


class SelectionError(QuoteHelperError):
    """No certificate fits (PCCS answers 404), or the inputs disagree (another FMSPC, PCE-ID or PPID)."""


class Order(enum.Enum):
    GE = "ge"
    LOWER = "lower"
    UNDEFINED = "undefined"


def compare(a: tuple[int, ...], b: tuple[int, ...]) -> Order:
    """a vs b over equal-length SVN tuples (16 components + PCESVN)."""
    lower = any(x < y for x, y in zip(a, b, strict=True))
    higher = any(x > y for x, y in zip(a, b, strict=True))
    if not lower:
        return Order.GE
    return Order.UNDEFINED if higher else Order.LOWER


@dataclass(frozen=True)
class PckCandidate:
    pem: str
    ext: PckExtension

    @property
    def svns(self) -> tuple[int, ...]:
        return (*self.ext.cpusvn, self.ext.pcesvn)

    @property
    def tcbm(self) -> str:
        """CPUSVN || PCESVN little-endian, upper-case hex (the SGX-TCBm header)."""
        return (self.ext.cpusvn + self.ext.pcesvn.to_bytes(2, "little")).hex().upper()

    @classmethod
    def from_pem(cls, pem: str) -> PckCandidate:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
            der = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
            return cls(pem, PckExtension.parse(der.value))  # type: ignore[attr-defined]
        except (ValueError, x509.ExtensionNotFound, FormatError) as e:
            raise SelectionError(f"not a PCK certificate: {e}") from e


def level_svns(level: dict) -> tuple[int, ...]:
    tcb = level["tcb"]
    if "sgxtcbcomponents" in tcb:
        comps = [c["svn"] for c in tcb["sgxtcbcomponents"]]
    else:  # TCB info v2
        comps = [tcb[f"sgxtcbcomp{i:02d}svn"] for i in range(1, 17)]
    return (*comps, tcb["pcesvn"])


def select_pck(raw_cpusvn: bytes, raw_pcesvn: int, pce_id: bytes, tcb_info: dict,
               certs: list[PckCandidate]) -> PckCandidate:
    """The certificate Intel's selection library picks; SelectionError when none fits."""
    if tcb_info.get("tcbType", 0) != 0:
        raise SelectionError(f"tcbType {tcb_info.get('tcbType')} is not supported (only 0)")
    if bytes.fromhex(tcb_info.get("pceId", pce_id.hex())) != pce_id:
        raise SelectionError("the TCB info's pceId is not the platform's PCE-ID")
    fmspc = bytes.fromhex(tcb_info["fmspc"])
    if not certs:
        raise SelectionError("no PCK certificates for this platform")
    if len({c.ext.ppid for c in certs}) != 1:
        raise SelectionError("the PCK certificates name more than one PPID")
    for c in certs:
        if c.ext.fmspc != fmspc or c.ext.pce_id != pce_id:
            raise SelectionError("a PCK certificate is for another FMSPC or PCE-ID")
        if tuple(c.ext.tcb_components) != tuple(c.ext.cpusvn):
            raise SelectionError("a PCK certificate's TCB components differ from its CPUSVN (tcbType 0)")
    levels = [level_svns(lv) for lv in tcb_info["tcbLevels"]]
    buckets: list[list[PckCandidate]] = [[] for _ in range(len(levels) + 1)]
    for c in certs:
        i = next((i for i, lv in enumerate(levels) if compare(c.svns, lv) is Order.GE), len(levels))
        buckets[i].append(c)

    def highest_first(a: PckCandidate, b: PckCandidate) -> int:
        ab = compare(a.svns, b.svns)
        if ab is Order.GE and a.svns != b.svns:
            return -1
        return 1 if compare(b.svns, a.svns) is Order.GE and a.svns != b.svns else 0

    raw = (*raw_cpusvn, raw_pcesvn)
    for bucket in buckets:
        for c in sorted(bucket, key=functools.cmp_to_key(highest_first)):
            if compare(raw, c.svns) is Order.GE:
                return c
    raise SelectionError("no PCK certificate at or below the platform's raw TCB")
