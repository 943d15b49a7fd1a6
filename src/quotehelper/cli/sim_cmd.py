"""`quotehelper sim ...`: create and use a software SGX platform (quotehelper.platform.sim)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quotehelper.cli import common, main
from quotehelper.cli.common import HexBytes, friendly, platform_option, write_output
from quotehelper.platform.sim import TCB_STATUSES, SimEnclave, SimPlatform, default_platform_dir
from quotehelper.sgx.structs import (
    FLAG_DEBUG,
    FLAG_INITTED,
    FLAG_MODE64BIT,
    TARGET_INFO_SIZE,
    Attributes,
    TargetInfo,
)


def _resolve(platform_dir: Path | None) -> Path:
    return platform_dir if platform_dir is not None else default_platform_dir()


def _enclave_options(fn: Callable[..., None]) -> Callable[..., None]:
    opts = [
        click.option("--mr-enclave", type=HexBytes(32), default=None, help="App MRENCLAVE (32 bytes hex)."),
        click.option("--mr-signer", type=HexBytes(32), default=None, help="App MRSIGNER (32 bytes hex)."),
        click.option("--isv-prod-id", type=click.IntRange(0, 0xFFFF), default=0, show_default=True),
        click.option("--isv-svn", type=click.IntRange(0, 0xFFFF), default=0, show_default=True),
        click.option("--debug", is_flag=True, help="Set the DEBUG attribute (verifiers reject such quotes)."),
        click.option("--config-id", type=HexBytes(max_size=64), default="", help="CONFIGID, up to 64 bytes hex."),
        click.option("--config-svn", type=click.IntRange(0, 0xFFFF), default=0, show_default=True),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _enclave(plat: SimPlatform, *, mr_enclave: bytes | None, mr_signer: bytes | None, isv_prod_id: int,
             isv_svn: int, debug: bool, config_id: bytes, config_svn: int) -> SimEnclave:
    flags = FLAG_INITTED | FLAG_MODE64BIT | (FLAG_DEBUG if debug else 0)
    return plat.enclave(mr_enclave=mr_enclave, mr_signer=mr_signer, isv_prod_id=isv_prod_id, isv_svn=isv_svn,
                        attributes=Attributes(flags, 0x3), config_id=config_id.ljust(64, b"\0"),
                        config_svn=config_svn)


def _read_target_info(path: Path) -> TargetInfo:
    data = common.read_binary_or_hex(path)  # also the 512 bytes as hex text
    if len(data) != TARGET_INFO_SIZE:
        raise click.ClickException(f"{path}: a target info is {TARGET_INFO_SIZE} bytes (binary or hex), "
                                   f"this file has {len(data)}")
    return TargetInfo.parse(data)


@main.group()
def sim() -> None:
    """Software SGX platform: simulated CPU, QE3/PCE, test PKI and signed collateral (no SGX hardware)."""


_INIT_FLAGS = {"tcb_status": "--tcb-status", "advisory_ids": "--advisory-id", "fmspc": "--fmspc", "ca": "--ca",
               "sdk_compatible": "--sdk-compatible", "pki_dir": "--pki"}


def _refuse_changes(plat: SimPlatform, **given: Any) -> None:
    """Options the user typed (not defaults) that an existing platform does not have -> exit 2."""
    ctx = click.get_current_context()
    have = {"tcb_status": plat.tcb_status, "advisory_ids": tuple(plat.advisory_ids), "fmspc": plat.fmspc,
            "ca": plat.ca, "sdk_compatible": plat.cpu.is_sdk_compatible,
            "pki_dir": Path(plat.pki_dir).resolve()}
    for name, value in given.items():
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.COMMANDLINE:
            continue
        want = Path(value).resolve() if name == "pki_dir" else tuple(value) if name == "advisory_ids" else value
        if want != have[name]:
            shown = have[name].hex().upper() if isinstance(have[name], bytes) else have[name]
            raise click.BadParameter(f"platform {plat.platform_dir} exists with {shown}; init does not change an "
                                     "existing platform (remove it, or give another --platform)",
                                     param_hint=_INIT_FLAGS[name])


@sim.command("init")
@platform_option()
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Simulated-Intel PKI directory, shared by platforms [default: sibling 'pki' of the platform].")
@click.option("--tcb-status", type=click.Choice(TCB_STATUSES), default="UpToDate", show_default=True,
              help="TCB status verifiers will report for this platform.")
@click.option("--advisory-id", "advisory_ids", multiple=True,
              help="Advisory ID of the platform's TCB level (repeatable) [default: typical IDs for the status].")
@click.option("--fmspc", type=HexBytes(6), default=None, help="FMSPC, 6 bytes hex [default: 00906ED50000].")
@click.option("--ca", type=click.Choice(["processor", "platform"]), default="processor", show_default=True,
              help="Which PCK CA issues the platform's PCK certificate.")
@click.option("--sdk-compatible", is_flag=True,
              help="Use the SGX SDK simulation-mode CPU constants, so SDK simulation-mode enclaves' reports verify.")
@click.option("--pcs-url", metavar="URL", help="Base URL of the simulated PCS that a new PKI's CRL distribution "
              "points name [default: http://127.0.0.1:8082, `pcs serve`'s default]; ignored for an existing PKI.")
@common.json_option
@friendly
@common.logging_options()
def init_cmd(platform_dir: Path | None, pki_dir: Path | None, tcb_status: str, advisory_ids: tuple[str, ...],
             fmspc: bytes | None, ca: str, sdk_compatible: bool, pcs_url: str | None, as_json: bool) -> None:
    """Create a simulated platform (and its PKI). An existing platform is kept as it is: running init again
    is harmless, but an option given explicitly that differs from the existing platform (say another
    --tcb-status) is refused (exit 2) instead of silently ignored; use a new --platform directory."""
    target = _resolve(platform_dir)
    existed = (target / "platform.json").exists()
    if existed:
        _refuse_changes(SimPlatform.open(target), tcb_status=tcb_status, advisory_ids=advisory_ids, fmspc=fmspc,
                        ca=ca, sdk_compatible=sdk_compatible, pki_dir=pki_dir)
    plat = SimPlatform.create(target, pki_dir=pki_dir, tcb_status=tcb_status, fmspc=fmspc,
                              sdk_compatible=sdk_compatible, advisory_ids=list(advisory_ids) or None, ca=ca,
                              pcs_url=pcs_url)
    if as_json:
        click.echo(json.dumps({"created": not existed, **_show(plat)}, indent=2))
        return
    click.echo(f"{'existing' if existed else 'created'} platform {plat.platform_dir}")
    click.echo(f"  PKI {plat.pki_dir}  FMSPC {plat.fmspc.hex().upper()}  PCK CA {plat.ca}")
    advisories = ", ".join(plat.advisory_ids) or "none"
    click.echo(f"  TCB status {plat.tcb_status} (advisories: {advisories})"
               f"{'  SDK-simulation compatible' if plat.cpu.is_sdk_compatible else ''}")


@sim.command("target-info")
@platform_option()
@common.option("-o", "--output", "out", required=True, metavar="PATH",
               help="Target info file (512 bytes); - writes hex to stdout.")
@friendly
@common.logging_options()
def target_info_cmd(platform_dir: Path | None, out: str) -> None:
    """Write the QE's target info (what an app enclave EREPORTs to for quoting)."""
    plat = SimPlatform.open(_resolve(platform_dir))
    write_output(out, plat.engine().target_info().to_bytes())


