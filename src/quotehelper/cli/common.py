"""The CLI's one vocabulary: each concept has one option name, one meaning and one help text in every
command (the table "Command-line vocabulary" in README.md). Commands import these decorators and
types instead of declaring their own. Old spellings stay as hidden aliases where a manifest or a
user may already use them.

| concept            | option                     | meaning                                                    |
|--------------------|----------------------------|------------------------------------------------------------|
| platform directory | `--platform DIR`           | software platform; default $QUOTEHELPER_PLATFORM or XDG    |
| AESM socket        | `--socket PATH`            | the quote service's Unix socket                            |
| file written       | `-o/--output PATH`         | `-` = stdout (hex for binary data)                         |
| directory written  | `--out-dir DIR`            |                                                            |
| seconds            | `--timeout SECONDS`        | the whole operation's limit                                |
| bytes              | `HEX`                      | hex digits, optional 0x, spaces and colons ignored         |
| time               | `--now TIME`               | unix seconds or ISO 8601 (no zone = UTC)                   |
| machine output     | `--json`                   | the result as JSON on stdout                               |
| logging            | `-v/--verbose`, `-q/--quiet`, `--log-format text|json` | -v INFO, -vv DEBUG           |
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from quotehelper import inputs, logs

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_INVALID, EXIT_INPUT, EXIT_POLICY = 0, 1, 2, 3
DEFAULT_SOCKET = "/var/run/aesmd/aesm.socket"  # = quotehelper.aesm.sockets.DEFAULT_SOCKET (not imported: weight)


class AliasOption(click.Option):
    """An option whose `hidden_aliases` parse like its other names but are left out of --help."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = frozenset(hidden_aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def option(*decls: str, aliases: tuple[str, ...] = (), **kwargs: Any) -> Callable[[F], F]:
    """click.option with hidden, still accepted old spellings: option("--platform", "platform_dir",
    aliases=("--platform-dir",), ...)."""
    names = [d for d in decls if d.startswith("-")]
    dest = [d for d in decls if not d.startswith("-")]
    return click.option(*names, *aliases, *dest, cls=AliasOption, hidden_aliases=aliases, **kwargs)


# ---- types --------------------------------------------------------------------------------------
class HexBytes(click.ParamType):
    """Hex bytes (optional 0x, spaces/colons ignored), exactly `size` or at most `max_size` bytes."""

    name = "HEX"

    def __init__(self, size: int | None = None, max_size: int | None = None) -> None:
        self.size, self.max_size = size, max_size

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        text = str(value).strip().removeprefix("0x").replace(" ", "").replace(":", "")
        try:
            data = bytes.fromhex(text)
        except ValueError:
            self.fail(f"{value!r} is not hex", param, ctx)
        if self.size is not None and len(data) != self.size:
            self.fail(f"needs exactly {self.size} bytes ({2 * self.size} hex digits), got {len(data)}", param, ctx)
        if self.max_size is not None and len(data) > self.max_size:
            self.fail(f"at most {self.max_size} bytes, got {len(data)}", param, ctx)
        return data


