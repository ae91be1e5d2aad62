"""`edgekernel device run` and `edgekernel gateway run`: the programs a box or a server runs."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, TypeVar, cast

import typer
from rich.text import Text

from edgekernel.cli.common import (
    BROKER_OPTION_HELP,
    Exit,
    console,
    fail,
    run_until_signal,
    setup_logging,
)
from edgekernel.cli.tables import Column, print_fitted
from edgekernel.config import DeviceConfig, GatewayConfig, load_checked, load_gateway
from edgekernel.errors import EdgeKernelError

device_app = typer.Typer(
    help="Run a device: its kernel, sensors and link to the broker.", no_args_is_help=True
)
gateway_app = typer.Typer(
    help="Run a gateway: ingest, validation and the SQLite store.", no_args_is_help=True
)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="The YAML config file.", show_default=False)
]
BrokerOption = Annotated[str | None, typer.Option("--broker", help=BROKER_OPTION_HELP, show_default=False)]
DurationOption = Annotated[
    float | None, typer.Option("--duration", help="Stop after this many seconds.", show_default=False)
]
VerboseOption = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]


Program = Callable[[asyncio.Event], Awaitable[None]]
C = TypeVar("C", DeviceConfig, GatewayConfig)


def _start(
    load: Callable[[Path], C],
    build: Callable[[C], Program],
    *,
    config: Path,
    broker: str | None,
    duration: float | None,
    verbose: int,
) -> None:
    """Load and check the config and the files it names, apply --broker, build the program, run it
    until a signal. A program that cannot do what its config says (a model it must serve does not
    load) stops with a one-line error and exit code 1."""
    setup_logging(verbose)
    try:
        cfg = load(config)
        if broker is not None:
            cfg = cfg.model_copy(update={"broker": cfg.broker.with_url(broker)})
        program = build(cfg)
    except (EdgeKernelError, ValueError) as err:
        fail(str(err), Exit.FAILED)
    try:
        run_until_signal(program, duration=duration)
    except EdgeKernelError as err:
        fail(str(err), Exit.FAILED)


@device_app.command("run")
def device_run(
    config: ConfigOption,
    broker: BrokerOption = None,
    duration: DurationOption = None,
    verbose: VerboseOption = 0,
) -> None:
    """Run one device until Ctrl-C (or SIGTERM): it goes offline cleanly, and its Last Will covers a crash."""
    from edgekernel.device.kernel import Kernel  # noqa: PLC0415 (keeps `--help` fast)

    _start(
        lambda path: load_checked(path, DeviceConfig),
        lambda cfg: Kernel(cfg).run,
        config=config,
        broker=broker,
        duration=duration,
        verbose=verbose,
    )


@gateway_app.command("run")
def gateway_run(
    config: ConfigOption,
    broker: BrokerOption = None,
    duration: DurationOption = None,
    verbose: VerboseOption = 0,
    member: Annotated[int, typer.Option("--member", hidden=True)] = 0,
) -> None:
    """Run the gateway until Ctrl-C (or SIGTERM), storing what the fleet sends; with `processes` above
    1 in its config, it starts (and watches) that many processes in all."""
    from edgekernel.cli.members import Members  # noqa: PLC0415 (keeps `--help` fast)
    from edgekernel.gateway import Gateway  # noqa: PLC0415

    def build(cfg: GatewayConfig) -> Program:
        gateway = Gateway(cfg, member=member)
        if member or cfg.processes == 1:
            return gateway.run
        extra = [*(["--broker", broker] if broker else []), *(["-v"] * verbose)]

        def argv(number: int) -> list[str]:
            run = [sys.executable, "-m", "edgekernel", "gateway", "run", "--config", str(config)]
            return [*run, "--member", str(number), *extra]

        return Members(cfg.processes - 1, argv).around(gateway.run)

    _start(
        lambda path: load_checked(path, GatewayConfig),
        build,
        config=config,
        broker=broker,
        duration=duration,
        verbose=verbose,
    )


@gateway_app.command("stats")
def gateway_stats(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="The gateway's config file.")] = None,
    store: Annotated[
        Path | None, typer.Option("--store", help="The store file itself (instead of --config).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per device: messages stored, seq space (epoch) and its highest seq, duplicates dropped, durable
    messages missing in all its seq spaces (gaps), last seen."""
    from edgekernel.gateway import StoreError, read_summary  # noqa: PLC0415 (keeps `--help` fast)

    if (config is None) == (store is None):
        fail("give --config or --store", Exit.USAGE)
    try:
        path = store if store is not None else load_gateway(cast(Path, config)).store.path
        if not path.exists():
            fail(f"no store at {path} (has the gateway run?)")
        rows = read_summary(path)
    except (EdgeKernelError, StoreError) as err:
        fail(str(err))
    if as_json:
        data = [{**asdict(row), "gaps": row.gaps} for row in rows]
        console.print_json(json.dumps({"store": str(path), "devices": data}))
        return
    columns = [
        Column("device", keep=9),
        Column("messages", keep=8, justify="right"),
        Column("best-effort", keep=2, justify="right"),
        Column("samples", keep=5, justify="right"),
        Column("epoch", keep=1, justify="right"),
        Column("highest seq", keep=6, justify="right"),
        Column("duplicates", keep=3, justify="right"),
        Column("gaps", keep=4, justify="right"),
        Column("last seen", keep=7, justify="right"),
    ]
    now = time.time()
    cells = []
    for row in rows:
        seen = "-" if row.last_seen is None else f"{max(0.0, now - row.last_seen):.0f}s ago"
        top = "-" if row.highest_seq is None else str(row.highest_seq)
        epoch = "-" if row.epoch is None else str(row.epoch)
        if len(row.spaces) > 1:
            epoch += f" ({len(row.spaces)} spaces)"
        values = (
            row.device,
            row.messages,
            row.best_effort,
            row.samples,
            epoch,
            top,
            row.duplicates,
            row.gaps,
            seen,
        )
        cells.append([Text(str(value)) for value in values])
    print_fitted(console, columns, cells, title=f"gateway store {path}")


@device_app.command("stats")
def device_stats(
    device: Annotated[str, typer.Argument(help="The device id.")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Fleet config.")] = None,
    broker: BrokerOption = None,
    fleet: Annotated[str | None, typer.Option("--fleet", help="Fleet id; overrides the config file.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="The fleet's private key.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
) -> None:
    """A running device's counters: kernel, link, commands, models, inference (a signed `stats` call)."""
    from edgekernel.cli.fleet_cmd import call_device  # noqa: PLC0415 (keeps `--help` fast)

    call_device(device, "stats", [], config, broker, fleet, key, timeout, as_json)
