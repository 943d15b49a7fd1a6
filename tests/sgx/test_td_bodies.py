"""Issue 11, field case tdx-v5-body-type4.dat: every TDX body type a quote can carry (v4 TD 1.0; v5 types
2, 3 and 4) is decoded field by field, as dcap-qvl 0.7.0 decodes it, and re-encodes byte-identically."""

from __future__ import annotations

import json
from pathlib import Path

import dcap_qvl
import pytest
from click.testing import CliRunner

from quotehelper.cli import main
from quotehelper.sgx.quote import TdReport, parse_quote
from tests.conftest import FIELD_CASES, TESTDATA

PHALA = TESTDATA / "phala-dcap-qvl"
QUOTES = {
    "v4-td10": (PHALA / "tdx_quote", "1.0"),
    "v5-type3-td15": (PHALA / "tdx_quote_outdated", "1.5"),
    "v5-type4-td15ex-phala": (PHALA / "tdx_quote_td15ex", "1.5ex"),
    "v5-type4-field-case": (FIELD_CASES / "tdx-v5-body-type4.dat", "1.5ex"),
}
SIZES = {"1.0": 584, "1.5": 648, "1.5ex": 885}


@pytest.mark.parametrize("name", QUOTES)
def test_every_field_as_dcap_qvl_decodes_it(name: str) -> None:
    path, version = QUOTES[name]
    raw = path.read_bytes()
    q = parse_quote(raw, allow_trailing=True)
    assert isinstance(q.body, TdReport) and q.body.version == version
    assert TdReport.size(version) == SIZES[version] and len(q.body.to_bytes()) == SIZES[version]
    assert q.to_bytes() == raw
    oracle = dcap_qvl.parse_quote(raw).report
    names = [n for n in dir(oracle) if not n.startswith("_")]
    assert set(names) == set(q.body.fields)  # the same fields, none left undecoded
    for n in names:
        want = getattr(oracle, n)
        got = q.body.fields[n]
        assert (int.from_bytes(got, "little") if isinstance(want, int) else got) == want, n


def test_field_case_right_values_in_inspect() -> None:
    r = CliRunner().invoke(main, ["inspect", "--json", str(FIELD_CASES / "tdx-v5-body-type4.dat")])
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)["body"]
    assert body["type"] == "td_report_1.5ex"
    assert body["report_data"].startswith("2945321c99222c36") and body["mr_td"].startswith("2a674327c50218db")
    assert body["td_id"] == "e1f3ee829cb6f039318b8ae3eee622622775f4c9128fee747cb662c624d88b8e"
    assert "unknown_body_type" not in r.output


def test_an_unknown_body_type_still_shows_its_bytes(tmp_path: Path) -> None:
    raw = bytearray((PHALA / "tdx_quote_outdated").read_bytes())
    raw[48:50] = (9).to_bytes(2, "little")  # body type 9: not defined; size field kept
    f = tmp_path / "q.dat"
    f.write_bytes(bytes(raw))
    r = CliRunner().invoke(main, ["inspect", "--json", str(f)])
    body = json.loads(r.output)["body"]
    assert body["type"] == "unknown_body_type_9" and body["size"] == 648 and len(body["raw"]) == 2 * 648
