"""`quotehelper ratls cert|verify|serve|connect`: RA-TLS certificates and attested TLS (quotehelper.ratls).

Exit codes of verify/serve --once/connect: 0 the peer was accepted, 1 refused (evidence, binding or
quote invalid), 2 unusable input (files, options, no collateral), 3 valid but refused by the policy.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quotehelper.cli import common, main
from quotehelper.cli.common import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_POLICY,
    HEX,
    TIME,
    json_option,
    output_option,
    platform_option,
    socket_option,
    timeout_option,
)
from quotehelper.cli.sim_cmd import _enclave, _enclave_options
from quotehelper.errors import QuoteHelperError

EXIT_REFUSED = 1
_INPUT_CODES = {"OPTIONS_INVALID", "CERT_MALFORMED", "COLLATERAL_UNAVAILABLE", "ENDORSEMENTS_MALFORMED"}


def _exit_code(code: str | None) -> int:
    if code is None:
        return EXIT_OK
    return EXIT_POLICY if code == "POLICY_REJECTED" else EXIT_INPUT if code in _INPUT_CODES else EXIT_REFUSED


def _making_options(fn: Callable[..., None]) -> Callable[..., None]:
    opts = [
        platform_option(),
        socket_option("Quote through the service on this socket (implies out-of-process; default: the AESM "
                      "socket when SGX_AESM_ADDR is set, else in-process on --platform).", default=None),
        _enclave_options,
        click.option("--curve", type=click.Choice(["P-256", "P-384"]), default="P-256", show_default=True),
        click.option("--legacy", type=click.Choice(["intel", "gramine"]), default=None,
                     help="Also write a legacy extension (intel: the same quote; gramine: a second quote "
                          "over SHA-256(SPKI))."),
        click.option("--cert-nonce", type=HEX, default=None, help="Nonce claim to put in our certificate (hex)."),
        click.option("--endorsements", "endorsements_path", type=click.Path(exists=True, path_type=Path),
                     default=None, help="Collateral (dcap-qvl JSON or PCS folder) to staple into our certificate."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _verifying_options(fn: Callable[..., None]) -> Callable[..., None]:
    opts = [
        click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The peer's appraisal policy (the verifier's YAML/JSON; default: any TCB status but "
                          "Revoked, no debug enclaves)."),
        click.option("--collateral", "collateral_path", type=click.Path(exists=True, path_type=Path),
                     help="Collateral for the peer's quote when its certificate has no endorsements."),
        click.option("--root-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Trust this root (DER or PEM) instead of Intel's SGX Root CA."),
        click.option("--nonce", type=HEX, default=None, help="Require this nonce claim in the peer's certificate."),
        click.option("--no-endorsements", is_flag=True, help="Ignore the peer's endorsements extension."),
        click.option("--ignore-cert-dates", is_flag=True,
                     help="Do not check the certificate's own notBefore/notAfter (old test certificates)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


_VERIFYING = ("policy_path", "collateral_path", "root_ca", "nonce", "no_endorsements", "ignore_cert_dates")


def _split(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A command's keyword arguments -> (making options, verifying options)."""
    verifying = {k: kw.pop(k) for k in _VERIFYING}
    return kw, verifying


def _peer_verifier(policy_path: Path | None, collateral_path: Path | None, root_ca: Path | None,
                   nonce: bytes | None, no_endorsements: bool, ignore_cert_dates: bool, now: Any = None) -> Any:
    from quotehelper.ratls import FileCollateral, RatlsOptions, RatlsVerifier
    from quotehelper.verify import Policy, TrustAnchor, Verifier, VerifyOptions

    options = RatlsOptions(policy=Policy.load(policy_path) if policy_path else None, require_nonce=nonce is not None,
                           use_endorsements=not no_endorsements, check_cert_dates=not ignore_cert_dates)
    roots = (TrustAnchor.from_file(root_ca),) if root_ca else ()
    return RatlsVerifier(options, verifier=Verifier(VerifyOptions(trusted_roots=roots, now=now)),
                         collateral=FileCollateral(collateral_path) if collateral_path else None)


def _credentials(platform_dir: Path | None, socket_path: str | None, curve: str, legacy: str | None,
                 cert_nonce: bytes | None, endorsements_path: Path | None, timeout: float, **enclave: Any) -> Any:
    from quotehelper.aesm.client import provider_from_env
    from quotehelper.platform.sim import SimPlatform, default_platform_dir
    from quotehelper.ratls import RatlsOptions, make_certificate, provider_quoter
    from quotehelper.verify import load_collateral

    plat = SimPlatform.open(platform_dir or default_platform_dir())
    env = dict(os.environ)
    if socket_path:
        env.setdefault("SGX_AESM_ADDR", "1")
    provider = provider_from_env(plat.engine, socket_path=socket_path, env=env, deadline=timeout)
    quoter = provider_quoter(provider, _enclave(plat, **enclave).report, timeout)
    coll = load_collateral(endorsements_path) if endorsements_path else None
    return make_certificate(quoter, RatlsOptions(curve=curve, legacy_extension=legacy), nonce=cert_nonce,
                            collateral=coll)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _fail(e: BaseException) -> None:
    code = getattr(getattr(e, "code", None), "value", None)
    click.echo(f"error: {e}", err=True)
    sys.exit(_exit_code(code) if code else EXIT_INPUT)


@main.group()
def ratls() -> None:
    """RA-TLS: certificates carrying a quote that binds their key, and attested TLS between workloads."""


