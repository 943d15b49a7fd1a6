"""Issue 11: one CLI vocabulary (README "Command-line vocabulary"). Walks every command and checks the
spellings, and runs the reproducers of the old drift."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from quotehelper.cli import COMMAND_MODULES, main
from quotehelper.cli.common import AliasOption

# Old spellings: still accepted where a manifest or a user may have them, never shown.
RETIRED = {"--platform-dir", "--out", "--deadline"}
# Commands that print a result (not a stream of logs or a file written): each offers --json.
# pccs serve takes its log level from the PCCS configuration (LogLevel, as Intel's PCCS does).
OWN_LOGGING = {"pccs serve"}
PRINTS_A_RESULT = {"verify", "inspect", "health", "sim init", "sim show", "sim export", "sim revoke-pck",
                   "ratls verify", "collateral fetch"}


def commands() -> dict[str, click.Command]:
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"quotehelper.cli.{module}")
    out: dict[str, click.Command] = {}

    def walk(prefix: str, cmd: click.Command) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            out[prefix] = cmd
    walk("", main)
    return out


COMMANDS = commands()


def shown(cmd: click.Command) -> dict[str, click.Option]:
    """Every option name --help shows, to its option."""
    names = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            hidden = p.hidden_aliases if isinstance(p, AliasOption) else frozenset()
            names.update({n: p for n in [*p.opts, *p.secondary_opts] if n not in hidden})
    return names


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_speaks_the_vocabulary(name: str) -> None:
    opts = shown(COMMANDS[name])
    assert not RETIRED & set(opts), f"{name} shows a retired spelling"
    assert "--platform-dir" not in opts and "--deadline" not in opts
    for flag in ("-v", "--log-format"):  # logging: everywhere
        assert flag in opts or name in OWN_LOGGING, f"{name} has no {flag}"
    if "--timeout" in opts:
        assert opts["--timeout"].metavar == "SECONDS" or "econds" in (opts["--timeout"].help or ""), name
    if "--output" in opts:
        assert "-o" in opts["--output"].opts, f"{name}: --output without -o"
    if name in PRINTS_A_RESULT:
        assert "--json" in opts, f"{name} prints a result but has no --json"


def test_the_table_names_only_commands_that_exist() -> None:
    assert set(COMMANDS) >= PRINTS_A_RESULT


def test_quote_dash_o_dash_prints_hex_instead_of_writing_a_file_named_dash(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: `quote -o -` wrote a file named `-` while `sim quote -o -` printed hex."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SGX_AESM_ADDR", raising=False)
    plat = tmp_path / "p"
    assert CliRunner().invoke(main, ["sim", "init", "--platform", str(plat)]).exit_code == 0
    for argv in (["quote", "--platform", str(plat), "--report-data", "cafe", "-o", "-"],
                 ["sim", "quote", "--platform", str(plat), "--report-data", "cafe", "-o", "-"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 0, r.output
        assert bytes.fromhex(r.stdout.strip())[:2] == b"\x03\x00" and not (tmp_path / "-").exists()


def test_demo_tcb_status_is_checked_like_sim_init() -> None:
    """Why: `demo --tcb-status` took anything while `sim init` checked a list."""
    for argv in (["demo", "--tcb-status", "Great"], ["sim", "init", "--tcb-status", "Great"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2 and "Invalid value for '--tcb-status': 'Great' is not one of" in r.output


@pytest.mark.parametrize(("argv", "new"), [
    (["device-plugin", "--platform-dir", "X", "--help"], "--platform"),
    (["quote", "--deadline", "3", "--help"], "--timeout"),
    (["sim", "export", "--out", "X", "--help"], "--out-dir"),
    (["webhook-tls", "--out", "X", "--help"], "--tls-dir"),
    (["verify", "--out", "X", "--help"], "--output"),
], ids=["platform-dir", "deadline", "sim-out", "tls-out", "verify-out"])
def test_old_spellings_still_parse(argv: list[str], new: str) -> None:
    old = next(a for a in argv if a.startswith("--"))
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 0 and new in r.output and old not in r.output.replace(new, "")


def test_sim_export_and_revoke_print_json(tmp_path: Path) -> None:
    plat = str(tmp_path / "p")
    assert CliRunner().invoke(main, ["sim", "init", "--platform", plat]).exit_code == 0
    r = CliRunner().invoke(main, ["sim", "export", "--platform", plat, "--out-dir", str(tmp_path / "t"), "--json"])
    files = json.loads(r.stdout)
    assert r.exit_code == 0 and str(tmp_path / "t" / "collateral.json") in files and all(Path(f).exists() for f in files)
    r = CliRunner().invoke(main, ["sim", "revoke-pck", "--platform", plat, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ca"] == "processor"
