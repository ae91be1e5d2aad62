"""What every command shares: exit codes, error output, logging, and running until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import NoReturn

import typer
from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.markup import escape

err_console = Console(stderr=True)
console = Console()


class Exit(IntEnum):
    """Exit codes every command uses."""

    OK = 0
    FAILED = 1  # invalid input, a check that did not pass, a program that failed
    USAGE = 2  # bad command-line use (typer's own code for this)
    LINK = 3  # the broker could not be reached
    MISSING = 4  # something the command needs is not installed
    NO_REPLY = 5  # the broker was reached but the device did not answer in time


def fail(message: str, code: Exit = Exit.FAILED) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def setup_logging(verbose: int = 0, *, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    # no highlighter: its regexes take seconds on a long line (25 s on a 60,000-character topic)
    handler = RichHandler(
        console=err_console,
        show_path=False,
        rich_tracebacks=False,
        markup=False,
        highlighter=NullHighlighter(),
    )
    logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler], force=True)
    if verbose < 2:
        logging.getLogger("asyncio").setLevel(logging.WARNING)


Main = Callable[[asyncio.Event], Awaitable[None]]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_until_signal(main: Main, *, duration: float | None = None) -> None:
    """Run `main(stop)` until SIGINT/SIGTERM or `duration` seconds, whichever comes first.

    The signals get plain Python handlers, not the loop's: those are told through the loop's wake-up
    pipe, which a loop too busy to read it (thousands of paho callbacks, each writing to it) lets fill,
    and the signal is then lost. A Python handler runs in the main thread whatever the loop is doing;
    it queues `stop.set` on the loop, which runs it at its next turn."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(stop.set)

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            if duration is not None:
                loop.call_later(duration, stop.set)
            await main(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    asyncio.run(runner())


BROKER_OPTION_HELP = "Broker URL (mqtt://HOST:PORT or mqtts://HOST:PORT); overrides the config file."