@sim.command("report")
@platform_option()
@click.option("--target-info", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="Target info of the enclave the report is for (512 bytes binary or hex).")
@click.option("--report-data", type=HexBytes(max_size=64), default="", help="Up to 64 bytes hex, zero-padded.")
@_enclave_options
@common.option("-o", "--output", "out", required=True, metavar="PATH",
               help="REPORT file (432 bytes); - writes hex to stdout.")
@friendly
@common.logging_options()
def report_cmd(platform_dir: Path | None, target_info: Path, report_data: bytes, out: str,
               **identity: Any) -> None:
    """EREPORT by a simulated app enclave, MACed for the given target."""
    plat = SimPlatform.open(_resolve(platform_dir))
    enclave = _enclave(plat, **identity)
    write_output(out, enclave.report(_read_target_info(target_info), report_data).to_bytes())


@sim.command("quote")
@platform_option()
@click.option("--report-data", type=HexBytes(max_size=64), default="", help="Up to 64 bytes hex, zero-padded.")
@_enclave_options
@common.option("-o", "--output", "out", required=True, metavar="PATH",
               help="Quote file (binary); - writes hex to stdout.")
@friendly
@common.logging_options()
def quote_cmd(platform_dir: Path | None, report_data: bytes, out: str, **identity: Any) -> None:
    """Quote in-process: a simulated app enclave's report, quoted by the platform's QE3."""
    plat = SimPlatform.open(_resolve(platform_dir))
    enclave = _enclave(plat, **identity)
    write_output(out, plat.quote(report_data, enclave))


@sim.command("export")
@platform_option()
@common.out_dir_option("Directory for root_ca.pem/.der, collateral.json and pcs/", aliases=("--out",))
@common.json_option
@friendly
@common.logging_options()
def export_cmd(platform_dir: Path | None, out_dir: Path, as_json: bool) -> None:
    """Write the trust anchor and fresh signed collateral for verifiers; print the files written."""
    plat = SimPlatform.open(_resolve(platform_dir))
    written = [str(path) for path in plat.export(out_dir)]
    click.echo(json.dumps(written) if as_json else "\n".join(written))


@sim.command("revoke-pck")
@platform_option()
@common.json_option
@friendly
@common.logging_options()
def revoke_cmd(platform_dir: Path | None, as_json: bool) -> None:
    """Put the platform's PCK certificate on its CA's CRL (collateral exported afterwards shows it)."""
    plat = SimPlatform.open(_resolve(platform_dir))
    plat.pki.revoke_pck(plat)
    serial = f"{plat.pck_cert.serial_number:x}"
    click.echo(json.dumps({"revoked_serial": serial, "ca": plat.ca}) if as_json
               else f"revoked PCK certificate serial {serial} ({plat.ca} CA)")


@sim.command("show")
@platform_option()
@common.json_option
@friendly
@common.logging_options()
def show_cmd(platform_dir: Path | None, as_json: bool) -> None:  # noqa: ARG001 - JSON is its only form
    """Print the platform's configuration as JSON (no secrets); --json is accepted like everywhere."""
    click.echo(json.dumps(_show(SimPlatform.open(_resolve(platform_dir))), indent=2))


def _show(plat: SimPlatform) -> dict[str, Any]:
    info = dict(plat.config)
    info.update(platform_dir=str(plat.platform_dir), cpu_svn=plat.cpu.cpu_svn.hex(),
                sdk_compatible=plat.cpu.is_sdk_compatible, pck_serial=f"{plat.pck_cert.serial_number:x}",
                attestation_key=(plat.platform_dir / "attestation_key.sealed").exists())
    return info
