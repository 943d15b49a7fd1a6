"""The CLI's shared vocabulary (cli/common.py) and logging setup (logs.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from quotehelper import logs
from quotehelper.cli import common


@click.command()
@common.platform_option(aliases=("--platform-dir",))
@common.output_option("Quote file")
@common.timeout_option("to wait", 5.0, aliases=("--deadline",))
@common.json_option
@click.option("--data", type=common.HexBytes(max_size=4), default="")
@click.option("--now", type=common.TIME, default=None)
@common.logging_options()
def demo_cmd(platform_dir: Path | None, output: str | None, timeout: float, as_json: bool, data: bytes,
             now: object, verbose: int) -> None:
    click.echo(json.dumps({"platform": str(platform_dir), "output": output, "timeout": timeout, "json": as_json,
                           "data": data.hex(), "now": str(now), "verbose": verbose,
                           "level": logging.getLogger().level}))


def run(*args: str) -> tuple[int, dict | str]:
    r = CliRunner().invoke(demo_cmd, list(args))
    try:
        return r.exit_code, json.loads(r.output)
    except ValueError:
        return r.exit_code, r.output


def test_hidden_aliases_parse_but_are_not_shown() -> None:
    assert run("--platform-dir", "/p", "--deadline", "2")[1]["platform"] == "/p"
    assert run("--platform-dir", "/p", "--deadline", "2")[1]["timeout"] == 2.0
    help_text = CliRunner().invoke(demo_cmd, ["--help"]).output
    assert "--platform DIR" in help_text and "--timeout SECONDS" in help_text and "-o, --output PATH" in help_text
    assert "--platform-dir" not in help_text and "--deadline" not in help_text


def test_types_and_logging_levels() -> None:
    code, out = run("--data", "0x0a:0B", "--now", "2024-01-01T00:00:00", "-vv", "--json")
    assert code == 0 and out["data"] == "0a0b" and out["now"] == "2024-01-01 00:00:00+00:00" and out["json"]
    assert out["verbose"] == 2 and out["level"] == logging.DEBUG
    assert run("-v")[1]["level"] == logging.INFO and run("-q")[1]["level"] == logging.ERROR
    assert run()[1]["level"] == logging.WARNING
    code, out = run("--now", "99999999999999999999")
    assert code == 2 and "Invalid value for '--now': 99999999999999999999 unix seconds is outside" in out
    assert run("--data", "zz")[0] == 2 and run("--data", "0102030405")[0] == 2


def test_write_output_dash_is_stdout(tmp_path: Path) -> None:
    @click.command()
    @common.output_option(required=True)
    def w(output: str) -> None:
        common.write_output(output, b"\x01\x02")

    assert CliRunner().invoke(w, ["-o", "-"]).output == "0102\n"
    r = CliRunner().invoke(w, ["-o", str(tmp_path / "f")])
    assert (tmp_path / "f").read_bytes() == b"\x01\x02" and "wrote 2 bytes" in r.stderr


def test_json_log_lines_reach_child_processes() -> None:
    env = {**os.environ}
    code = ("from quotehelper import logs; import logging; logs.configure(logging.INFO, 'json', export=True);"
            "import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'from quotehelper import logs; import logging; logs.configure(); "
            "logging.getLogger(\"child\").info(\"from the child\")'])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    line = json.loads(r.stderr.strip().splitlines()[-1])
    assert line["logger"] == "child" and line["message"] == "from the child" and line["level"] == "INFO"
    assert line["time"].endswith("Z")


@pytest.fixture(autouse=True)
def _restore_logging():
    saved = os.environ.get(logs.FORMAT_ENV), os.environ.get(logs.LEVEL_ENV)
    yield
    for k, v in zip((logs.FORMAT_ENV, logs.LEVEL_ENV), saved, strict=True):
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    logging.getLogger().setLevel(logging.WARNING)


@pytest.mark.parametrize(("exc", "code", "text"), [
    (RuntimeError("boom"), 70, "internal error: RuntimeError: boom (QUOTEHELPER_TRACEBACK=1 shows where)"),
    (FileNotFoundError(2, "No such file or directory", "/x/y"), 2, "error: No such file or directory: /x/y"),
], ids=["bug", "os-error"])
def test_no_traceback_reaches_a_user(monkeypatch: pytest.MonkeyPatch, exc: Exception, code: int, text: str) -> None:
    from quotehelper.cli import main

    @click.command("raise-for-test")
    def raiser() -> None:
        raise exc

    main.add_command(raiser)
    try:
        monkeypatch.delenv("QUOTEHELPER_TRACEBACK", raising=False)
        r = CliRunner().invoke(main, ["raise-for-test"])
        assert (r.exit_code, r.stderr.strip()) == (code, text) and "Traceback" not in r.output
        monkeypatch.setenv("QUOTEHELPER_TRACEBACK", "1")
        assert CliRunner().invoke(main, ["raise-for-test"]).exception is exc  # for a developer: the real thing
    finally:
        main.commands.pop("raise-for-test")
