"""`quotehelper ratls cert` and `verify` from the command line: exit codes and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.ratls.helpers import COLLATERAL_00606A, RATLS_DATA

LENIENT = "accepted_tcb_statuses: [UpToDate, OutOfDate]\nallow_debug: true\n"


def ratls(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quotehelper.cli", "ratls", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("policy", "code", "rc"), [(None, "POLICY_REJECTED", 3), (LENIENT, None, 0)],
                         ids=["default", "debug-and-out-of-date-allowed"])
def test_verify_gramine_certificate(tmp_path, policy, code, rc):
    args = [str(RATLS_DATA / "gramine-cert.pem"), "--collateral", str(COLLATERAL_00606A), "--now", "1755236700",
            "--json"]
    if policy:
        (tmp_path / "p.yaml").write_text(policy)
        args += ["--policy", str(tmp_path / "p.yaml")]
    r = ratls("verify", *args)
    assert r.returncode == rc, r.stderr
    out = json.loads(r.stdout)
    assert out["code"] == code and out["formats"] == ["dice", "gramine-legacy"]
    assert out["verdict"]["status"] == "OutOfDate" and out["identity"]["debug"] is True


def test_cert_then_verify_with_a_nonce(plat, sim_root, tmp_path):
    cert, coll = tmp_path / "cert.pem", tmp_path / "collateral.json"
    coll.write_text(plat.collateral().to_dcap_qvl_json())
    r = ratls("cert", "--platform", str(plat.platform_dir), "--curve", "P-384", "--cert-nonce", "c0ffee",
              "--endorsements", str(coll), "-o", str(cert))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cert.key").stat().st_mode & 0o777 == 0o600
    ok = ratls("verify", str(cert), "--root-ca", str(sim_root), "--nonce", "c0ffee")
    assert ok.returncode == 0 and "OK dice" in ok.stdout, ok.stdout + ok.stderr
    replay = ratls("verify", str(cert), "--root-ca", str(sim_root), "--nonce", "0ddba110")
    assert replay.returncode == 1 and "NONCE_MISMATCH" in replay.stdout
    no_collateral = ratls("verify", str(cert), "--root-ca", str(sim_root), "--no-endorsements")
    assert no_collateral.returncode == 2 and "COLLATERAL_UNAVAILABLE" in no_collateral.stdout
