"""The `quotehelper` command: thin click fronts over the library; no business logic here."""

from __future__ import annotations

import importlib
import os

import click

from quotehelper import __version__

# Command -> the module of this package that defines it (with `@main.command`). A module is imported
# only when one of its commands runs (or for the full --help listing), so a probe like `quotehelper
# health` does not pay for the verifier's or the service's imports, and one area's missing dependency
# does not take the other commands down with it.
COMMAND_MODULES = {
    "inspect": "inspect_cmd",
    "verify": "verify_cmd",
    "sim": "sim_cmd",
    "serve": "service_cmd", "quote": "service_cmd", "demo": "service_cmd",
    "ratls": "ratls_cmd",
    "pcs": "pcs_cmd", "collateral": "pcs_cmd", "pccs": "pcs_cmd",
    "device-plugin": "k8s_cmd", "webhook": "k8s_cmd", "health": "k8s_cmd", "webhook-tls": "k8s_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"{__name__}.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        # No traceback reaches a user: quotehelper's own errors and OS errors are unusable input (exit 2),
        # anything else is our bug (exit 70, EX_SOFTWARE); QUOTEHELPER_TRACEBACK=1 shows the traceback.
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if os.environ.get("QUOTEHELPER_TRACEBACK"):
                raise
            from quotehelper.errors import QuoteHelperError
            if isinstance(e, QuoteHelperError | OSError):
                where = f": {e.filename}" if isinstance(e, OSError) and e.filename else ""
                text = f"{e.strerror}{where}" if isinstance(e, OSError) and e.strerror else str(e)
                click.echo(f"error: {text}", err=True)
                ctx.exit(2)
            click.echo(f"internal error: {type(e).__name__}: {e} (QUOTEHELPER_TRACEBACK=1 shows where)", err=True)
            ctx.exit(70)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quotehelper")
def main() -> None:
    """Out-of-process SGX quoting (AESM wire protocol), a software SGX platform, and DCAP verification."""
