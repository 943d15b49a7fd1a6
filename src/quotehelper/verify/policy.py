"""Appraisal policy: data (YAML or JSON), applied to a valid verdict; every rule reports pass/fail.

```yaml
accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]   # default: [UpToDate]
accepted_advisory_ids: [INTEL-SA-00615]                # omit = any; otherwise every advisory must be listed
grace_period: 30d          # a status outside the accepted list still passes until tcbDate + grace
max_collateral_age: 7d     # now - oldest issue date (TCB info, QE identity, PCK CRL thisUpdate)
mr_enclave: [<hex>, ...]   # one of these, or:
mr_signer: <hex>
isv_prod_id: 1
min_isv_svn: 2
report_data: <hex>         # exact 64 bytes, or a prefix
allow_debug: false         # default false
```
Durations: integer seconds or a number with s/m/h/d.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from quotehelper.inputs import PathLike, as_path
from quotehelper.verify.errors import ErrorCode, VerificationError
from quotehelper.verify.tcb import TCB_STATUSES
from quotehelper.verify.verdict import RuleResult, Verdict, iso

_KEYS = {"accepted_tcb_statuses", "accepted_advisory_ids", "grace_period", "max_collateral_age", "mr_enclave",
         "mr_signer", "isv_prod_id", "min_isv_svn", "report_data", "allow_debug"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MAX_SECONDS = 10**14  # timedelta's limit is ~8.6e13 s; larger values become the regex path's clear error


def _bad(msg: str) -> VerificationError:
    return VerificationError(ErrorCode.POLICY_MALFORMED, msg)


def parse_duration(v: Any, key: str) -> timedelta:
    if type(v) is int and 0 <= v <= _MAX_SECONDS:
        return timedelta(seconds=v)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", str(v).strip())
    if not m:
        raise _bad(f"{key}: {v!r} is not a duration (seconds, or e.g. 30d, 12h)")
    try:
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    except OverflowError as e:
        raise _bad(f"{key}: {v!r} is too long a duration") from e


def _hex(v: Any, key: str, size: int | None = None) -> bytes:
    if not isinstance(v, str) or not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", v):
        raise _bad(f"{key}: {v!r} is not hex")
    b = bytes.fromhex(v)
    if size is not None and len(b) != size:
        raise _bad(f"{key}: {len(b)} bytes, need {size}")
    return b


@dataclass(frozen=True)
class Policy:
    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    accepted_advisory_ids: tuple[str, ...] | None = None
    grace_period: timedelta | None = None
    max_collateral_age: timedelta | None = None
    mr_enclave: tuple[bytes, ...] = ()
    mr_signer: bytes | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    report_data: bytes | None = None
    allow_debug: bool = False

    @classmethod
    def from_dict(cls, d: Any) -> Policy:
        if not isinstance(d, dict):
            raise _bad("policy must be a mapping")
        unknown = set(d) - _KEYS
        if unknown:
            raise _bad(f"unknown policy keys: {sorted(unknown)}")
        statuses = d.get("accepted_tcb_statuses", ["UpToDate"])
        if not isinstance(statuses, list) or any(s not in TCB_STATUSES or s == "Revoked" for s in statuses):
            raise _bad(f"accepted_tcb_statuses: each must be one of {TCB_STATUSES[:-1]}")
        adv = d.get("accepted_advisory_ids")
        if adv is not None and (not isinstance(adv, list) or not all(isinstance(a, str) for a in adv)):
            raise _bad("accepted_advisory_ids must be a list of strings")
        mre = d.get("mr_enclave", [])
        mre = [mre] if isinstance(mre, str) else mre
        if not isinstance(mre, list):
            raise _bad("mr_enclave must be a hex string or a list of them")
        ints = {}
        for k in ("isv_prod_id", "min_isv_svn"):
            v = d.get(k)
            if v is not None and (type(v) is not int or not 0 <= v <= 65535):
                raise _bad(f"{k} must be an integer 0..65535")
            ints[k] = v
        if (ints["isv_prod_id"] is not None or ints["min_isv_svn"] is not None) and "mr_signer" not in d:
            raise _bad("isv_prod_id / min_isv_svn need mr_signer")
        allow_debug = d.get("allow_debug", False)
        if not isinstance(allow_debug, bool):
            raise _bad("allow_debug must be true or false")
        rd = d.get("report_data")
        if rd is not None and len(_hex(rd, "report_data")) > 64:
            raise _bad("report_data is longer than 64 bytes")
        return cls(
            accepted_tcb_statuses=tuple(statuses), accepted_advisory_ids=None if adv is None else tuple(adv),
            grace_period=parse_duration(d["grace_period"], "grace_period") if "grace_period" in d else None,
            max_collateral_age=(parse_duration(d["max_collateral_age"], "max_collateral_age")
                                if "max_collateral_age" in d else None),
            mr_enclave=tuple(_hex(m, "mr_enclave", 32) for m in mre),
            mr_signer=_hex(d["mr_signer"], "mr_signer", 32) if "mr_signer" in d else None,
            isv_prod_id=ints["isv_prod_id"], min_isv_svn=ints["min_isv_svn"],
            report_data=_hex(rd, "report_data") if rd is not None else None, allow_debug=allow_debug,
        )

    @classmethod
    def load(cls, path: PathLike) -> Policy:
        """A policy file: JSON if it ends in .json, else YAML (the keys in this module's docstring).

        `path` is a str or os.PathLike. Raises VerificationError(POLICY_MALFORMED), InputTypeError for a
        path of another type."""
        import yaml  # ~25 ms; only a policy file needs it

        path = as_path(path, "policy path")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except OSError as e:
            raise _bad(f"cannot read policy {path}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise _bad(f"policy {path} is not UTF-8 text (byte {e.start})") from e
        except RecursionError as e:
            raise _bad(f"policy {path}: nested too deeply") from e
        except (ValueError, yaml.YAMLError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _bad(f"policy {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from e
        return cls.from_dict(data or {})

    @classmethod
    def permissive(cls) -> Policy:
        """What applies without --policy: any TCB status but Revoked, no debug enclaves."""
        return cls(accepted_tcb_statuses=tuple(s for s in TCB_STATUSES if s != "Revoked"))

    # ---- appraisal ------------------------------------------------------------------------------
    def evaluate(self, v: Verdict, now: datetime, collateral_oldest: datetime | None) -> list[RuleResult]:
        out: list[RuleResult] = []
        add = out.append
        status_ok = v.status in self.accepted_tcb_statuses
        if status_ok:
            add(RuleResult("tcb_status", True, f"{v.status} is accepted"))
        elif self.grace_period is not None and v.tcb_date is not None and now <= v.tcb_date + self.grace_period:
            add(RuleResult("tcb_status", True, f"{v.status} accepted within the grace period until "
                           f"{iso(v.tcb_date + self.grace_period)}"))
        else:
            grace = (f"; grace period ended {iso(v.tcb_date + self.grace_period)}"
                     if self.grace_period is not None and v.tcb_date else "")
            add(RuleResult("tcb_status", False, f"{v.status} is not in {list(self.accepted_tcb_statuses)}{grace}"))
        if self.accepted_advisory_ids is not None:
            extra = [a for a in v.advisory_ids if a not in self.accepted_advisory_ids]
            add(RuleResult("advisory_ids", not extra, f"not accepted: {extra}" if extra else "all accepted"))
        if self.max_collateral_age is not None:
            if collateral_oldest is None:
                add(RuleResult("max_collateral_age", False, "collateral age unknown"))
            else:
                age = now - collateral_oldest
                add(RuleResult("max_collateral_age", age <= self.max_collateral_age,
                               f"oldest collateral issued {iso(collateral_oldest)} ({age} ago, max "
                               f"{self.max_collateral_age})"))
        e = v.enclave
        assert e is not None
        if self.mr_enclave:
            add(RuleResult("mr_enclave", e.mr_enclave in self.mr_enclave, f"MRENCLAVE {e.mr_enclave.hex()}"))
        if self.mr_signer is not None:
            add(RuleResult("mr_signer", e.mr_signer == self.mr_signer, f"MRSIGNER {e.mr_signer.hex()}"))
        if self.isv_prod_id is not None:
            add(RuleResult("isv_prod_id", e.isv_prod_id == self.isv_prod_id,
                           f"ISVPRODID {e.isv_prod_id}, expected {self.isv_prod_id}"))
        if self.min_isv_svn is not None:
            add(RuleResult("min_isv_svn", e.isv_svn >= self.min_isv_svn,
                           f"ISVSVN {e.isv_svn}, minimum {self.min_isv_svn}"))
        if self.report_data is not None:
            add(RuleResult("report_data", e.report_data.startswith(self.report_data),
                           f"report data {e.report_data.hex()}"))
        add(RuleResult("debug", self.allow_debug or not e.debug,
                       "debug enclave " + ("allowed" if self.allow_debug else "forbidden") if e.debug
                       else "not a debug enclave"))
        return out
