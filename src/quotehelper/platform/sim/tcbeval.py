"""The simulated Intel's TCB evaluations and registered platforms (the state behind `pcs serve`).

Kept in the PKI directory, beside the keys that sign collateral:
    tcb_evaluations.json   per FMSPC: the platforms' TCB (16 components, PCESVN, PCE-ID) and the list of
                           TCB evaluations [{number, status, advisories, tcb_recovery_event_date}] with
                           the number served as `update=standard` and as `update=early`
    platforms/<QE_ID>.json a registered platform: QE_ID, PCE-ID, PPID, encrypted PPID, CPUSVN, PCESVN,
                           FMSPC, CA type and its PCK certificate (PEM)

A TCB recovery (`recover`) adds evaluation N+1 under which the platforms of the FMSPC, UpToDate (or
whatever they were) under N, are OutOfDate with a new advisory, beside a newer UpToDate level they do
not reach: Intel's "TCB recovery" as a verifier sees it. With `early_only` the new number is served
only to `update=early` until `promote`. Writers hold an flock on `tcb.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quotehelper.errors import QuoteHelperError
from quotehelper.platform.sim.store import ensure_dir, write_atomic

FIRST_EVALUATION_NUMBER = 17
RECOVERY_ADVISORY = "INTEL-SA-01153"
_STATE = "tcb_evaluations.json"


class TcbStateError(QuoteHelperError, ValueError):
    """A conflicting registration, an unknown FMSPC or evaluation number, or a corrupt state file."""


@dataclass(frozen=True)
class Profile:
    """The platforms of one FMSPC with one TCB (16 components + PCESVN) and how an evaluation rates them."""

    components: bytes
    pcesvn: int
    status: str
    advisories: tuple[str, ...]


@dataclass(frozen=True)
class Evaluation:
    """What one TCB evaluation says about the platforms of one FMSPC."""

    number: int
    pce_id: bytes
    profiles: tuple[Profile, ...]
    recovery_date: str

    def profile(self, components: bytes, pcesvn: int) -> Profile | None:
        return next((p for p in self.profiles if (p.components, p.pcesvn) == (components, pcesvn)), None)


def encrypted_ppid(ppid: bytes) -> bytes:
    """Stands for the PCE's RSA-3072-OAEP encryption of the PPID (384 bytes) in the simulation:
    deterministic, so a platform is found again by it; not encryption."""
    out = b"".join(hashlib.sha512(b"quotehelper-enc-ppid" + bytes([i]) + ppid).digest() for i in range(6))
    return out[:384]


@contextlib.contextmanager
def _locked(pki_dir: Path) -> Iterator[dict]:
    with open(pki_dir / "tcb.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(pki_dir)
        yield state
        write_atomic(pki_dir / _STATE, json.dumps(state, indent=1).encode(), replace=True)


def load_state(pki_dir: Path) -> dict:
    try:
        state = json.loads((Path(pki_dir) / _STATE).read_text())
    except FileNotFoundError:
        return {"version": 0, "fmspcs": {}}
    except (OSError, ValueError) as e:
        raise TcbStateError(f"{Path(pki_dir) / _STATE} is unreadable: {e}") from e
    if not isinstance(state, dict) or not isinstance(state.get("fmspcs"), dict):
        raise TcbStateError(f"{Path(pki_dir) / _STATE} is not a TCB evaluation state")
    return state


def state_version(pki_dir: Path) -> int:
    """Grows with every change (a server re-issues its cached bodies when it moves)."""
    return int(load_state(pki_dir).get("version", 0))


def register_platform(pki_dir: Path, record: dict, *, status: str, advisories: list[str]) -> None:
    """Registers a platform and its TCB profile under its FMSPC (rated `status` by every evaluation so
    far). Two platforms with the same FMSPC and TCB but different statuses cannot both be right: the
    second raises TcbStateError and is not registered."""
    pki_dir = Path(pki_dir)
    fmspc = record["fmspc"].upper()
    with _locked(pki_dir) as state:
        entry = state["fmspcs"].setdefault(fmspc, {
            "pce_id": record["pce_id"], "standard": FIRST_EVALUATION_NUMBER, "early": FIRST_EVALUATION_NUMBER,
            "evaluations": [{"number": FIRST_EVALUATION_NUMBER, "recovery_date": "2024-11-13T00:00:00Z"}],
            "profiles": []})
        prof = next((p for p in entry["profiles"] if (p["components"], p["pcesvn"]) ==
                     (record["cpusvn"].upper(), int(record["pcesvn"]))), None)
        if prof is None:
            entry["profiles"].append({"components": record["cpusvn"].upper(), "pcesvn": int(record["pcesvn"]),
                                      "ratings": {str(ev["number"]): [status, list(advisories)]
                                                  for ev in entry["evaluations"]}})
        else:
            first = prof["ratings"][str(entry["evaluations"][0]["number"])][0]
            if first != status:
                raise TcbStateError(f"FMSPC {fmspc} already has a platform with this TCB rated {first}")
        state["version"] = int(state.get("version", 0)) + 1
    ensure_dir(pki_dir / "platforms")
    write_atomic(pki_dir / "platforms" / f"{record['qe_id'].upper()}.json", json.dumps(record, indent=1).encode(),
                 replace=True)


def platforms(pki_dir: Path) -> list[dict]:
    d = Path(pki_dir) / "platforms"
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            raise TcbStateError(f"{p} is unreadable: {e}") from e
    return out


def fmspcs(pki_dir: Path) -> list[str]:
    return sorted(load_state(pki_dir)["fmspcs"])


def evaluation(pki_dir: Path, fmspc: bytes | str, *, update: str = "standard",
               number: int | None = None) -> Evaluation:
    """The evaluation served for `fmspc` (`update` standard/early, or a given `number`)."""
    key = fmspc.hex().upper() if isinstance(fmspc, bytes) else fmspc.upper()
    entry = load_state(pki_dir)["fmspcs"].get(key)
    if entry is None:
        raise TcbStateError(f"no platform with FMSPC {key} is registered")
    want = entry["early" if update == "early" else "standard"] if number is None else number
    for ev in entry["evaluations"]:
        if ev["number"] == want:
            profiles = tuple(Profile(bytes.fromhex(p["components"]), p["pcesvn"], p["ratings"][str(want)][0],
                                     tuple(p["ratings"][str(want)][1])) for p in entry["profiles"])
            return Evaluation(want, bytes.fromhex(entry["pce_id"]), profiles, ev["recovery_date"])
    raise TcbStateError(f"FMSPC {key} has no TCB evaluation {want}")


def evaluation_numbers(pki_dir: Path) -> list[tuple[int, str]]:
    """Every evaluation number any FMSPC has, highest first, with its TCB recovery event date."""
    seen: dict[int, str] = {}
    for entry in load_state(pki_dir)["fmspcs"].values():
        for ev in entry["evaluations"]:
            seen.setdefault(ev["number"], ev["recovery_date"])
    return sorted(seen.items(), reverse=True)


def recover(pki_dir: Path, fmspc: str | None = None, *, early_only: bool = False, date: str | None = None) -> int:
    """A TCB recovery: evaluation N+1 for `fmspc` (all FMSPCs when None) rates its platforms OutOfDate
    with a new advisory. Returns the new number."""
    date = date or "2026-11-11T00:00:00Z"
    with _locked(Path(pki_dir)) as state:
        keys = [fmspc.upper()] if fmspc else sorted(state["fmspcs"])
        if not keys or any(k not in state["fmspcs"] for k in keys):
            raise TcbStateError(f"no registered FMSPC {fmspc or '(none registered)'}")
        new = max(ev["number"] for k in keys for ev in state["fmspcs"][k]["evaluations"]) + 1
        for k in keys:
            entry = state["fmspcs"][k]
            last = str(max(ev["number"] for ev in entry["evaluations"]))
            entry["evaluations"].append({"number": new, "recovery_date": date})
            for prof in entry["profiles"]:
                advisories = sorted(set(prof["ratings"][last][1]) | {RECOVERY_ADVISORY})
                prof["ratings"][str(new)] = ["OutOfDate", advisories]
            entry["early"] = new
            if not early_only:
                entry["standard"] = new
        state["version"] = int(state.get("version", 0)) + 1
    return new


def promote(pki_dir: Path, fmspc: str | None = None) -> None:
    """`update=standard` catches up with `update=early`."""
    with _locked(Path(pki_dir)) as state:
        for k in [fmspc.upper()] if fmspc else list(state["fmspcs"]):
            state["fmspcs"][k]["standard"] = state["fmspcs"][k]["early"]
        state["version"] = int(state.get("version", 0)) + 1


def find_platform(pki_dir: Path, *, encrypted_ppid_hex: str | None = None, qe_id_hex: str | None = None) -> dict | None:
    for p in platforms(pki_dir):
        if encrypted_ppid_hex and p["encrypted_ppid"].upper() == encrypted_ppid_hex.upper():
            return p
        if qe_id_hex and p["qe_id"].upper() == qe_id_hex.upper():
            return p
    return None


__all__ = ["Evaluation", "Profile", "TcbStateError", "encrypted_ppid", "evaluation", "evaluation_numbers", "find_platform",
           "fmspcs", "load_state", "platforms", "promote", "recover", "register_platform", "state_version"]
