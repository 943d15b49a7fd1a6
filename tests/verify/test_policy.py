"""Appraisal policy: data in YAML/JSON, every rule reported as passed or failed in the verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotehelper.verify import ErrorCode, Policy, VerificationError, Verifier
from tests.verify.helpers import CASES

PHALA = CASES["phala"]
MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"


def appraise(policy: dict, case=PHALA):  # noqa: ANN001, ANN201
    return Verifier().verify(case.quote_bytes(), case.load(), now=case.when(), policy=Policy.from_dict(policy))


def rules(v) -> dict[str, bool]:  # noqa: ANN001
    return {r.rule: r.passed for r in v.policy}


def test_full_policy_accepts_and_names_every_rule() -> None:
    v = appraise({"accepted_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"],
                  "accepted_advisory_ids": ["INTEL-SA-00289", "INTEL-SA-00615"], "max_collateral_age": "16d",
                  "mr_enclave": [MRENCLAVE], "mr_signer": MRSIGNER, "isv_prod_id": 0, "min_isv_svn": 0,
                  "report_data": b"Hello, world!".hex()})
    assert v.accepted and v.exit_code() == 0
    assert rules(v) == dict.fromkeys(["tcb_status", "advisory_ids", "max_collateral_age", "mr_enclave",
                                      "mr_signer", "isv_prod_id", "min_isv_svn", "report_data", "debug"], True)
    assert v.to_dict()["policy"][0]["rule"] == "tcb_status"


@pytest.mark.parametrize("policy,failed", [
    ({}, ["tcb_status"]),  # default: UpToDate only
    ({"accepted_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"], "accepted_advisory_ids": ["INTEL-SA-00615"]},
     ["advisory_ids"]),
    ({"accepted_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"], "max_collateral_age": "7d"},
     ["max_collateral_age"]),
    ({"accepted_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"], "mr_enclave": "00" * 32}, ["mr_enclave"]),
    ({"accepted_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"], "mr_signer": MRSIGNER, "isv_prod_id": 1,
      "min_isv_svn": 1}, ["isv_prod_id", "min_isv_svn"]),
    ({"accepted_tcb_statuses": ["ConfigurationAndSWHardeningNeeded"], "report_data": "00"}, ["report_data"]),
])
def test_each_rule_can_reject(policy: dict, failed: list[str]) -> None:
    v = appraise(policy)
    assert v.valid and not v.accepted and v.exit_code() == 3 and v.code == "POLICY_REJECTED"
    assert [r.rule for r in v.failed_rules] == failed


def test_grace_period_from_tcb_date() -> None:
    """eval-18 collateral: the platform's level is OutOfDate; its tcbDate decides the grace period."""
    case = CASES["automata-eval18"]
    base = Verifier().verify(case.quote_bytes(), case.load(), now=case.when())
    assert base.status == "OutOfDate" and base.tcb_date is not None
    age_days = (case.when() - base.tcb_date).days
    ok = appraise({"accepted_tcb_statuses": ["UpToDate", "SWHardeningNeeded"], "grace_period": f"{age_days + 1}d"},
                  case)
    late = appraise({"accepted_tcb_statuses": ["UpToDate", "SWHardeningNeeded"], "grace_period": f"{age_days - 1}d"},
                    case)
    assert ok.accepted and "grace period" in ok.policy[0].detail
    assert not late.accepted and "grace period ended" in late.policy[0].detail


def test_yaml_and_json_files(tmp_path: Path) -> None:
    y = tmp_path / "p.yaml"
    y.write_text("accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]\nmax_collateral_age: 7d\nallow_debug: true\n")
    j = tmp_path / "p.json"
    j.write_text('{"accepted_tcb_statuses": ["UpToDate"], "grace_period": 86400}')
    py, pj = Policy.load(y), Policy.load(j)
    assert py.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded") and py.allow_debug
    assert py.max_collateral_age.days == 7 and pj.grace_period.total_seconds() == 86400


@pytest.mark.parametrize("bad", [
    {"accepted_tcb_statuses": ["Revoked"]}, {"accepted_tcb_statuses": ["Fine"]}, {"unknown": 1},
    {"grace_period": "soon"}, {"mr_enclave": "abc"}, {"mr_signer": "00" * 31}, {"isv_prod_id": 1},
    {"mr_signer": "00" * 32, "min_isv_svn": -1}, {"allow_debug": "yes"}, {"report_data": "00" * 65}, []])
def test_bad_policies_are_refused(bad) -> None:  # noqa: ANN001
    with pytest.raises(VerificationError) as e:
        Policy.from_dict(bad)
    assert e.value.code is ErrorCode.POLICY_MALFORMED


def test_unreadable_policy_file(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("accepted_tcb_statuses: [UpToDate\n")
    with pytest.raises(VerificationError) as e:
        Policy.load(p)
    assert e.value.code is ErrorCode.POLICY_MALFORMED
