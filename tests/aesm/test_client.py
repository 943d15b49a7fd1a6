"""The client library: provider choice from SGX_AESM_ADDR, one mode per process, retry within a deadline,
and end to end: quotes through the socket and in-process verify with dcap-qvl under the test root."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dcap_qvl
import pytest
from click.testing import CliRunner

from quotehelper.aesm.client import (
    InProcessProvider,
    ModeConflict,
    OutOfProcessProvider,
    SgxError,
    process_mode,
    provider_from_env,
)
from quotehelper.aesm.codes import SgxStatus
from quotehelper.cli import main
from quotehelper.errors import QuoteHelperError
from quotehelper.platform.sim import SimPlatform
from quotehelper.sgx.quote import parse_quote
from quotehelper.sgx.structs import TargetInfo
from tests.aesm.conftest import ThreadedService


def verify(platform: SimPlatform, quote: bytes) -> str:
    coll = dcap_qvl.QuoteCollateralV3.from_json(platform.collateral().to_dcap_qvl_json())
    return dcap_qvl.verify_with_root_ca(quote, coll, platform.root_ca_der(), int(time.time())).status


def test_provider_mode_follows_presence_of_sgx_aesm_addr(platform: SimPlatform) -> None:
    p = provider_from_env(platform.engine, socket_path="/nonexistent", env={"SGX_AESM_ADDR": ""})
    assert isinstance(p, OutOfProcessProvider) and p.mode == "out-of-process"  # empty value counts
    p2 = provider_from_env(platform.engine, socket_path="/nonexistent", env={"SGX_AESM_ADDR": "garbage"})
    assert isinstance(p2, OutOfProcessProvider)  # the value is never parsed
    with pytest.raises(ModeConflict, match="out-of-process"):
        provider_from_env(platform.engine, env={})


def test_in_process_provider_quotes_and_locks_the_mode(platform: SimPlatform) -> None:
    p = provider_from_env(platform.engine, env={})
    assert isinstance(p, InProcessProvider) and process_mode() == "in-process"
    enclave = platform.enclave()
    quote = p.get_quote(enclave.report(p.target_info(), b"in-process"))
    assert verify(platform, quote) == "UpToDate"
    with pytest.raises(ModeConflict, match="in-process"):
        OutOfProcessProvider("/nonexistent")
    with pytest.raises(QuoteHelperError, match="no engine"):
        provider_from_env(None, env={})


def test_end_to_end_through_the_socket_verifies_with_dcap_qvl(service: ThreadedService,
                                                              platform: SimPlatform) -> None:
    provider = provider_from_env(socket_path=service.sock, env={"SGX_AESM_ADDR": "1"})
    enclave = platform.enclave(mr_enclave=b"\x42" * 32, isv_prod_id=7, isv_svn=3)
    ti = provider.target_info()
    assert ti == platform.engine().target_info()
    assert provider.pub_key_id == platform.engine().init_quote(platform.engine().supported_att_key_ids()[0])[1]
    quote = provider.get_quote(enclave.report(ti, b"e2e" * 21))
    assert verify(platform, quote) == "UpToDate"
    body = parse_quote(quote).report_body
    assert (body.mr_enclave, body.isv_prod_id, body.isv_svn, body.report_data) == (
        b"\x42" * 32, 7, 3, b"e2e" * 21 + b"\0")


def test_missing_service_fails_after_the_deadline(tmp_path: Path) -> None:
    p = OutOfProcessProvider(str(tmp_path / "nobody"), deadline=0.3)
    t0 = time.monotonic()
    with pytest.raises(SgxError) as e:
        p.target_info()
    assert e.value.status == SgxStatus.ERROR_SERVICE_UNAVAILABLE and e.value.transport
    assert 0.1 < time.monotonic() - t0 < 3
    assert p.retries >= 2


def test_client_waits_for_a_service_that_starts_late(platform: SimPlatform, tmp_path: Path) -> None:
    sock = str(tmp_path / "late.socket")
    svc = ThreadedService(sock, platform)
    timer = threading.Timer(0.5, svc.start)
    timer.start()
    try:
        p = OutOfProcessProvider(sock, deadline=20.0)
        quote = p.get_quote(platform.enclave().report(p.target_info(), b"late"))
        assert parse_quote(quote).report_body.report_data[:4] == b"late"
        assert p.retry_reasons["SGX_ERROR_SERVICE_UNAVAILABLE"] > 0
    finally:
        timer.join()
        svc.stop()


def test_permanent_errors_are_not_retried(service: ThreadedService, platform: SimPlatform) -> None:
    p = OutOfProcessProvider(service.sock, deadline=20.0)
    wrong_target = platform.enclave().report(platform.enclave().target_info(), b"x")  # not for the QE
    p.target_info()
    t0 = time.monotonic()
    with pytest.raises(SgxError) as e:
        p.get_quote(wrong_target)
    assert (e.value.status, e.value.aesm_code, p.retries) == (SgxStatus.ERROR_MAC_MISMATCH, 47, 0)
    assert time.monotonic() - t0 < 2


def test_a_report_for_a_stale_target_is_remade_for_the_current_qe(service: ThreadedService,
                                                                   platform: SimPlatform) -> None:
    """As after a QE update: the provider's cached target info no longer names the QE that answers."""
    p = OutOfProcessProvider(service.sock, deadline=20.0)
    enclave = platform.enclave()
    current = p.target_info()
    p._target_info = enclave.target_info()  # a target the service's QE is not (its report key differs)
    made_for: list[bytes] = []

    def make_report(ti: TargetInfo) -> bytes:
        made_for.append(ti.mr_enclave)
        return enclave.report(ti, b"fresh").to_bytes()

    quote = p.get_quote_for(make_report)
    assert parse_quote(quote).report_body.report_data.startswith(b"fresh")
    assert made_for == [enclave.identity.mr_enclave, current.mr_enclave]  # remade once, for the real QE
    assert p.retry_reasons == {"AESM_INVALID_REPORT": 1}
    # And a plain get_quote with a stale report forgets the cached target, so the app's next one is fresh.
    p._target_info = enclave.target_info()
    with pytest.raises(SgxError):
        p.get_quote(enclave.report(enclave.target_info(), b"stale"))
    assert p.target_info().mr_enclave == current.mr_enclave


