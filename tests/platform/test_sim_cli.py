"""`quotehelper sim`: the CLI flow init → target-info/report → quote → export, verified by dcap-qvl;
user mistakes give one-line errors, not tracebacks."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from pathlib import Path

import dcap_qvl
import pytest
from click.testing import CliRunner

from quotehelper.cli import main
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import Report


def run(*args: str, ok: bool = True, env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, ["sim", *args], env=env)
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_cli_flow_verifies(tmp_path: Path) -> None:
    plat = tmp_path / "node" / "platform"
    out = run("init", "--platform", str(plat), "--tcb-status", "SWHardeningNeeded", "--fmspc", "00A067110000").output
    assert "created platform" in out and "SWHardeningNeeded" in out and "00A067110000" in out
    assert "existing platform" in run("init", "--platform", str(plat)).output
    run("quote", "--platform", str(plat), "--report-data", "00" * 31 + "ab", "--isv-svn", "3",
        "--config-id", "0102", "--config-svn", "6", "--mr-signer", "77" * 32, "-o", str(tmp_path / "q.bin"))
    quote = (tmp_path / "q.bin").read_bytes()
    body = parse_quote(quote).report_body
    assert body.report_data == bytes(31) + b"\xab" + bytes(32)
    assert (body.isv_svn, body.config_svn, body.config_id, body.mr_signer) == (3, 6, b"\1\2" + bytes(62), b"\x77" * 32)
    assert not body.attributes.debug
    files = run("export", "--platform", str(plat), "--out", str(tmp_path / "exp")).output.split()
    exp = tmp_path / "exp"
    assert sorted(Path(f).relative_to(exp).as_posix() for f in files) == sorted([
        "collateral.json", "pcs/headers.json", "pcs/pckcrl.der", "pcs/qe_identity.json", "pcs/rootcrl.der",
        "pcs/SGX-Enclave-Identity-Issuer-Chain.txt", "pcs/SGX-PCK-CRL-Issuer-Chain.txt",
        "pcs/TCB-Info-Issuer-Chain.txt", "pcs/tcb_info.json", "root_ca.der", "root_ca.pem"])
    coll = dcap_qvl.QuoteCollateralV3.from_json((exp / "collateral.json").read_text())
    result = dcap_qvl.verify_with_root_ca(quote, coll, (exp / "root_ca.der").read_bytes(),
                                          int(dt.datetime.now(dt.UTC).timestamp()))
    assert (result.status, result.advisory_ids) == ("SWHardeningNeeded", ["INTEL-SA-00615"])
    # PCS-shaped bodies and headers carry the same signed texts and chains.
    tcb_body = json.loads((exp / "pcs/tcb_info.json").read_text())
    assert tcb_body["signature"] == coll.tcb_info_signature.hex()
    assert (exp / "pcs/tcb_info.json").read_text().startswith('{"tcbInfo":' + coll.tcb_info + ",")
    assert (exp / "pcs/qe_identity.json").read_text().startswith('{"enclaveIdentity":' + coll.qe_identity + ",")
    headers = json.loads((exp / "pcs/headers.json").read_text())
    assert urllib.parse.unquote(headers["TCB-Info-Issuer-Chain"]) == coll.tcb_info_issuer_chain
    assert urllib.parse.unquote(headers["SGX-Enclave-Identity-Issuer-Chain"]) == coll.qe_identity_issuer_chain
    assert urllib.parse.unquote(headers["SGX-PCK-CRL-Issuer-Chain"]) == coll.pck_crl_issuer_chain
    assert headers["TCB-Info-Issuer-Chain"].startswith("-----BEGIN%20CERTIFICATE-----%0A")
    for name, value in headers.items():
        assert (exp / "pcs" / f"{name}.txt").read_text() == value
    assert (exp / "pcs/pckcrl.der").read_bytes() == coll.pck_crl
    show = json.loads(run("show", "--platform", str(plat)).output)
    assert show["tcb_status"] == "SWHardeningNeeded" and show["attestation_key"] is True


def test_cli_report_for_target(tmp_path: Path) -> None:
    plat = tmp_path / "platform"
    run("init", "--platform", str(plat), "--sdk-compatible")
    run("target-info", "--platform", str(plat), "-o", str(tmp_path / "qe.ti"))
    assert len((tmp_path / "qe.ti").read_bytes()) == 512
    run("report", "--platform", str(plat), "--target-info", str(tmp_path / "qe.ti"), "--report-data", "cafe",
        "--mr-enclave", "11" * 32, "--isv-prod-id", "9", "-o", str(tmp_path / "r.bin"))
    report = (tmp_path / "r.bin").read_bytes()
    rep = Report.parse(report)
    assert rep.body.mr_enclave == b"\x11" * 32 and rep.body.isv_prod_id == 9
    assert rep.body.cpu_svn == bytes.fromhex("4820f3376ae6b2f2034d3b7a4b48a778")
    # The QE accepts it: the report was made for its target info.
    sp = SimPlatform.open(plat)
    from quotehelper.sgx.structs import DEFAULT_ECDSA_ATT_KEY_ID
    sp.engine().init_quote(DEFAULT_ECDSA_ATT_KEY_ID)
    quote, _ = sp.engine().get_quote(report, DEFAULT_ECDSA_ATT_KEY_ID)
    assert parse_quote(quote).report_body.report_data[:2] == b"\xca\xfe"
    # Hex target info and hex output to stdout work too.
    (tmp_path / "qe.hex").write_text((tmp_path / "qe.ti").read_bytes().hex())
    out = run("report", "--platform", str(plat), "--target-info", str(tmp_path / "qe.hex"), "-o", "-").output
    assert len(bytes.fromhex(out.strip())) == 432


def test_cli_default_platform_from_env(tmp_path: Path) -> None:
    env = {"QUOTEHELPER_PLATFORM": str(tmp_path / "envplat")}
    run("init", env=env)
    assert (tmp_path / "envplat" / "platform.json").exists() and (tmp_path / "pki" / "root_ca.pem").exists()
    assert len(bytes.fromhex(run("quote", "-o", "-", env=env).output.strip())) > 1052


@pytest.mark.parametrize("args, message", [
    (["quote", "-o", "-"], "no simulated platform"),
    (["init", "--tcb-status", "Great"], "Invalid value for '--tcb-status'"),
    (["init", "--fmspc", "0011"], "needs exactly 6 bytes"),
    (["init", "--fmspc", "zz"], "is not hex"),
    (["quote", "--report-data", "00" * 65, "-o", "-"], "at most 64 bytes"),
    (["report", "--target-info", "{tmp}/short", "-o", "-"], "target info is 512 bytes"),
    (["export", "--out", "{tmp}/e"], "no simulated platform"),
])
def test_cli_errors_are_friendly(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "short").write_bytes(b"x" * 10)
    if args[0] == "report":
        run("init", "--platform", str(tmp_path / "p"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--platform", str(tmp_path / "p")]
    result = run(*args, ok=False)
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_console_script_errors_without_traceback(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: a missing platform is one line on stderr, exit 2."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("quotehelper", path=str(Path(sys.executable).parent))
    assert exe, "quotehelper console script not installed in the venv"
    proc = subprocess.run([exe, "sim", "export", "--platform", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2  # unusable input, as everywhere
    assert proc.stderr.startswith("error: no simulated platform") and "Traceback" not in proc.stderr
