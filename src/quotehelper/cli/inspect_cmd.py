"""`quotehelper inspect`: a readable or JSON dump of any quote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from quotehelper.cli import common, main
from quotehelper.errors import FormatError
from quotehelper.sgx.describe import quote_dict
from quotehelper.sgx.quote import parse_quote

_read_quote_file = common.read_binary_or_hex  # hex-encoded quotes are common in the wild; kept for importers


def _print_tree(d: Any, indent: int = 0) -> None:
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict):
            click.echo(f"{pad}{k}:")
            _print_tree(v, indent + 1)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            click.echo(f"{pad}{k}:")
            for item in v:
                click.echo(f"{pad}  - {item}")
        else:
            click.echo(f"{pad}{k}: {v}")


@main.command("inspect")
@click.argument("quote", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@common.json_option
@common.logging_options()
def inspect_cmd(quote: Path, as_json: bool) -> None:
    """Show the header, body, QE report and PCK extension of QUOTE (binary or hex)."""
    try:
        q = parse_quote(_read_quote_file(quote), allow_trailing=True)
        d = quote_dict(q)
    except FormatError as e:
        click.echo(f"error: not a valid quote: {e}", err=True)
        raise SystemExit(2) from e  # unusable input, as in `verify`
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        _print_tree(d)
