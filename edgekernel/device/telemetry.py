"""A sensor stream: reads its driver on a fixed grid and packs samples into batched envelopes.

The driver (`drivers.registry`) is polled on the grid; a push driver's samples wait in its queue
until the next tick, so both kinds batch the same way.

The grid runs on the monotonic clock, so a wall-clock jump (NTP at boot on a box without an RTC)
neither floods nor silences the stream; sample timestamps are wall-clock time, read at each poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from edgekernel.config.models import SensorConfig
from edgekernel.device.drivers import registry
from edgekernel.device.drivers.base import SampleValue, Source
from edgekernel.protocol import Sample, TelemetryBody

Emit = Callable[[SensorConfig, TelemetryBody], Awaitable[None]]
Tap = Callable[[str, list[Sample]], None]
Fits = Callable[[TelemetryBody], bool]

MAX_TICK_S = 0.05
# A faster sensor gives several samples a poll, each at its grid time: polled once a sample, a 1 kHz
# stream cost a tenth of a core in per-call overhead alone.
MIN_TICK_S = 0.01
FLUSH_AT_STOP_S = 5.0  # a full outbox that blocks must not hold a stopping device up


class SensorStream:
    def __init__(
        self, config: SensorConfig, emit: Emit, *, t0: float | None = None, tap: Tap | None = None
    ) -> None:
        """`tap` sees every sample as it is read (the agents' local bus), before batching."""
        self.config = config
        self._tap = tap
        self.source: Source = registry.open_source(
            config.driver,
            config.stream,
            config.settings,
            rate_hz=config.rate_hz,
            t0=time.monotonic() if t0 is None else t0,
            base_dir=config.base_dir,
        )
        self._emit = emit
        self._pending: list[Sample] = []
        self._oldest: float | None = None
        self.envelopes = 0

    @property
    def samples(self) -> int:
        return self.source.produced

    @property
    def held(self) -> int:
        """Samples taken and not yet handed to `emit`."""
        return len(self._pending)

    def _tick_s(self) -> float:
        per_sample = 1.0 / self.config.rate_hz
        wait = self.config.batch.max_wait_ms / 1000.0
        return max(MIN_TICK_S, min(MAX_TICK_S, per_sample, wait) if wait > 0 else min(MAX_TICK_S, per_sample))

    async def run(self) -> None:
        """Poll on the grid while the driver's own work (a connection, an observation) runs beside."""
        tick = self._tick_s()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.source.run(), name=f"driver:{self.config.stream}")
            while True:
                await self.poll(time.monotonic())
                await asyncio.sleep(tick)

    async def poll(self, now: float) -> None:
        """Take the samples due at `now` (monotonic), and emit every batch that is full or old enough."""
        batch = self.config.batch
        wall_offset = 0.0 if self.source.wall_times else time.time() - time.monotonic()
        taken = [
            Sample(ts=at + wall_offset, value=_plain(value))
            for at, value in self.source.take(self.source.due(now))
        ]
        if taken and self._tap is not None:
            self._tap(self.config.stream, taken)
        if not self.config.publish:
            return
        for sample in taken:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(sample)
            if len(self._pending) >= batch.max_samples:
                await self.flush()
        waited_ms = (time.monotonic() - self._oldest) * 1000 if self._oldest is not None else 0.0
        if self._pending and waited_ms >= batch.max_wait_ms:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        body = TelemetryBody(stream=self.config.stream, unit=self.config.unit, samples=self._pending)
        self._pending = []
        self._oldest = None
        self.envelopes += 1
        await self._emit(self.config, body)


def _plain(value: SampleValue) -> float | dict[str, float]:
    return float(value) if isinstance(value, int | float) else {str(k): float(v) for k, v in value.items()}


def split_to_fit(body: TelemetryBody, fits: Fits) -> list[TelemetryBody]:
    """The batch, or its samples in order in halves, and halves of those, until each part `fits` or
    holds one sample (such a part goes as it is, and the sender dead-letters it if it cannot fit)."""
    done: list[TelemetryBody] = []
    todo = [body]
    while todo:
        part = todo.pop()
        if len(part.samples) == 1 or fits(part):
            done.append(part)
            continue
        half = len(part.samples) // 2
        todo.append(part.model_copy(update={"samples": part.samples[half:]}))
        todo.append(part.model_copy(update={"samples": part.samples[:half]}))
    return done


async def flush_all(streams: Sequence[SensorStream], timeout: float) -> int:
    """Flush every stream at once, for at most `timeout` seconds; how many samples were not flushed."""
    held = {stream: stream.held for stream in streams if stream.held}
    flushed: set[SensorStream] = set()

    async def flush(stream: SensorStream) -> None:
        await stream.flush()
        flushed.add(stream)

    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(flush(stream) for stream in held))
    except TimeoutError:
        return sum(count for stream, count in held.items() if stream not in flushed)
    return 0
