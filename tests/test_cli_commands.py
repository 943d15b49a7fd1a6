"""The command table: every command is found through COMMAND_MODULES, and running one imports only
the module that defines it."""

from __future__ import annotations

import importlib
import subprocess
import sys

from quotehelper.cli import COMMAND_MODULES, main


def test_every_command_is_in_the_table_and_defined_where_it_says() -> None:
    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"quotehelper.cli.{module}")
    assert set(main.commands) == set(COMMAND_MODULES)  # a new command must be added to the table
    for name, cmd in main.commands.items():
        assert cmd.callback is not None
        assert cmd.callback.__module__ == f"quotehelper.cli.{COMMAND_MODULES[name]}"


def test_a_command_loads_only_its_own_module() -> None:
    code = ("import sys\nfrom quotehelper.cli import main\n"
            "try:\n    main(['health', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('quotehelper.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # and the shared vocabulary (cli/common.py), which every command module uses
    assert out.strip().splitlines()[-1] == "['quotehelper.cli.common', 'quotehelper.cli.k8s_cmd']"
