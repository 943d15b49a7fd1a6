"""Issue 11: `sim init` on an existing platform keeps it; an option typed that would change it is refused
(exit 2, naming the option and the existing value), never silently ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quotehelper.cli import main


def sim(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["sim", *args])
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("sim") / "platform"
    assert sim("init", "--platform", str(p), "--tcb-status", "OutOfDate")[0] == 0
    return p


def test_another_tcb_status_is_refused(platform: Path) -> None:
    code, out = sim("init", "--platform", str(platform), "--tcb-status", "UpToDate")
    assert code == 2
    assert f"Invalid value for --tcb-status: platform {platform} exists with OutOfDate" in out
    assert json.loads(sim("show", "--platform", str(platform))[1])["tcb_status"] == "OutOfDate"


@pytest.mark.parametrize("args", [(), ("--tcb-status", "OutOfDate"), ("--ca", "processor")],
                         ids=["defaults", "same-status", "same-ca"])
def test_the_same_or_no_options_keep_the_platform(platform: Path, args: tuple[str, ...]) -> None:
    code, out = sim("init", "--platform", str(platform), *args)
    assert code == 0 and out.startswith(f"existing platform {platform}") and "TCB status OutOfDate" in out


@pytest.mark.parametrize(("args", "flag"), [(("--fmspc", "00906ED50001"), "--fmspc"), (("--ca", "platform"), "--ca"),
                                            (("--advisory-id", "INTEL-SA-00001"), "--advisory-id")])
def test_other_identity_options_are_refused(platform: Path, args: tuple[str, ...], flag: str) -> None:
    code, out = sim("init", "--platform", str(platform), *args)
    assert code == 2 and f"Invalid value for {flag}: platform {platform} exists with" in out
