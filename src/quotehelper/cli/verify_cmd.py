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
from quotehelper.cli import main
from quotehelper.cli.inspect_cmd import _read_quote_file
from quotehelper.verify import (
    Collateral,
    ErrorCode,
    Policy,
    TrustAnchor,
    VerificationError,
    Verifier,
    VerifyOptions,
)
from quotehelper.verify.collateral import load_collateral
from quotehelper.verify.verdict import Verdict

EXIT_OK, EXIT_INVALID, EXIT_INPUT, EXIT_POLICY = 0, 1, 2, 3
_SKIP_SUFFIXES = {".json", ".pem", ".der", ".crl", ".md", ".txt", ".yaml", ".yml", ".jsonl"}


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


def _batch_code(codes: list[int]) -> int:
    for c in (EXIT_INVALID, EXIT_INPUT, EXIT_POLICY):
        if c in codes:
            return c
    return EXIT_OK


def _run_batch(verifier: Verifier, directory: Path, collateral: Collateral, out: Any) -> int:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() not in _SKIP_SUFFIXES)
    codes: list[int] = []
    counts = {"accepted": 0, "rejected": 0, "invalid": 0, "not quotes": 0}
    with click.progressbar(files, label="verifying", file=sys.stderr, show_pos=True) as bar:
        for path in bar:
            coll = collateral
            own = path.with_name(path.name + ".collateral.json")  # per-quote collateral, if present
            try:
                if own.is_file():
                    coll = load_collateral(own)
                v = verifier.verify(_read_quote_file(path), coll)
            except VerificationError as e:
                v = Verdict(valid=False, error=e)
            except OSError as e:
                click.echo(f"error: cannot read {path}: {e}", err=True)
                codes.append(EXIT_INPUT)
                continue
            if v.error is not None and v.error.code is ErrorCode.NOT_A_QUOTE:
                counts["not quotes"] += 1  # a script or note beside the quotes: skipped, not an invalid quote
                continue
            codes.append(v.exit_code())
            counts["accepted" if v.accepted else "invalid" if v.error else "rejected"] += 1
            out.write(json.dumps({"file": str(path), **v.to_dict()}) + "\n")
    skipped = f", {counts['not quotes']} files skipped (not quotes)" if counts["not quotes"] else ""
    click.echo(f"{len(codes)} quotes: {counts['accepted']} accepted, {counts['rejected']} rejected by policy, "
               f"{counts['invalid']} invalid{skipped}", err=True)
    return _batch_code(codes)


@main.command("verify")
@click.argument("quote", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--collateral", "collateral_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="dcap-qvl QuoteCollateralV3 JSON, or a folder of saved PCS v4 responses.")
@click.option("--root-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust this root (DER or PEM) instead of Intel's production SGX Root CA.")
@click.option("--now", "now_text", help="Verification time: unix seconds or ISO 8601 (default: now).")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Appraisal policy (YAML or JSON).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option("--batch", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Verify every quote file in this folder; JSON lines to --out (default stdout).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="JSON-lines output for --batch.")
def verify_cmd(quote: Path | None, collateral_path: Path, root_ca: Path | None, now_text: str | None,
               policy_path: Path | None, as_json: bool, batch: Path | None, out: Path | None) -> None:
    """Verify a DCAP ECDSA SGX QUOTE (binary or hex) against its collateral."""
    if (quote is None) == (batch is None):
        raise click.UsageError("give either QUOTE or --batch DIR")
    now = parse_time(now_text) if now_text else None
    try:
        roots = (TrustAnchor.from_file(root_ca),) if root_ca else ()
        policy = Policy.load(policy_path) if policy_path else None
        collateral = load_collateral(collateral_path)
    except VerificationError as e:
        _fail_input(e)
        return
    verifier = Verifier(VerifyOptions(trusted_roots=roots, now=now, policy=policy))
    if batch is not None:
        if out is None:
            sys.exit(_run_batch(verifier, batch, collateral, sys.stdout))
        with out.open("w") as fh:
            sys.exit(_run_batch(verifier, batch, collateral, fh))
    assert quote is not None
    v = verifier.verify(_read_quote_file(quote), collateral)
    if as_json:
        click.echo(json.dumps(v.to_dict(), indent=2))
    else:
        _print_verdict(v, str(quote))
    sys.exit(v.exit_code())
