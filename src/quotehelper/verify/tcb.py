"""TCB info (SGX v2 and v3 shapes) and QE identity (v2): strict parsing, level matching, status convergence.

Parsing is strict on purpose (OpenEnclave's negative samples): exact key names, integers that are
integers (not bools, floats or strings) within range, RFC 3339 dates, known status names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple

from quotehelper.sgx.pck import PckExtension
from quotehelper.sgx.structs import ReportBody
from quotehelper.verify.errors import ErrorCode, VerificationError

TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_HEX = re.compile(r"[0-9a-fA-F]*")


class _Fields:
    """Typed, bounds-checked access to one JSON object; errors carry `code` and the JSON path."""

    def __init__(self, obj: Any, path: str, code: ErrorCode) -> None:
        self.code, self.path = code, path
        if not isinstance(obj, dict):
            raise self.error("", "is not an object")
        self.obj = obj

    def error(self, key: str, why: str) -> VerificationError:
        where = f"{self.path}.{key}" if key else self.path
        return VerificationError(self.code, f"{where} {why}", {"field": where})

    def has(self, key: str) -> bool:
        return key in self.obj

    def get(self, key: str) -> Any:
        if key not in self.obj:
            raise self.error(key, "is missing")
        return self.obj[key]

    def int(self, key: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
        v = self.get(key)
        if type(v) is not int or not lo <= v <= hi:
            raise self.error(key, f"must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def str(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, got {v!r}")
        return v

    def hex(self, key: str, nbytes: int) -> bytes:
        v = self.str(key)
        if len(v) != 2 * nbytes or not _HEX.fullmatch(v):
            raise self.error(key, f"must be {2 * nbytes} hex digits")
        return bytes.fromhex(v)

    def date(self, key: str) -> datetime:
        v = self.str(key)
        try:
            if not _DATE.fullmatch(v):
                raise ValueError("not RFC 3339")
            return datetime.fromisoformat(v)
        except ValueError as e:
            raise self.error(key, f"is not an RFC 3339 date: {v!r}") from e

    def status(self, key: str) -> str:
        v = self.str(key)
        if v not in TCB_STATUSES:
            raise self.error(key, f"unknown TCB status {v!r}")
        return v

    def advisories(self) -> tuple[str, ...]:
        if "advisoryIDs" not in self.obj:
            return ()
        v = self.obj["advisoryIDs"]
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise self.error("advisoryIDs", "must be a list of strings")
        return tuple(v)

    def list(self, key: str) -> list[Any]:
        v = self.get(key)
        if not isinstance(v, list) or not v:
            raise self.error(key, "must be a non-empty list")
        return v

    def sub(self, key: str, index: int | None = None) -> _Fields:
        v = self.get(key) if index is None else self.get(key)[index]
        return _Fields(v, f"{self.path}.{key}" + ("" if index is None else f"[{index}]"), self.code)


def _reject_constant(c: str) -> None:
    raise ValueError(f"{c} is not JSON")


# orjson decodes a TCB info ~2.5x faster than json (~50 us of a cold verification). It refuses NaN and
# Infinity as we do; whatever it refuses (lone surrogates, integers above 64 bits, deep nesting) goes to
# json, which then decides, so acceptance is json's. The one difference in what both accept: integers
# beyond 64 bits come back as floats, and no field we read accepts either (a float is never an integer).
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - a dependency; json alone gives the same results, slower
    _orjson = None  # type: ignore[assignment]

_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one instance: json.loads(**kw) builds one a call


def _load_json(raw: bytes, code: ErrorCode, what: str) -> Any:
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # json names the problem, or accepts what orjson refuses
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise VerificationError(code, f"{what} is not valid JSON: {e}", {"field": what}) from e
    except RecursionError as e:
        raise VerificationError(code, f"{what} is nested too deeply", {"field": what}) from e


class TcbLevel(NamedTuple):
    """One TCB level. (A named tuple, not a frozen dataclass: a TCB info builds 10-40 of them per parse,
    and a tuple is built in a third of the time.)"""

    sgx_components: tuple[int, ...]
    pcesvn: int
    tcb_date: datetime | None
    status: str
    advisory_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"sgx_components": list(self.sgx_components), "pcesvn": self.pcesvn,
                "tcb_date": self.tcb_date.isoformat().replace("+00:00", "Z") if self.tcb_date else None,
                "tcb_status": self.status, "advisory_ids": list(self.advisory_ids)}


class _Slow(Exception):
    """The fast TCB-level reader met something unusual; the strict reader will name it."""


_V2_KEYS = tuple(f"sgxtcbcomp{j:02d}svn" for j in range(1, 17))
_STATUS_SET = frozenset(TCB_STATUSES)
_U8, _INT, _STR, _DICT, _LIST, _16 = frozenset(range(256)), {int}, {str}, {dict}, {list}, {16}
_NO_ADVISORIES: list[str] = []  # (read only)
_LEVEL_ORDER = attrgetter("sgx_components", "pcesvn")
_date_memo: dict[str, datetime] = {}


def _fast_date(v: Any) -> datetime:
    d = _date_memo.get(v) if type(v) is str else None
    if d is None:
        if type(v) is not str or not _DATE.fullmatch(v):
            raise _Slow
        try:
            d = datetime.fromisoformat(v)
        except ValueError as e:
            raise _Slow from e
        if len(_date_memo) < 4096:
            _date_memo[v] = d
    return d


def _fast_tcbs(raw: list[Any]) -> list[dict]:
    """Every level a dict with a dict `tcb` (else _Slow); their `tcb` dicts."""
    if set(map(type, raw)) != _DICT:
        raise _Slow
    tcbs = [lv["tcb"] for lv in raw]
    if set(map(type, tcbs)) != _DICT:
        raise _Slow
    return tcbs


def _fast_status_advisories(raw: list[Any]) -> tuple[list[str], list[list[str]]]:
    """Every level's tcbStatus (a known name) and advisoryIDs (a list of strings), else _Slow.
    An unhashable status raises TypeError, which the callers turn into _Slow."""
    statuses = [lv.get("tcbStatus") for lv in raw]
    advs = [lv.get("advisoryIDs", _NO_ADVISORIES) for lv in raw]
    if (not _STATUS_SET.issuperset(statuses) or set(map(type, advs)) != _LIST
            or not set(map(type, chain.from_iterable(advs))) <= _STR):
        raise _Slow
    return statuses, advs


def _fast_levels(raw: list[Any], version: int) -> list[TcbLevel]:
    """All TCB levels at once (a TCB info holds 10-40 levels x 16 components): each check is one C-level
    pass over every level (comprehensions, set operations) instead of per-field Python calls. Accepts
    exactly what `_strict_level` accepts, with the same result; anything unusual -> _Slow."""
    try:
        tcbs = _fast_tcbs(raw)
        statuses, advs = _fast_status_advisories(raw)
        if version == 3:
            comps = [t["sgxtcbcomponents"] for t in tcbs]
            if set(map(type, comps)) != _LIST or set(map(len, comps)) != _16:
                raise _Slow
            flat = [c["svn"] for cs in comps for c in cs]  # a non-dict component raises TypeError
        else:
            flat = [t.get(k) for t in tcbs for k in _V2_KEYS]
        pces = [t.get("pcesvn") for t in tcbs]
        # type checks keep bools and floats (1.0 == 1) out
        if (set(map(type, flat)) != _INT or not _U8.issuperset(flat) or set(map(type, pces)) != _INT
                or min(pces) < 0 or max(pces) > 65535):
            raise _Slow
        dates = [_fast_date(lv.get("tcbDate")) for lv in raw]
    except (KeyError, TypeError) as e:
        raise _Slow from e
    svns = tuple(flat)  # (slices of a tuple are tuples: one copy per level)
    return [TcbLevel(svns[16 * i:16 * i + 16], pces[i], dates[i], statuses[i], tuple(advs[i]))
            for i in range(len(raw))]


def _fast_qe_levels(raw: list[Any]) -> list[QeTcbLevel]:
    """QE identity levels, the same way."""
    try:
        tcbs = _fast_tcbs(raw)
        statuses, advs = _fast_status_advisories(raw)
        svns = [t["isvsvn"] for t in tcbs]
        if set(map(type, svns)) != _INT or min(svns) < 0 or max(svns) > 65535:
            raise _Slow
        dates = [_fast_date(lv.get("tcbDate")) for lv in raw]
    except (KeyError, TypeError) as e:
        raise _Slow from e
    return [QeTcbLevel(svns[i], dates[i], statuses[i], tuple(advs[i])) for i in range(len(raw))]


def _strict_level(lv: _Fields, version: int) -> TcbLevel:
    tcb = lv.sub("tcb")
    if version == 3:
        comps_raw = tcb.list("sgxtcbcomponents")
        if len(comps_raw) != 16:
            raise tcb.error("sgxtcbcomponents", f"has {len(comps_raw)} entries, need 16")
        comps = tuple(tcb.sub("sgxtcbcomponents", j).int("svn", 0, 255) for j in range(16))
    else:
        comps = tuple(tcb.int(k, 0, 255) for k in _V2_KEYS)
    return TcbLevel(comps, tcb.int("pcesvn", 0, 65535), lv.date("tcbDate"), lv.status("tcbStatus"),
                    lv.advisories())


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes | None
    tcb_type: int
    evaluation_data_number: int | None
    levels: tuple[TcbLevel, ...]  # sorted newest (highest) first

    @classmethod
    def parse(cls, raw: bytes) -> TcbInfo:
        f = _Fields(_load_json(raw, ErrorCode.TCB_INFO_MALFORMED, "tcbInfo"), "tcbInfo",
                    ErrorCode.TCB_INFO_MALFORMED)
        version = f.int("version", 0, 2**31)
        if version not in (2, 3):
            raise VerificationError(ErrorCode.TCB_INFO_UNSUPPORTED, f"TCB info version {version} (need 2 or 3)",
                                    {"field": "tcbInfo.version", "value": version})
        tee_id = f.str("id") if version == 3 else "SGX"
        if tee_id != "SGX":
            raise VerificationError(ErrorCode.TCB_INFO_MISMATCH, f"TCB info is for {tee_id}, the quote is SGX",
                                    {"field": "tcbInfo.id", "value": tee_id})
        tcb_type = f.int("tcbType", 0, 2**31)
        if tcb_type != 0:
            raise VerificationError(ErrorCode.TCB_INFO_UNSUPPORTED, f"tcbType {tcb_type} (only 0 is defined)",
                                    {"field": "tcbInfo.tcbType", "value": tcb_type})
        raw_levels = f.list("tcbLevels")
        try:
            levels = _fast_levels(raw_levels, version)
        except _Slow:  # re-walk with the checked accessors only to name the bad field precisely
            levels = [_strict_level(f.sub("tcbLevels", i), version) for i in range(len(raw_levels))]
        levels.sort(key=_LEVEL_ORDER, reverse=True)
        return cls(tee_id, version, f.date("issueDate"), f.date("nextUpdate"), f.hex("fmspc", 6),
                   f.hex("pceId", 2) if f.has("pceId") else None, tcb_type,
                   f.int("tcbEvaluationDataNumber") if f.has("tcbEvaluationDataNumber") else None, tuple(levels))

    def match(self, pck: PckExtension) -> TcbLevel:
        """Platform TCB level: FMSPC and PCE-ID must match; first level (highest first) that every
        PCK component SVN and the PCESVN reach (a component-wise order, not a numeric compare)."""
        if pck.fmspc != self.fmspc:
            raise VerificationError(ErrorCode.TCB_INFO_MISMATCH, f"PCK FMSPC {pck.fmspc.hex().upper()} but TCB info "
                                    f"is for {self.fmspc.hex().upper()}", {"field": "fmspc",
                                    "pck": pck.fmspc.hex().upper(), "tcb_info": self.fmspc.hex().upper()})
        if self.pce_id is not None and pck.pce_id != self.pce_id:
            raise VerificationError(ErrorCode.TCB_INFO_MISMATCH, f"PCK PCE-ID {pck.pce_id.hex().upper()} but TCB info "
                                    f"has {self.pce_id.hex().upper()}", {"field": "pceId"})
        for level in self.levels:
            if pck.pcesvn >= level.pcesvn and all(
                    p >= t for p, t in zip(pck.tcb_components, level.sgx_components, strict=True)):
                if level.status == "Revoked":
                    raise VerificationError(ErrorCode.TCB_REVOKED, "the platform's TCB level is Revoked",
                                            {"tcb_level": level.to_dict()})
                return level
        raise VerificationError(ErrorCode.TCB_NOT_SUPPORTED, "no TCB level matches the platform (TCB below every "
                                "level)", {"pck_components": list(pck.tcb_components), "pck_pcesvn": pck.pcesvn})


class QeTcbLevel(NamedTuple):
    isvsvn: int
    tcb_date: datetime | None
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[QeTcbLevel, ...]  # highest isvsvn first

    @classmethod
    def parse(cls, raw: bytes) -> QeIdentity:
        code = ErrorCode.QE_IDENTITY_MALFORMED
        f = _Fields(_load_json(raw, code, "enclaveIdentity"), "enclaveIdentity", code)
        version = f.int("version", 0, 2**31)
        ident = f.str("id")
        if version != 2 or ident != "QE":
            raise VerificationError(ErrorCode.QE_IDENTITY_UNSUPPORTED, f"enclave identity {ident!r} v{version}: need "
                                    "the SGX QE identity, version 2", {"id": ident, "version": version})
        raw_levels = f.list("tcbLevels")
        try:
            levels = _fast_qe_levels(raw_levels)
        except _Slow:
            levels = []
            for i in range(len(raw_levels)):
                lv = f.sub("tcbLevels", i)
                levels.append(QeTcbLevel(lv.sub("tcb").int("isvsvn", 0, 65535), lv.date("tcbDate"),
                                         lv.status("tcbStatus"), lv.advisories()))
        levels.sort(key=lambda lv: lv.isvsvn, reverse=True)
        return cls(ident, version, f.date("issueDate"), f.date("nextUpdate"), f.int("tcbEvaluationDataNumber"),
                   int.from_bytes(f.hex("miscselect", 4), "little"),  # hex in report byte order
                   int.from_bytes(f.hex("miscselectMask", 4), "little"),
                   f.hex("attributes", 16), f.hex("attributesMask", 16), f.hex("mrsigner", 32),
                   f.int("isvprodid", 0, 65535), tuple(levels))

    def match(self, qe: ReportBody) -> QeTcbLevel:
        """The QE report must be the identity's enclave; its ISVSVN selects the QE TCB level."""
        def mismatch(what: str, got: str, want: str) -> VerificationError:
            return VerificationError(ErrorCode.QE_IDENTITY_MISMATCH, f"QE report {what} {got} does not match the "
                                     f"QE identity ({want})", {"field": what, "quote": got, "qe_identity": want})
        if qe.mr_signer != self.mrsigner:
            raise mismatch("mrsigner", qe.mr_signer.hex(), self.mrsigner.hex())
        if qe.isv_prod_id != self.isvprodid:
            raise mismatch("isvprodid", str(qe.isv_prod_id), str(self.isvprodid))
        if qe.misc_select & self.miscselect_mask != self.miscselect & self.miscselect_mask:
            raise mismatch("miscselect", f"{qe.misc_select:08X}", f"{self.miscselect:08X}/{self.miscselect_mask:08X}")
        attrs = qe.attributes.to_bytes()
        if not all(a & m == w & m for a, m, w in zip(attrs, self.attributes_mask, self.attributes, strict=True)):
            raise mismatch("attributes", attrs.hex(), f"{self.attributes.hex()}/{self.attributes_mask.hex()}")
        if qe.attributes.debug:
            raise mismatch("attributes.debug", "set", "a production QE is never debug")
        for level in self.levels:
            if qe.isv_svn >= level.isvsvn:
                if level.status == "Revoked":
                    raise VerificationError(ErrorCode.TCB_REVOKED, f"QE ISVSVN {qe.isv_svn} is Revoked",
                                            {"qe_isvsvn": qe.isv_svn})
                return level
        raise VerificationError(ErrorCode.QE_TCB_NOT_SUPPORTED, f"QE ISVSVN {qe.isv_svn} is below every QE identity "
                                "level", {"qe_isvsvn": qe.isv_svn, "minimum": self.levels[-1].isvsvn})


def converge(platform: str, qe: str) -> str:
    """Intel's platform + QE status convergence (dcap-qvl does the same)."""
    if qe in ("OutOfDate", "OutOfDateConfigurationNeeded"):
        if platform in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if platform in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    if qe == "Revoked":
        return "Revoked"
    return platform


def merge_advisories(*lists: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for lst in lists:
        out.extend(a for a in lst if a not in out)
    return out


def check_dates(issue: datetime, next_update: datetime, now: datetime, what: str,
                expired: ErrorCode, not_yet: ErrorCode) -> None:
    """Signed collateral is valid while issueDate <= now <= nextUpdate (nextUpdate inclusive)."""
    if now > next_update:
        raise VerificationError(expired, f"{what} expired at {next_update}", {"next_update": str(next_update),
                                                                             "now": str(now)})
    if now < issue:
        raise VerificationError(not_yet, f"{what} is issued at {issue}, after now", {"issue_date": str(issue),
                                                                                    "now": str(now)})


