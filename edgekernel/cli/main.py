"""The `edgekernel` entry point: one sub-command per program."""

from __future__ import annotations

import typer

from edgekernel import __version__
from edgekernel.cli import config_cmd, fleet_cmd, model_cmd, programs, topics_cmd
from edgekernel.cli.demo import demo

app = typer.Typer(
    name="edgekernel",
    help="edgekernel: an operating system for fleets of edge AI boxes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo)
app.add_typer(programs.device_app, name="device")
app.add_typer(programs.gateway_app, name="gateway")
app.add_typer(fleet_cmd.app, name="fleet")
app.add_typer(topics_cmd.app, name="topics")
app.add_typer(config_cmd.app, name="config")
app.add_typer(model_cmd.app, name="model")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgekernel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """edgekernel: an operating system for fleets of edge AI boxes."""


def main() -> None:
    app()
