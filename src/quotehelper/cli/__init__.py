"""The `quotehelper` command: thin click fronts over the library; no business logic here."""

from __future__ import annotations

import importlib

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
    "device-plugin": "k8s_cmd", "webhook": "k8s_cmd", "health": "k8s_cmd", "webhook-tls": "k8s_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"{__name__}.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quotehelper")
def main() -> None:
    """Out-of-process SGX quoting (AESM wire protocol), a software SGX platform, and DCAP verification."""
