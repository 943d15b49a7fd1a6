"""Intel's best-PCK-certificate selection, table-driven: raw TCBs on and around each TCB level's boundary,
above every level and below every level, with certificates issued by the test PKI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quotehelper.pccs.selection import Order, PckCandidate, SelectionError, compare, select_pck
from quotehelper.platform.sim.pki import SimPki
from quotehelper.sgx.pck import SGX_TYPE_STANDARD, PckExtension

FMSPC, PCE_ID, PPID = bytes.fromhex("00906ED50000"), bytes(2), os.urandom(16)
LEVELS = [((5,) * 16, 13, "UpToDate"), ((4,) * 16, 11, "SWHardeningNeeded"), ((2,) * 16, 7, "OutOfDate")]


def tcb_info(levels=LEVELS) -> dict:
    return {"fmspc": FMSPC.hex().upper(), "pceId": "0000", "tcbType": 0, "tcbLevels": [
        {"tcb": {"sgxtcbcomponents": [{"svn": c} for c in comps], "pcesvn": pce}, "tcbStatus": st}
        for comps, pce, st in levels]}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, PckCandidate]:
    pki = SimPki.load_or_create(Path(tmp_path_factory.mktemp("pki")) / "pki")

    def issue(comps: tuple[int, ...], pce: int, fmspc: bytes = FMSPC, ppid: bytes = PPID) -> PckCandidate:
        ext = PckExtension(ppid=ppid, tcb_components=comps, pcesvn=pce, cpusvn=bytes(comps), pce_id=PCE_ID,
                           fmspc=fmspc, sgx_type=SGX_TYPE_STANDARD)
        cert = pki.issue_pck(ec.generate_private_key(ec.SECP256R1()).public_key(), ext, "processor")
        return PckCandidate.from_pem(cert.public_bytes(serialization.Encoding.PEM).decode())

    return {"L1": issue((5,) * 16, 13), "L2": issue((4,) * 16, 11), "L3": issue((2,) * 16, 7),
            "mixed": issue((5,) * 15 + (4,), 12), "other-fmspc": issue((5,) * 16, 13, fmspc=bytes(6)),
            "other-ppid": issue((4,) * 16, 11, ppid=os.urandom(16))}


def raw(n: int, pce: int, first: int | None = None) -> tuple[bytes, int]:
    comps = [n] * 16
    if first is not None:
        comps[0] = first
    return bytes(comps), pce


CASES = [
    ("at level 1", raw(5, 13), "L1"),
    ("above every level", raw(9, 20), "L1"),
    ("level 1 components, PCESVN one below", raw(5, 12), "L2"),
    ("one component below level 1", raw(5, 13, first=4), "L2"),
    ("at level 2", raw(4, 11), "L2"),
    ("level 2 components, PCESVN one below", raw(4, 10), "L3"),
    ("between level 2 and 3", raw(3, 9), "L3"),
    ("at level 3", raw(2, 7), "L3"),
    ("one component below level 3", raw(2, 7, first=1), None),
    ("level 3 components, PCESVN one below", raw(2, 6), None),
    ("below every level", raw(0, 1), None),
]


@pytest.mark.parametrize(("name", "tcb", "want"), CASES, ids=[c[0] for c in CASES])
def test_best_certificate(certs, name, tcb, want) -> None:
    pool = [certs["L1"], certs["L2"], certs["L3"]]
    if want is None:
        with pytest.raises(SelectionError, match="no PCK certificate at or below"):
            select_pck(*tcb, PCE_ID, tcb_info(), pool)
        return
    assert select_pck(*tcb, PCE_ID, tcb_info(), pool) is certs[want]


def test_highest_certificate_in_a_bucket_first(certs) -> None:
    # "mixed" (15 x 5, one 4; PCESVN 12) falls in level 2's bucket with L2 and ranks above it
    pool = [certs["L2"], certs["mixed"], certs["L3"]]
    assert select_pck(*raw(5, 13), PCE_ID, tcb_info(), pool) is certs["mixed"]
    assert select_pck(*raw(5, 12, first=2), PCE_ID, tcb_info(), pool) is certs["L3"]  # neither L2 nor mixed fits


def test_inputs_that_disagree_are_refused(certs) -> None:
    with pytest.raises(SelectionError, match="another FMSPC"):
        select_pck(*raw(5, 13), PCE_ID, tcb_info(), [certs["L1"], certs["other-fmspc"]])
    with pytest.raises(SelectionError, match="more than one PPID"):
        select_pck(*raw(5, 13), PCE_ID, tcb_info(), [certs["L1"], certs["other-ppid"]])
    with pytest.raises(SelectionError, match="pceId"):
        select_pck(*raw(5, 13), b"\x00\x01", tcb_info(), [certs["L1"]])
    with pytest.raises(SelectionError, match="tcbType"):
        select_pck(*raw(5, 13), PCE_ID, {**tcb_info(), "tcbType": 1}, [certs["L1"]])


def test_compare() -> None:
    assert compare((2, 2), (1, 2)) is Order.GE and compare((1, 2), (1, 2)) is Order.GE
    assert compare((1, 1), (1, 2)) is Order.LOWER and compare((3, 1), (1, 2)) is Order.UNDEFINED
