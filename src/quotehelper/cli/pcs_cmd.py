"""`quotehelper pcs ...` (the simulated Intel PCS) and `quotehelper collateral fetch`, plus the collateral
service options `verify` shares with them."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quotehelper.cli import common, main

EXIT_INPUT = 2


def collateral_service_options(f: Callable) -> Callable:
    """--pccs-url/--pcs, --cache, --offline, --update, --tcb-evaluation-data-number, TLS and timeout."""
    opts = [
        click.option("--pccs-url", metavar="URL", help="Collateral service (PCCS, Intel PCS, Azure THIM, or "
                     "`quotehelper pcs serve`) [default: $PCCS_URL, else pccs_url in /etc/sgx_default_qcnl.conf]."),
        click.option("--pcs", "use_intel_pcs", is_flag=True, help="Use Intel's PCS (api.trustedservices.intel.com)."),
        click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Verified collateral cache directory (SQLite), shared by the node's processes."),
        click.option("--offline", is_flag=True, help="Use only the --cache; never the network."),
        click.option("--update", type=click.Choice(["standard", "early"]), default="standard", show_default=True,
                     help="PCS update type of TCB info and QE identity."),
        click.option("--tcb-evaluation-data-number", "evaluation_number", type=click.IntRange(0, 2**31 - 1),
                     help="Ask for this TCB evaluation (tcbEvaluationDataNumber) instead of --update."),
        click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="PEM file of CAs trusted for the service's TLS certificate (e.g. a PCCS's own)."),
        click.option("--insecure", is_flag=True, help="Do not verify the service's TLS certificate (test PCCS only)."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.001), default=30.0, show_default=True,
                     help="Seconds to fetch one quote's collateral, retries included."),
    ]
    return functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


def service_url(pccs_url: str | None, use_intel_pcs: bool, required: bool) -> str | None:
    from quotehelper.pcs.config import default_pccs_url
    from quotehelper.pcs.urls import INTEL_PCS_URL

    if pccs_url and use_intel_pcs:
        raise click.UsageError("give --pccs-url or --pcs, not both")
    url = INTEL_PCS_URL if use_intel_pcs else pccs_url or default_pccs_url()
    if url is None and required:
        raise click.UsageError("no collateral service: give --pccs-url URL or --pcs, set $PCCS_URL, or "
                               "pccs_url in /etc/sgx_default_qcnl.conf (or --collateral FILE for verify)")
    return url


def make_client(url: str | None, verifier: Any, *, cache_dir: Path | None, offline: bool, update: str,
                evaluation_number: int | None, ca_bundle: Path | None, insecure: bool, timeout_s: float, **_: Any):
    """The CollateralClient for these options (its errors reach the user as exit 2 through the CLI)."""
    from quotehelper.pcs import CollateralCache, CollateralClient, PcsOptions

    if offline and cache_dir is None:
        raise click.UsageError("--offline needs --cache DIR")
    options = PcsOptions(base_url=url or "http://offline.invalid", update=update,
                         tcb_evaluation_data_number=evaluation_number, timeout_s=timeout_s,
                         ca_bundle=str(ca_bundle) if ca_bundle else None, insecure=insecure, offline=offline)
    return CollateralClient(options, cache=CollateralCache(cache_dir) if cache_dir else None, verifier=verifier)


def fail(e: Exception) -> None:
    code = getattr(getattr(e, "code", None), "value", type(e).__name__)
    click.echo(f"error: {code}: {getattr(e, 'message', e)}", err=True)
    sys.exit(EXIT_INPUT)


# ---- quotehelper collateral fetch ---------------------------------------------------------------------
@main.group("collateral")
def collateral_group() -> None:
    """Collateral for quotes from a PCS, PCCS or THIM, checked before it is written."""


@collateral_group.command("fetch")
@click.argument("quote", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@collateral_service_options
@click.option("--root-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust this root (DER or PEM) instead of Intel's production SGX Root CA.")
@click.option("-o", "--out-dir", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write: DIR/pcs/, the PCS-response folder `verify --collateral` reads, and "
                   "DIR/collateral.json (dcap-qvl QuoteCollateralV3); - prints that JSON on stdout instead.")
@click.option("--json", "as_json", is_flag=True, help="Print where each item came from as JSON.")
@common.logging_options()
def collateral_fetch(quote: Path, root_ca: Path | None, out_dir: Path, as_json: bool, **service: Any) -> None:
    """Fetch, verify and write the collateral QUOTE needs (PCK CRL, TCB info, QE identity, root CA CRL)."""
    from quotehelper.cli.common import read_binary_or_hex as _read_quote_file
    from quotehelper.pcs import PcsError
    from quotehelper.pcs.write import write_collateral_dir
    from quotehelper.verify import TrustAnchor, VerificationError, Verifier, VerifyOptions

    url = service_url(service.pop("pccs_url"), service.pop("use_intel_pcs"), required=not service["offline"])
    try:
        roots = (TrustAnchor.from_file(root_ca),) if root_ca else ()
        client = make_client(url, Verifier(VerifyOptions(trusted_roots=roots)), **service)
        fetched = client.fetch(_read_quote_file(quote))
    except (PcsError, VerificationError) as e:
        fail(e)
        return
    if str(out_dir) == "-":
        click.echo(fetched.collateral.to_dcap_qvl_json())
        for w in fetched.warnings:
            click.echo(f"warning: {w}", err=True)
        return
    files = write_collateral_dir(fetched, out_dir)
    report = {"fmspc": fetched.fmspc, "ca": fetched.ca, "tcbEvaluationDataNumber": fetched.tcb_evaluation_data_number,
              "sources": fetched.sources, "urls": fetched.urls, "warnings": list(fetched.warnings),
              "files": [str(p) for p in files]}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"FMSPC {fetched.fmspc}, {fetched.ca} CA, tcbEvaluationDataNumber {fetched.tcb_evaluation_data_number}")
    for name, src in fetched.sources.items():
        click.echo(f"  {name:12s} {src:10s} {fetched.urls.get(name, '')}")
    for w in fetched.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"wrote {len(files)} files to {out_dir}")


# ---- quotehelper pcs ... ------------------------------------------------------------------------------
@main.group("pcs")
def pcs_group() -> None:
    """A simulated Intel PCS for the software platform's test PKI."""


