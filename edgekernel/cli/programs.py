"""`edgekernel device run` and `edgekernel gateway run`: the programs a box or a server runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from edgekernel.cli.common import BROKER_OPTION_HELP, Exit, fail, run_until_signal, setup_logging
from edgekernel.config import DeviceConfig, GatewayConfig, load_device, load_gateway
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
    """Load and check the config, apply --broker, build the program, run it until a signal."""
    setup_logging(verbose)
    try:
        cfg = load(config)
        if broker is not None:
            cfg = cfg.model_copy(update={"broker": cfg.broker.with_url(broker)})
        program = build(cfg)
    except (EdgeKernelError, ValueError) as err:
        fail(str(err), Exit.FAILED)
    run_until_signal(program, duration=duration)


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
        load_device,
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
) -> None:
    """Run the gateway until Ctrl-C (or SIGTERM), storing what the fleet sends."""
    from edgekernel.gateway import Gateway  # noqa: PLC0415 (keeps `--help` fast)

    _start(
        load_gateway,
        lambda cfg: Gateway(cfg).run,
        config=config,
        broker=broker,
        duration=duration,
        verbose=verbose,
    )