@ratls.command("cert")
@_making_options
@output_option("Certificate written (PEM)", required=True)
@click.option("--key-output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Private key file written (PEM, mode 0600) [default: OUTPUT with suffix .key; needed "
                   "with -o -].")
@timeout_option("to keep retrying the quote service (restarting, busy)", 30.0)
@common.logging_options()
def cert_cmd(output: str, key_output: Path | None, **kw: Any) -> None:
    """A new key and its RA-TLS certificate, quoted by a (simulated) app enclave through the quote provider."""
    if output == "-" and key_output is None:
        raise click.UsageError("-o - writes the certificate to stdout: give --key-output for the key")
    key_path = key_output or Path(output).with_suffix(".key")
    try:
        creds = _credentials(**kw)
        if output == "-":
            creds.save(os.devnull, key_path)
            click.echo(creds.cert_pem().decode(), nl=False)
        else:
            creds.save(output, key_path)
    except (QuoteHelperError, OSError) as e:
        _fail(e)
    click.echo(f"wrote {output if output != '-' else 'the certificate to stdout'} and {key_path}", err=True)


@ratls.command("verify")
@click.argument("cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_verifying_options
@click.option("--now", type=TIME, default=None, help="Verification time: unix seconds or ISO 8601 (default: now).")
@json_option
@common.logging_options()
def verify_cmd(cert: Path, now: Any, as_json: bool, **kw: Any) -> None:
    """Judge an RA-TLS certificate (ours, Gramine's, the Intel SGX SDK's, rats-tls's) against a policy."""
    try:
        verifier = _peer_verifier(**kw, now=now)
        result = verifier.verify(cert.read_bytes(), nonce=kw["nonce"], now=now)
    except (QuoteHelperError, OSError) as e:
        _fail(e)
        return
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{cert}: {result.summary()}")
        if result.error is not None and result.error.detail:
            for k, v in result.error.detail.items():
                click.echo(f"  {k}: {v}")
    sys.exit(_exit_code(result.code))


@ratls.command("serve")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT to listen on (port 0: any).")
@_making_options
@_verifying_options
@click.option("--one-way", is_flag=True, help="Do not ask clients for an RA-TLS certificate.")
@click.option("--once", is_flag=True, help="Serve one connection, then exit with its verdict's exit code.")
@timeout_option("for the quote, and for each connection's handshake and I/O", 30.0)
@common.logging_options()
def serve_cmd(listen: str, one_way: bool, once: bool, timeout: float, **kw: Any) -> None:
    """Attested TLS server: reads one line from each client and answers it (one connection at a time)."""
    from quotehelper.ratls import RatlsError, tls

    making, verifying = _split(kw)
    nonce = verifying["nonce"]
    try:
        creds = _credentials(timeout=timeout, **making)
        verifier = None if one_way else _peer_verifier(**verifying)
        ctx = tls.server_context(creds, verifier)
        listener = socket.create_server(_address(listen))
    except (QuoteHelperError, OSError) as e:
        _fail(e)
        return
    host, port = listener.getsockname()[:2]
    click.echo(f"listening on {host}:{port}", err=True)
    while True:
        try:
            with tls.accept(listener, ctx, verifier, nonce=nonce, timeout=timeout) as conn:
                who = conn.peer.summary() if conn.peer else "unattested client (one-way)"
                click.echo(f"peer: {who}", err=True)
                line = conn.recv_line().rstrip(b"\n")
                click.echo(f"received: {line.decode(errors='replace')}", err=True)
                conn.sendall(b"server got: " + line + b"\n")
            code = EXIT_OK
        except (RatlsError, OSError, TimeoutError) as e:
            click.echo(f"refused: {e}", err=True)
            code = _exit_code(getattr(getattr(e, "code", None), "value", None)) or EXIT_REFUSED
        if once:
            listener.close()
            sys.exit(code)


@ratls.command("connect")
@click.argument("address")
@_making_options
@_verifying_options
@click.option("--one-way", is_flag=True, help="Present no certificate (the server must not ask for one).")
@click.option("--message", default="hello", show_default=True, help="Line sent once the server is accepted.")
@timeout_option("for the quote, the connection (refused connections are retried), the handshake and the reply",
                30.0)
@common.logging_options()
def connect_cmd(address: str, one_way: bool, message: str, timeout: float, **kw: Any) -> None:
    """Attested TLS client: judges the server's certificate, then sends --message and prints the reply."""
    from quotehelper.ratls import RatlsCode, RatlsError, tls

    making, verifying = _split(kw)
    try:
        creds = None if one_way else _credentials(timeout=timeout, **making)
        verifier = _peer_verifier(**verifying)
        ctx, end = tls.client_context(verifier, creds), time.monotonic() + timeout
        while True:  # a server still starting (a pod not yet listening) is waited for, within --timeout
            try:
                conn = tls.connect(_address(address), ctx, verifier, nonce=verifying["nonce"], timeout=timeout)
                break
            except ConnectionRefusedError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)
        with conn:
            assert conn.peer is not None
            click.echo(f"peer: {conn.peer.summary()}", err=True)
            conn.sendall(message.encode() + b"\n")
            reply = conn.recv_line()
            if not reply:
                raise RatlsError(RatlsCode.REFUSED_BY_PEER, "the server closed the connection without "
                                 "answering (did it refuse our certificate?)")
            click.echo(reply.decode(errors="replace").rstrip("\n"))
    except (QuoteHelperError, OSError, TimeoutError) as e:
        _fail(e)
