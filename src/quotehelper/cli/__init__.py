"""The `quotehelper` command: thin click fronts over the library; no business logic here."""

from __future__ import annotations

import click

from quotehelper import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quotehelper")
def main() -> None:
    """Out-of-process SGX quoting (AESM wire protocol), a software SGX platform, and DCAP verification."""


# Each area registers its commands on `main` in its own module.
from quotehelper.cli import inspect_cmd  # noqa: E402,F401,I001
from quotehelper.cli import k8s_cmd  # noqa: E402,F401
from quotehelper.cli import service_cmd  # noqa: E402,F401
from quotehelper.cli import sim_cmd  # noqa: E402,F401
from quotehelper.cli import verify_cmd  # noqa: E402,F401
