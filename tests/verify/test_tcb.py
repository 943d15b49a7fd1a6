"""TCB info (v2/v3) and QE identity parsing (OpenEnclave's positive and negative samples), level matching
and platform/QE status convergence."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from quotehelper.sgx.pck import PckExtension
from quotehelper.sgx.structs import Attributes, ReportBody
from quotehelper.verify import ErrorCode, VerificationError
from quotehelper.verify.collateral import split_signed_body
from quotehelper.verify.tcb import QeIdentity, TcbInfo, converge, merge_advisories
from tests.verify.helpers import CASES, path

OE = path("openenclave")
TCB_OK = ["tcbInfo.json", "tcbInfoAdvisoryIds.json", "tcbInfo_with_pceid.json"]
TCB_BAD = sorted(p.name for p in (OE / "tcbinfo_v2").glob("tcbInfoNegative*.json"))
QE_BAD = sorted(p.name for p in (OE / "qeidentity_v2").glob("qe_identity_missing_*.json"))


def parse_tcb_body(raw: bytes) -> TcbInfo:
    signed, _ = split_signed_body(raw, "tcbInfo", "tcb_info_body")
    return TcbInfo.parse(signed)


def parse_qe_body(raw: bytes) -> QeIdentity:
    signed, _ = split_signed_body(raw, "enclaveIdentity", "qe_identity_body")
    return QeIdentity.parse(signed)


@pytest.mark.parametrize("name", TCB_OK)
def test_openenclave_v2_tcb_info_parses(name: str) -> None:
    info = parse_tcb_body((OE / "tcbinfo_v2" / name).read_bytes())
    assert info.version == 2 and info.fmspc.hex().upper() == "00906EA10000" and info.levels


# What each OpenEnclave negative changes (their README) and the field our error names.
TCB_NEGATIVES = [
    ("tcbInfoNegativeCompSvn.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.tcbLevels[0].tcb.sgxtcbcomp01svn"),
    ("tcbInfoNegativeFloat.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.version"),
    ("tcbInfoNegativeIntegerOverflow.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.version"),
    ("tcbInfoNegativeIntegerWithSign.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.version"),
    ("tcbInfoNegativeInvalidIssueDate.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.issueDate"),
    ("tcbInfoNegativeInvalidNextUpdate.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.nextUpdate"),
    ("tcbInfoNegativeMissingNextUpdate.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.nextUpdate"),
    ("tcbInfoNegativePceSvn.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.tcbLevels[0].tcb.pcesvn"),
    ("tcbInfoNegativePropertyMissingLevel0.json", ErrorCode.COLLATERAL_MALFORMED, "tcb_info_body"),
    ("tcbInfoNegativePropertyMissingLevel1.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.version"),
    ("tcbInfoNegativePropertyMissingLevel2.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.tcbLevels[0].tcbDate"),
    ("tcbInfoNegativePropertyMissingLevel3.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.tcbLevels[0].tcb.pcesvn"),
    ("tcbInfoNegativePropertyWrongTypeLevel0.json", ErrorCode.COLLATERAL_MALFORMED, "tcb_info_body.signature"),
    ("tcbInfoNegativePropertyWrongTypeLevel1.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.fmspc"),
    ("tcbInfoNegativePropertyWrongTypeLevel2.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.tcbLevels[0].tcbStatus"),
    ("tcbInfoNegativePropertyWrongTypeLevel3.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.tcbLevels[0].tcb.sgxtcbcomp06svn"),
    ("tcbInfoNegativeSignature.json", ErrorCode.COLLATERAL_MALFORMED, "tcb_info_body.signature"),
    ("tcbInfoNegativeStringEscape.json", ErrorCode.TCB_INFO_MALFORMED, "tcbInfo.issueDate"),
    ("tcbInfoNegativeTcbType.json", ErrorCode.TCB_INFO_UNSUPPORTED, "tcbInfo.tcbType"),
]


def test_every_negative_sample_is_in_the_table() -> None:
    assert sorted(n for n, _, _ in TCB_NEGATIVES) == TCB_BAD


@pytest.mark.parametrize("name,code,field", TCB_NEGATIVES)
def test_openenclave_v2_tcb_info_negatives_are_rejected(name: str, code: ErrorCode, field: str) -> None:
    with pytest.raises(VerificationError) as e:
        parse_tcb_body((OE / "tcbinfo_v2" / name).read_bytes())
    assert (e.value.code, e.value.detail.get("field")) == (code, field)


@pytest.mark.parametrize("name", sorted(p.name for p in (OE / "tcbinfo_v1").glob("*.json")))
def test_v1_tcb_info_is_refused(name: str) -> None:
    with pytest.raises(VerificationError):
        parse_tcb_body((OE / "tcbinfo_v1" / name).read_bytes())


@pytest.mark.parametrize("name", ["qe_identity_ok.json", "qe_identity_with_advisoryids.json"])
def test_openenclave_qe_identity_parses(name: str) -> None:
    ident = parse_qe_body((OE / "qeidentity_v2" / name).read_bytes())
    assert ident.id == "QE" and ident.levels


@pytest.mark.parametrize("name", QE_BAD)
def test_openenclave_qe_identity_negatives_are_rejected(name: str) -> None:
    with pytest.raises(VerificationError) as e:
        parse_qe_body((OE / "qeidentity_v2" / name).read_bytes())
    assert e.value.code in (ErrorCode.QE_IDENTITY_MALFORMED, ErrorCode.COLLATERAL_MALFORMED)


def test_qve_identity_is_not_a_qe_identity() -> None:
    with pytest.raises(VerificationError) as e:
        parse_qe_body((OE / "qeidentity_v2" / "qve_identity_ok.json").read_bytes())
    assert e.value.code is ErrorCode.QE_IDENTITY_UNSUPPORTED


def test_v2_and_v3_shapes_give_the_same_levels() -> None:
    """The real v2 (June 2025) and v3 (Aug 2025) TCB infos of FMSPC 00606A000000 share their top level."""
    v2 = TcbInfo.parse(CASES["automata-tcbinfo-v2"].load().tcb_info)
    v3 = TcbInfo.parse(CASES["automata-aug2025"].load().tcb_info)
    assert (v2.version, v3.version) == (2, 3)
    assert v2.levels[0].sgx_components == v3.levels[0].sgx_components
    assert v2.levels[0].pcesvn == v3.levels[0].pcesvn and v2.fmspc == v3.fmspc


def _info() -> TcbInfo:
    return TcbInfo.parse(CASES["zkdcap"].load().tcb_info)


def _pck(components: tuple[int, ...], pcesvn: int = 13) -> PckExtension:
    return PckExtension(bytes(16), components, pcesvn, bytes(components), bytes(2), bytes.fromhex("00906ED50000"))


def test_component_wise_order_not_numeric() -> None:
    info = _info()
    top = info.levels[0]
    assert info.match(_pck(top.sgx_components, top.pcesvn)) == top
    # One component below the top level (even with all others far above) must not match the top level.
    lower = list(top.sgx_components)
    i = next(j for j, c in enumerate(lower) if c > 0)
    lower[i] -= 1
    higher = [min(c + 50, 255) if j != i else c for j, c in enumerate(lower)]
    assert info.match(_pck(tuple(higher), top.pcesvn)) != top
    assert info.match(_pck(top.sgx_components, top.pcesvn - 1)) != top  # PCESVN too


def test_below_every_level_and_fmspc_mismatch() -> None:
    info = _info()
    with pytest.raises(VerificationError) as e:
        info.match(_pck((0,) * 16, 0))
    assert e.value.code is ErrorCode.TCB_NOT_SUPPORTED
    other = replace(_pck(info.levels[0].sgx_components), fmspc=bytes.fromhex("00A067110000"))
    with pytest.raises(VerificationError) as e:
        info.match(other)
    assert e.value.code is ErrorCode.TCB_INFO_MISMATCH
    with pytest.raises(VerificationError) as e:
        info.match(replace(_pck(info.levels[0].sgx_components), pce_id=b"\x00\x01"))
    assert e.value.code is ErrorCode.TCB_INFO_MISMATCH and e.value.detail["field"] == "pceId"


def test_revoked_level() -> None:
    d = json.loads(CASES["zkdcap"].load().tcb_info)
    d["tcbLevels"][0]["tcbStatus"] = "Revoked"
    info = TcbInfo.parse(json.dumps(d).encode())
    with pytest.raises(VerificationError) as e:
        info.match(_pck(info.levels[0].sgx_components, info.levels[0].pcesvn))
    assert e.value.code is ErrorCode.TCB_REVOKED


def test_qe_identity_match() -> None:
    ident = QeIdentity.parse(CASES["zkdcap"].load().qe_identity)
    good = ReportBody(mr_signer=ident.mrsigner, isv_prod_id=ident.isvprodid, isv_svn=ident.levels[0].isvsvn,
                      attributes=Attributes.parse(ident.attributes), misc_select=ident.miscselect)
    assert ident.match(good).status == "UpToDate"
    assert ident.match(replace(good, isv_svn=ident.levels[0].isvsvn - 1)).status == "OutOfDate"
    for bad, field in ((replace(good, mr_signer=bytes(32)), "mrsigner"), (replace(good, isv_prod_id=2), "isvprodid"),
                       (replace(good, attributes=Attributes(0x13, 0)), "attributes")):
        with pytest.raises(VerificationError) as e:
            ident.match(bad)
        assert e.value.code is ErrorCode.QE_IDENTITY_MISMATCH and e.value.detail["field"] == field
    with pytest.raises(VerificationError) as e:
        ident.match(replace(good, isv_svn=0))
    assert e.value.code is ErrorCode.QE_TCB_NOT_SUPPORTED


@pytest.mark.parametrize("platform,qe,out", [
    ("UpToDate", "UpToDate", "UpToDate"), ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
    ("UpToDate", "OutOfDate", "OutOfDate"), ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("OutOfDate", "OutOfDate", "OutOfDate"), ("OutOfDateConfigurationNeeded", "OutOfDate",
                                              "OutOfDateConfigurationNeeded"),
    ("ConfigurationNeeded", "UpToDate", "ConfigurationNeeded"), ("UpToDate", "Revoked", "Revoked")])
def test_convergence(platform: str, qe: str, out: str) -> None:
    assert converge(platform, qe) == out


def test_advisories_union_platform_first() -> None:
    assert merge_advisories(("A", "B"), ("B", "C")) == ["A", "B", "C"]


def _force_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    from quotehelper.verify import tcb

    def slow(*_: object) -> None:
        raise tcb._Slow
    monkeypatch.setattr(tcb, "_fast_levels", slow)
    monkeypatch.setattr(tcb, "_fast_qe_levels", slow)


def test_fast_level_readers_agree_with_the_strict_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-pass readers give exactly the levels the per-field reader gives, for every sample."""
    colls = [c.load() for c in CASES.values()]
    fast = [(TcbInfo.parse(c.tcb_info), QeIdentity.parse(c.qe_identity)) for c in colls]
    _force_strict(monkeypatch)
    strict = [(TcbInfo.parse(c.tcb_info), QeIdentity.parse(c.qe_identity)) for c in colls]
    assert fast == strict and {t.version for t, _ in fast} == {2, 3}


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("change,where", [
    (lambda lv: lv.update(tcbStatus=["UpToDate"]), "tcbStatus"),       # unhashable status
    (lambda lv: lv.update(tcbStatus="Fine"), "tcbStatus"),
    (lambda lv: lv["tcb"]["sgxtcbcomponents"][3].update(svn=True), "svn"),   # bool is not an integer
    (lambda lv: lv["tcb"]["sgxtcbcomponents"][3].update(svn=256), "svn"),
    (lambda lv: lv["tcb"]["sgxtcbcomponents"].__setitem__(3, [1]), "sgxtcbcomponents[3]"),
    (lambda lv: lv["tcb"]["sgxtcbcomponents"].pop(), "sgxtcbcomponents"),
    (lambda lv: lv["tcb"].update(pcesvn=13.0), "pcesvn"),
    (lambda lv: lv["tcb"].update(pcesvn=-1), "pcesvn"),
    (lambda lv: lv.update(advisoryIDs="INTEL-SA-00615"), "advisoryIDs"),
    (lambda lv: lv.update(advisoryIDs=[615]), "advisoryIDs"),
    (lambda lv: lv.update(tcbDate="2024-03-13"), "tcbDate"),
    (lambda lv: lv.pop("tcb"), "tcb"),
])
def test_odd_tcb_levels_are_named(change, where: str, strict: bool, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A bad value in the last level is TCB_INFO_MALFORMED naming the field, however it is odd."""
    d = json.loads(CASES["phala"].load().tcb_info)
    assert d["version"] == 3
    change(d["tcbLevels"][-1])
    if strict:
        _force_strict(monkeypatch)
    with pytest.raises(VerificationError) as e:
        TcbInfo.parse(json.dumps(d).encode())
    assert e.value.code is ErrorCode.TCB_INFO_MALFORMED and where in e.value.detail["field"]
    assert f"tcbLevels[{len(d['tcbLevels']) - 1}]" in e.value.detail["field"]


@pytest.mark.parametrize("bad_level", [[1], "level", {"tcb": {"isvsvn": 8}, "tcbDate": "2024-03-13T00:00:00Z",
                                                      "tcbStatus": {"UpToDate": 1}}])
def test_odd_qe_levels_are_named(bad_level: object) -> None:
    d = json.loads(CASES["phala"].load().qe_identity)
    d["tcbLevels"].append(bad_level)
    with pytest.raises(VerificationError) as e:
        QeIdentity.parse(json.dumps(d).encode())
    assert e.value.code is ErrorCode.QE_IDENTITY_MALFORMED and "tcbLevels[" in e.value.detail["field"]


def test_orjson_and_json_give_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """orjson is only a faster decoder: every sample parses identically with json alone."""
    from quotehelper.verify import tcb

    assert tcb._orjson is not None  # a dependency: the fast path is what runs
    colls = [c.load() for c in CASES.values()]
    fast = [(TcbInfo.parse(c.tcb_info), QeIdentity.parse(c.qe_identity)) for c in colls]
    monkeypatch.setattr(tcb, "_orjson", None)
    assert fast == [(TcbInfo.parse(c.tcb_info), QeIdentity.parse(c.qe_identity)) for c in colls]


@pytest.mark.parametrize("use_orjson", [True, False])
def test_json_edge_cases(use_orjson: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """What orjson refuses or reads differently is decided as json decides: a lone surrogate in a field we
    ignore is fine, an integer above 64 bits is not an integer in range, NaN is not JSON, deep nesting is
    malformed (not a RecursionError out of the verifier)."""
    from quotehelper.verify import tcb

    if not use_orjson:
        monkeypatch.setattr(tcb, "_orjson", None)
    text = CASES["phala"].load().tcb_info.decode()
    lone = text.replace('"id":"SGX"', '"note":"\\ud800","id":"SGX"', 1)
    assert TcbInfo.parse(lone.encode()) == TcbInfo.parse(text.encode())
    for bad, field in ((text.replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18446744073709551616'),
                        "tcbInfo.tcbEvaluationDataNumber"),
                       (text.replace('"pcesvn":13', '"pcesvn":NaN', 1), "tcbInfo"),
                       (text.replace('"id":"SGX"', '"deep":' + "[" * 100000 + "]" * 100000 + ',"id":"SGX"', 1), "tcbInfo")):
        assert bad != text
        with pytest.raises(VerificationError) as e:
            TcbInfo.parse(bad.encode())
        assert e.value.code is ErrorCode.TCB_INFO_MALFORMED and e.value.detail["field"] == field
