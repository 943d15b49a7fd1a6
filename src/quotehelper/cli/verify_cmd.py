"""`quotehelper verify`: DCAP quote verification from the command line.

Exit codes: 0 valid and accepted by the policy, 1 invalid quote, 2 unusable input (files, collateral,
options), 3 valid but rejected by the policy. `--batch DIR` writes one JSON line per quote.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from quotehelper import inputs
from quotehelper.cli import common, main
from quotehelper.cli.common import read_binary_or_hex as _read_quote_file
from quotehelper.cli.pcs_cmd import collateral_service_options
from quotehelper.verify import (
    Policy,
    TrustAnchor,
    VerificationError,
    Verifier,
    VerifyOptions,
)
from quotehelper.verify.collateral import load_collateral
from quotehelper.verify.verdict import Verdict

EXIT_OK, EXIT_INVALID, EXIT_INPUT, EXIT_POLICY = 0, 1, 2, 3  # verify_batch and the tests use these


def parse_time(value: str) -> datetime:
    """Unix seconds or ISO 8601 (a missing zone means UTC); click's usage error (exit 2) otherwise."""
    try:
        return inputs.parse_time(value, "--now")
    except inputs.InputError as e:
        raise click.BadParameter(e.message, param_hint="--now") from e


def _fail_input(e: VerificationError) -> None:
    click.echo(f"error: {e.code.value}: {e.message}", err=True)
    sys.exit(EXIT_INPUT)


def _print_verdict(v: Verdict, source: str) -> None:
    click.echo(f"{source}: {v.summary()}")
    if v.error is not None:
        for k, val in v.error.detail.items():
            click.echo(f"  {k}: {val}")
        return
    e = v.enclave
    assert e is not None
    rows = [("platform / QE status", f"{v.platform_status} / {v.qe_status}"),
            ("TCB level date", v.tcb_date.isoformat() if v.tcb_date else "-"),
            ("FMSPC / PCE-ID / CA", f"{v.fmspc} / {v.pce_id} / {v.ca_type}"), ("PPID", v.ppid),
            ("MRENCLAVE", e.mr_enclave.hex()), ("MRSIGNER", e.mr_signer.hex()),
            ("ISVPRODID / ISVSVN", f"{e.isv_prod_id} / {e.isv_svn}"),
            ("attributes", f"{e.attributes.hex()} (debug: {e.debug})"), ("report data", e.report_data.hex()),
            ("collateral valid", f"{v.collateral_not_before} .. {v.collateral_not_after}")]
    for k, val in rows:
        click.echo(f"  {k:22s} {val}")
    if v.policy_applied:
        for r in v.policy:
            click.echo(f"  policy {'PASS' if r.passed else 'FAIL'} {r.rule}: {r.detail}")


@main.command("verify")
@click.argument("quote", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--collateral", "collateral_path", type=click.Path(exists=True, path_type=Path),
              help="dcap-qvl QuoteCollateralV3 JSON, or a folder of saved PCS v4 responses [default: fetch it "
                   "from the collateral service].")
@collateral_service_options
@click.option("--root-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust this root (DER or PEM) instead of Intel's production SGX Root CA.")
@click.option("--now", "now", type=common.TIME, help="Verification time: unix seconds or ISO 8601, no zone = UTC "
              "[default: now].")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Appraisal policy (YAML or JSON).")
@common.json_option
@click.option("--batch", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Verify every quote file in this folder; JSON lines to -o (default stdout).")
@common.output_option("JSON-lines output of --batch", aliases=("--out",))
@click.option("--jobs", type=click.IntRange(min=1), help="Processes for --batch [default: the CPUs this process "
              "may use].")
@common.logging_options()
def verify_cmd(quote: Path | None, collateral_path: Path | None, root_ca: Path | None, now: datetime | None,
               policy_path: Path | None, as_json: bool, batch: Path | None, output: str | None, jobs: int | None,
               **service: Any) -> None:
    """Verify a DCAP ECDSA SGX QUOTE (binary or hex) against its collateral: from --collateral files, or
    fetched (and verified before it is cached) from a PCCS, Intel's PCS or Azure THIM."""
    from quotehelper.cli.pcs_cmd import fail, make_client, service_url

    if (quote is None) == (batch is None):
        raise click.UsageError("give either QUOTE or --batch DIR")
    if jobs is not None and batch is None:
        raise click.UsageError("--jobs goes with --batch")
    fetching = [o for o, v in (("--pccs-url", service["pccs_url"]), ("--pcs", service["use_intel_pcs"]),
                               ("--cache", service["cache_dir"]), ("--offline", service["offline"])) if v]
    if collateral_path is not None and fetching:
        raise click.UsageError(f"--collateral reads files; {', '.join(fetching)} fetch from a service: give one or "
                               "the other")
    url = None
    if collateral_path is None:
        url = service_url(service.pop("pccs_url"), service.pop("use_intel_pcs"), required=not service["offline"])
    try:
        roots = (TrustAnchor.from_file(root_ca),) if root_ca else ()
        policy = Policy.load(policy_path) if policy_path else None
        collateral = load_collateral(collateral_path) if collateral_path else None
    except VerificationError as e:
        _fail_input(e)
        return
    verifier = Verifier(VerifyOptions(trusted_roots=roots, now=now, policy=policy))
    client = None if collateral is not None else make_client(url, verifier, **service)
    if batch is not None:
        from quotehelper.cli.verify_batch import BatchSettings, run_batch
        from quotehelper.cpus import usable_cpus

        settings = BatchSettings(tuple(r.der for r in roots), now, policy)
        kw = {"collateral": collateral, "client": client, "jobs": jobs or usable_cpus()}
        if output in (None, "-"):
            sys.exit(run_batch(batch, sys.stdout, settings, **kw))
        with Path(output).open("w") as fh:
            sys.exit(run_batch(batch, fh, settings, **kw))
    assert quote is not None
    raw = _read_quote_file(quote)
    if collateral is None:
        from quotehelper.pcs import PcsError
        from quotehelper.verify.quote_checks import load_quote

        try:
            load_quote(raw)  # a damaged quote is invalid (exit 1), not a fetch failure
        except VerificationError as e:
            _finish(Verdict(valid=False, error=e), str(quote), as_json)
            return
        try:
            fetched = client.fetch(raw)
        except PcsError as e:
            fail(e)
            return
        collateral = fetched.collateral
        for w in fetched.warnings:
            click.echo(f"warning: {w}", err=True)
    _finish(verifier.verify(raw, collateral), str(quote), as_json)


def _finish(v: Verdict, source: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(v.to_dict(), indent=2))
    else:
        _print_verdict(v, source)
    sys.exit(v.exit_code())
