"""`quotehelper verify`: exit codes (0 accepted, 1 invalid, 2 unusable input, 3 rejected by policy), JSON,
batch mode with JSON lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from quotehelper.cli import main
from tests.verify.helpers import CASES, path

PHALA = CASES["phala"]


def run(*args: str | Path) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["verify", *map(str, args)])
    return r.exit_code, r.output


def phala_args(*extra: str | Path) -> list[str | Path]:
    return [path(PHALA.quote), "--collateral", path(PHALA.collateral), "--now", str(PHALA.now), *extra]


def test_valid_quote_exit_0_and_text() -> None:
    code, out = run(*phala_args())
    assert code == 0 and "OK ConfigurationAndSWHardeningNeeded [INTEL-SA-00289, INTEL-SA-00615]" in out
    assert "00A067110000" in out and "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb" in out


def test_json_output_and_iso_time() -> None:
    code, out = run(path(PHALA.quote), "--collateral", path(PHALA.collateral), "--now", "2025-07-04T10:28:44Z",
                    "--json")
    d = json.loads(out)
    assert code == 0 and d["valid"] and d["status"] == "ConfigurationAndSWHardeningNeeded"
    assert d["enclave"]["debug"] is False and d["policy"] is None


def test_test_root_and_lookalike(tmp_path: Path) -> None:
    c = CASES["custom-pki"]
    args = [path(c.quote), "--collateral", path(c.collateral), "--now", str(c.now)]
    code, out = run(*args)
    assert code == 1 and "ROOT_NOT_TRUSTED" in out
    assert run(*args, "--root-ca", path(c.root))[0] == 0
    s = CASES["intel-qvl-sample"]
    code, out = run(path(s.quote), "--collateral", path(s.collateral), "--now", "2025-09-01")
    assert code == 1 and "Intel QVL sample-data test root" in out


def test_policy_rejection_exit_3(tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("accepted_tcb_statuses: [UpToDate]\n")
    code, out = run(*phala_args("--policy", pol))
    assert code == 3 and "REJECTED by policy (tcb_status)" in out and "policy FAIL tcb_status" in out
    pol.write_text("accepted_tcb_statuses: [ConfigurationAndSWHardeningNeeded]\n")
    code, out = run(*phala_args("--policy", pol))
    assert code == 0 and "policy PASS tcb_status" in out


def test_unusable_input_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{}")
    assert run(path(PHALA.quote), "--collateral", bad)[0] == 2
    pol = tmp_path / "p.yaml"
    pol.write_text("nonsense: 1\n")
    code, out = run(*phala_args("--policy", pol))
    assert code == 2 and "POLICY_MALFORMED" in out
    root = tmp_path / "root.der"
    root.write_bytes(b"not a certificate")
    assert run(*phala_args("--root-ca", root))[0] == 2
    assert run(*phala_args()[:-2], "--now", "yesterday")[0] == 2  # click usage error
    assert run("--collateral", path(PHALA.collateral))[0] == 2  # neither QUOTE nor --batch
    # expired collateral is unusable input, not an invalid quote
    code, out = run(path(PHALA.quote), "--collateral", path(PHALA.collateral), "--now", "2026-01-01")
    assert code == 2 and "EXPIRED" in out


def test_invalid_quote_exit_1(tmp_path: Path) -> None:
    q = bytearray(path(PHALA.quote).read_bytes())
    q[100] ^= 1
    f = tmp_path / "q.bin"
    f.write_bytes(bytes(q))
    code, out = run(f, "--collateral", path(PHALA.collateral), "--now", str(PHALA.now))
    assert code == 1 and "ISV_SIGNATURE_INVALID" in out
    hexfile = tmp_path / "q.hex"
    hexfile.write_text(path(PHALA.quote).read_bytes().hex())
    assert run(hexfile, "--collateral", path(PHALA.collateral), "--now", str(PHALA.now))[0] == 0


def test_batch_json_lines(tmp_path: Path) -> None:
    d = tmp_path / "quotes"
    d.mkdir()
    z = CASES["zkdcap"]
    shutil.copy(path(z.quote), d / "a.dat")
    shutil.copy(path("dstack-teekit/sampleQuotes/sgx-tlsn-quote9.dat"), d / "b.dat")
    bad = bytearray(path(z.quote).read_bytes())
    bad[500] ^= 1
    (d / "c.dat").write_bytes(bytes(bad))
    # a quote of another family with its own collateral next to it
    shutil.copy(path(PHALA.quote), d / "d.dat")
    shutil.copy(path(PHALA.collateral), d / "d.dat.collateral.json")
    out = tmp_path / "out.jsonl"
    code, _ = run("--batch", d, "--collateral", path(z.collateral), "--now", "1739486044", "--out", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["file"]).name for x in lines] == ["a.dat", "b.dat", "c.dat", "d.dat"]
    assert [x["valid"] for x in lines] == [True, True, False, False]
    assert lines[2]["code"] == "QE_REPORT_DATA_MISMATCH"
    assert lines[3]["code"] == "CRL_NOT_YET_VALID"  # its own (June 2025) collateral was used, not zkdcap's
    assert code == 1
    code, _ = run("--batch", d, "--collateral", path(z.collateral), "--now", "1739486044", "--out", out,
                  "--policy", _policy(tmp_path))
    assert code == 1


def _policy(tmp: Path) -> Path:
    p = tmp / "p.json"
    p.write_text('{"accepted_tcb_statuses": ["SWHardeningNeeded"]}')
    return p


@pytest.mark.timeout(120)
def test_console_script() -> None:
    exe = Path(sys.executable).with_name("quotehelper")
    r = subprocess.run([str(exe), "verify", *map(str, phala_args("--json"))], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["accepted"] is True