def test_quote_cli_out_of_process_and_in_process(service: ThreadedService, platform: SimPlatform,
                                                  tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "q.bin"
    r = runner.invoke(main, ["quote", "--platform", str(platform.platform_dir), "--socket", service.sock,
                             "--report-data", "cafe" * 32, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "out-of-process" in r.output
    assert parse_quote(out.read_bytes()).report_body.report_data == bytes.fromhex("cafe" * 32)
    assert verify(platform, out.read_bytes()) == "UpToDate"

    from quotehelper.aesm.client import reset_process_mode
    reset_process_mode()  # a new "process"
    r = runner.invoke(main, ["quote", "--platform", str(platform.platform_dir), "--report-data", "01",
                             "-o", str(out)], env={"SGX_AESM_ADDR": None})
    assert r.exit_code == 0, r.output
    assert "in-process" in r.output
    assert verify(platform, out.read_bytes()) == "UpToDate"
    r = runner.invoke(main, ["quote", "--platform", str(platform.platform_dir), "--report-data", "zz",
                             "-o", str(out)])
    assert r.exit_code != 0 and "hex" in r.output


def test_demo_command() -> None:
    r = CliRunner().invoke(main, ["demo", "--enclaves", "2", "--rounds", "2", "--tcb-status", "SWHardeningNeeded"],
                           env={"SGX_AESM_ADDR": None})
    assert r.exit_code == 0, r.output
    assert r.output.startswith("quotehelper demo: 2 simulated app enclaves")  # says what happens, first
    assert "rolling update" in r.output and "takes the socket over" in r.output
    rows = [line.split() for line in r.output.splitlines() if line.startswith(("payments", "key-broker"))]
    assert len(rows) == 2 and all(row[5] == "SWHardeningNeeded" and row[6] == "yes" for row in rows)
    # quotes = 1 before + `during` + 1 after, and each enclave did quote during the update...
    assert all(int(row[2]) == int(row[3]) + 2 and int(row[3]) > 0 for row in rows), r.output
    assert [row[10:] for row in rows] == [["-"], ["-"]], r.output  # ...and never had to retry: no gap
    total, during = sum(int(row[2]) for row in rows), sum(int(row[3]) for row in rows)
    assert (f"{total} quotes, {during} of them during one rolling update (take-over) of the service, "
            "all verified") in r.output
    legend = {line.split()[0] for line in r.output.split("retries\n", 1)[1].splitlines() if line.startswith("  ")}
    assert {"quotes", "during", "bytes", "dcap-qvl", "p50/max", "retries"} <= legend  # every column explained
    assert r.output.rstrip().splitlines()[-1].strip().startswith("quotehelper verify")  # ends with what's next
    assert "quotehelper demo --update restart" in r.output.split("next:", 1)[1]


def test_demo_command_with_a_restart() -> None:
    r = CliRunner().invoke(main, ["demo", "--enclaves", "2", "--rounds", "4", "--update", "restart"],
                           env={"SGX_AESM_ADDR": None})
    assert r.exit_code == 0, r.output
    rows = [line.split() for line in r.output.splitlines() if line.startswith(("payments", "key-broker"))]
    total, during = sum(int(row[2]) for row in rows), sum(int(row[3]) for row in rows)
    assert f"{total} quotes, {during} of them during one restart of the service, all verified" in r.output
    assert "quotehelper demo --update take-over" in r.output.split("next:", 1)[1]