class Time(click.ParamType):
    """Unix seconds or ISO 8601 (no zone = UTC) -> aware UTC datetime (quotehelper.inputs.parse_time)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return inputs.parse_time(str(value))
        except inputs.InputError as e:
            self.fail(e.message, param, ctx)


HEX = HexBytes()
TIME = Time()


# ---- options ------------------------------------------------------------------------------------
def platform_option(help: str = "Software platform directory [default: $QUOTEHELPER_PLATFORM, else "  # noqa: A002
                    "$XDG_DATA_HOME/quotehelper/platform].", *, default: str | None = None,
                    aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    return option("--platform", "platform_dir", aliases=aliases, metavar="DIR", default=default,
                  type=click.Path(file_okay=False, path_type=Path), help=help)


def socket_option(help: str = "The quote service's AESM socket.", *, default: str | None = DEFAULT_SOCKET,  # noqa: A002
                  aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    return option("--socket", "socket_path", aliases=aliases, metavar="PATH", default=default,
                  show_default=default is not None, help=help)


def output_option(what: str = "Output file", *, required: bool = False, default: str | None = None,
                  aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    return option("-o", "--output", "output", aliases=aliases, metavar="PATH", required=required,
                  default=default, help=f"{what}; - writes to stdout.")


def out_dir_option(what: str, *, required: bool = True, default: str | None = None,
                   aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    return option("--out-dir", "out_dir", aliases=aliases, metavar="DIR", required=required, default=default,
                  type=click.Path(file_okay=False, path_type=Path), help=f"{what} (created if missing).")


def timeout_option(what: str, default: float, *, aliases: tuple[str, ...] = ()) -> Callable[[F], F]:
    return option("--timeout", "timeout", aliases=aliases, metavar="SECONDS", type=click.FloatRange(min=0.001),
                  default=default, show_default=True, help=f"Seconds {what}.")


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


def logging_options(default: int = logging.WARNING, *, quiet: bool = True) -> Callable[[F], F]:
    """-v/--verbose (INFO; -vv DEBUG), -q/--quiet (errors only; `quiet=False` where a command has its own
    -q), --log-format text|json; configures logging for this process and the processes it starts.
    `default`: the level without -v (INFO for the long-running k8s services, whose lifecycle lines are
    what `kubectl logs` shows). A command with a `verbose` parameter still receives the count."""
    def deco(fn: F) -> F:
        wants_verbose = "verbose" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        def wrapper(*args: Any, log_verbose: int = 0, log_quiet: bool = False, log_format: str = "text",
                    **kwargs: Any) -> Any:
            logs.configure(logs.level_for(log_verbose, log_quiet, default), log_format, export=True)
            if wants_verbose:
                kwargs["verbose"] = log_verbose
            return fn(*args, **kwargs)

        if wants_verbose:  # the wrapper supplies it; click must not look for a --verbose of the command
            wrapper.__click_params__ = [p for p in getattr(fn, "__click_params__", [])  # type: ignore[attr-defined]
                                        if p.name != "verbose"]
        opts = [click.option("--log-format", "log_format", type=click.Choice(logs.FORMATS), default="text",
                             envvar=logs.FORMAT_ENV, show_default=True, help="Log lines as text or JSON (stderr)."),
                click.option("-v", "--verbose", "log_verbose", count=True, help="Log more: -v info, -vv debug.")]
        if quiet:
            opts.insert(1, click.option("-q", "--quiet", "log_quiet", is_flag=True, help="Log errors only."))
        for opt in opts:
            wrapper = opt(wrapper)
        return wrapper  # type: ignore[return-value]
    return deco


# ---- output and errors --------------------------------------------------------------------------
def write_output(out: str, data: bytes | str, what: str = "bytes") -> None:
    """`-o PATH` / `-o -`: text as is, binary to a file, or as hex on stdout."""
    if out == "-":
        click.echo(data if isinstance(data, str) else data.hex())
        return
    path = Path(out)
    if isinstance(data, str):
        path.write_text(data if data.endswith("\n") else data + "\n")
    else:
        path.write_bytes(data)
    click.echo(f"wrote {len(data)} {what} to {out}", err=True)


_HEX_START = frozenset(bytes([c]) for c in b"0123456789abcdefABCDEFxX \t\r\n")


def read_binary_or_hex(path: Path) -> bytes:
    """A file holding binary data, or the same as hex text (whitespace, a leading 0x ignored): quotes, target
    infos, reports are passed around both ways."""
    data = path.read_bytes()
    if data[:1] not in _HEX_START:  # binary (a quote starts 03 00 / 04 00 / 05 00): no text to try
        return data
    text = data.strip()
    if text and len(text) % 2 == 0 or text[:2].lower() == b"0x":
        try:
            return inputs.as_quote_bytes(text.decode("ascii"))
        except (UnicodeDecodeError, inputs.InputError):
            pass
    return data


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    """One line on stderr and the documented exit code (2 = unusable input)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def friendly(fn: F) -> F:
    """The library's deliberate errors and OS errors as one line and exit 2, never a traceback."""
    from quotehelper.errors import QuoteHelperError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QuoteHelperError as e:
            fail(str(e))
        except OSError as e:
            fail(f"{e.filename}: {e.strerror or e}" if e.filename else str(e.strerror or e))
    return wrapper  # type: ignore[return-value]
