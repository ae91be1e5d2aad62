"""The device's sensor streams, loaded, reconfigured and unloaded at run time.

`apply` runs exactly the given sensors: a new stream starts, a changed one restarts with its new
settings (after its held samples are handed over), one no longer wanted stops the same way. A stream
whose driver fails is logged, counted and started again after a pause, without touching the others.
Commands reach a stream's driver here: `inject` (anomalies, sim) and `actuate` (an input, the plant).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import KeysView, Sequence
from dataclasses import dataclass

from pydantic import JsonValue

from edgekernel.config.models import SensorConfig
from edgekernel.device.commands import CommandError
from edgekernel.device.drivers import registry
from edgekernel.device.drivers.base import Actuator, Injectable
from edgekernel.device.drivers.errors import DriverError, NotAnActuatorError
from edgekernel.device.telemetry import Emit, SensorStream, Tap
from edgekernel.errors import EdgeKernelError
from edgekernel.protocol import VerifiedCommand

log = logging.getLogger(__name__)

RETRY_S = 5.0


class UnknownStreamError(DriverError):
    """No sensor stream of that name runs on this device."""


@dataclass(slots=True)
class _Running:
    config: SensorConfig
    task: asyncio.Task[None]
    stream: SensorStream | None = None
    failures: int = 0
    last_error: str | None = None


async def inject_command(sensors: Sensors, counters: Counter[str], command: VerifiedCommand) -> JsonValue:
    """The ``inject-anomaly`` command, args {stream, kind, duration_s (default 1)}: an anomaly in a
    sim stream from its next sample on."""
    stream, kind, duration = (command.args.get(k) for k in ("stream", "kind", "duration_s"))
    if not isinstance(stream, str) or not isinstance(kind, str):
        raise CommandError("bad-args", "inject-anomaly takes stream and kind (strings) and duration_s")
    if isinstance(duration, bool) or not isinstance(duration, int | float | None):
        raise CommandError("bad-args", "duration_s must be a number of seconds")
    seconds = 1.0 if duration is None else float(duration)
    try:
        sensors.inject(stream, kind, seconds)
    except DriverError as err:
        raise CommandError("refused", str(err)) from err
    counters["anomalies_injected"] += 1
    return {"stream": stream, "kind": kind, "duration_s": seconds}


def check(configs: Sequence[SensorConfig]) -> None:
    """Each sensor's settings against its driver's Config (a `DriverError` for the first that fails)."""
    for config in configs:
        registry.configure(config.driver, config.stream, config.settings, base_dir=config.base_dir)


class Sensors:
    def __init__(self, emit: Emit, *, tap: Tap | None = None, retry_s: float = RETRY_S) -> None:
        self._emit = emit
        self.tap = tap
        self._retry_s = retry_s
        self._running: dict[str, _Running] = {}
        self._applying = asyncio.Lock()
        self.counters: Counter[str] = Counter()

    @property
    def names(self) -> list[str]:
        return list(self._running)

    @property
    def running(self) -> KeysView[str]:
        """The streams running now, as a live view."""
        return self._running.keys()

    @property
    def streams(self) -> list[SensorStream]:
        return [r.stream for r in self._running.values() if r.stream is not None]

    def status(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, running in self._running.items():
            stream = running.stream
            out[name] = {
                "driver": running.config.driver,
                "samples": stream.samples if stream is not None else 0,
                "envelopes": stream.envelopes if stream is not None else 0,
                "failures": running.failures,
                "last_error": running.last_error,
            }
        return out

    async def apply(self, configs: Sequence[SensorConfig]) -> None:
        """Run exactly `configs` (one change at a time)."""
        async with self._applying:
            wanted = {config.stream: config for config in configs}
            for name in [n for n, r in self._running.items() if wanted.get(n) != r.config]:
                await self._stop(name)
                self.counters["sensor_stopped"] += 1
            for name, config in wanted.items():
                if name not in self._running:
                    self._running[name] = _Running(config, self._start(config))
                    self.counters["sensor_started"] += 1

    async def close(self) -> None:
        """Stop every stream without flushing (the kernel flushes what they hold, within its limit)."""
        for running in self._running.values():
            running.task.cancel()
        for running in self._running.values():
            with contextlib.suppress(asyncio.CancelledError):
                await running.task

    def inject(self, stream: str, kind: str, duration_s: float) -> None:
        source = self._source(stream)
        if not isinstance(source, Injectable):
            driver = self._running[stream].config.driver
            raise DriverError(
                driver, stream, f"stream {stream} (driver {driver}) takes no injected anomalies"
            )
        try:
            source.inject(kind, duration_s)
        except ValueError as err:
            raise DriverError(self._running[stream].config.driver, stream, str(err)) from err

    def actuate(self, stream: str, value: float) -> None:
        source = self._source(stream)
        driver = self._running[stream].config.driver
        if not isinstance(source, Actuator):
            raise NotAnActuatorError(driver, stream, f"stream {stream} (driver {driver}) takes no input")
        try:
            source.actuate(value)
        except ValueError as err:
            raise NotAnActuatorError(driver, stream, f"stream {stream}: {err}") from err

    def _source(self, stream: str) -> object:
        running = self._running.get(stream)
        if running is None or running.stream is None:
            known = ", ".join(sorted(self._running)) or "none"
            raise UnknownStreamError("-", stream, f"no sensor stream {stream!r} runs here (streams: {known})")
        return running.stream.source

    def _start(self, config: SensorConfig) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._keep(config), name=f"sensor:{config.stream}")

    async def _keep(self, config: SensorConfig) -> None:
        """Run the stream; when its driver fails, say so and start it again after a pause."""
        while True:
            running = self._running.get(config.stream)
            try:
                stream = SensorStream(config, self._emit, tap=self.tap)
                if running is not None:
                    running.stream = stream
                await stream.run()
                return
            except (EdgeKernelError, OSError, RuntimeError, ValueError, ExceptionGroup) as err:
                self.counters["sensor_failed"] += 1
                if running is not None:
                    running.failures += 1
                    running.last_error = f"{type(err).__name__}: {err}"[:500]
                log.error("sensor %s (driver %s) failed: %s", config.stream, config.driver, err)
            await asyncio.sleep(self._retry_s)

    async def _stop(self, name: str) -> None:
        running = self._running.pop(name)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        if running.stream is not None:
            await running.stream.flush()