def _pki_option(f: Callable) -> Callable:
    return click.option("--pki", "pki_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                        help="The simulated PKI directory (`sim init` makes it beside the platform).")(f)


@pcs_group.command("serve")
@_pki_option
@click.option("--listen", default="127.0.0.1:8082", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0: any free port, printed at start).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS with this certificate (PEM); with --tls-key.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Its private key (PEM).")
@click.option("--platform", "platforms", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Register this software platform (repeatable; `sim init` registers new ones itself).")
@click.option("--api-key", help="The Ocp-Apim-Subscription-Key pckcerts requires [default: any non-empty key].")
@common.logging_options()
def pcs_serve(pki_dir: Path, listen: str, tls_cert: Path | None, tls_key: Path | None, platforms: tuple[Path, ...],
              api_key: str | None) -> None:
    """Serve PCS v4 (pckcert, pckcerts, pckcrl, tcb, qe/identity, qve/identity, tcbevaluationdatanumbers and the
    root CA CRL at the test root's CRL distribution point) for the PKI's registered platforms."""
    from quotehelper.pcs.serve import run_server

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("HOST:PORT, e.g. 127.0.0.1:8082", param_hint="--listen")
    run_server(pki_dir, host.strip("[]"), int(port), tls_cert=tls_cert, tls_key=tls_key, platforms=platforms,
               api_key=api_key)


@pcs_group.command("tcb-recovery")
@_pki_option
@click.option("--fmspc", help="Only this FMSPC (12 hex digits) [default: every registered FMSPC].")
@click.option("--early-only", is_flag=True, help="Serve the new evaluation to update=early only (until `pcs promote`).")
@common.logging_options()
def pcs_tcb_recovery(pki_dir: Path, fmspc: str | None, early_only: bool) -> None:
    """Publish TCB evaluation N+1, under which the registered platforms are OutOfDate (a TCB recovery)."""
    from quotehelper.platform.sim.tcbeval import recover

    n = recover(pki_dir, fmspc, early_only=early_only)
    click.echo(f"tcbEvaluationDataNumber {n} published ({'early only' if early_only else 'standard and early'})")


@pcs_group.command("promote")
@_pki_option
@click.option("--fmspc", help="Only this FMSPC [default: all].")
@common.logging_options()
def pcs_promote(pki_dir: Path, fmspc: str | None) -> None:
    """update=standard catches up with update=early."""
    from quotehelper.platform.sim.tcbeval import promote

    promote(pki_dir, fmspc)
    click.echo("standard = early")


# ---- quotehelper pccs ... -----------------------------------------------------------------------------
@main.group("pccs")
def pccs_group() -> None:
    """A PCCS-compatible caching service (Intel PCCS's API; SQLite or PostgreSQL)."""


@pccs_group.command("serve")
@click.option("--config", "config_paths", required=True, multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON configuration, keys as Intel PCCS's config.json (README: PCCS). Repeatable: a later "
                   "file's keys override (objects: merge into) the earlier ones', e.g. secrets from another file.")
@common.logging_options(default=logging.INFO)
def pccs_serve(config_paths: tuple[Path, ...], verbose: int) -> None:
    """Serve the PCCS API with the caching mode, upstream and storage the configuration names. The log level
    is the configuration's LogLevel unless -v says otherwise."""
    from quotehelper.pccs.config import PccsConfigError, PccsOptions
    from quotehelper.pccs.serve import run

    try:
        options = PccsOptions.load(*config_paths)
    except PccsConfigError as e:
        fail(e)
        return
    run(options, log_level_from_config=verbose == 0)


@pccs_group.command("hash-token")
@common.logging_options()
def pccs_hash_token() -> None:
    """Read a token on standard input; print its SHA-512 (for UserTokenHash / AdminTokenHash)."""
    import hashlib

    token = sys.stdin.readline().rstrip("\n")
    if not token:
        raise click.UsageError("give the token on standard input")
    click.echo(hashlib.sha512(token.encode()).hexdigest())
