"""The driver contract: what a sensor stream polls, and what a driver may offer besides.

A driver is a class registered under the entry point group ``edgekernel.drivers``, with a pydantic
``Config`` model of its settings and a constructor ``(config, rate_hz=..., t0=...)``. Its object is a
`Source`: the stream calls ``due(now)`` on its grid (every tick, on the monotonic clock) and
``take(count)`` for the samples due, as ``(time, value)``: on the monotonic clock, or on the wall
clock when the source's `wall_times` says so (a push driver's samples, a replay of recorded times).

A polled driver (sim, replay) makes its samples in `take`. A push driver (mqtt, coap) fills a queue
from its own `run` task as samples arrive, and `due` says how many wait. Optional extras, found by
protocol: `Actuator` (an input a control loop drives), `Injectable` (anomalies on command).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

SampleValue = float | Mapping[str, float]
Timed = tuple[float, SampleValue]


@runtime_checkable
class Source(Protocol):
    produced: int
    wall_times: bool

    def due(self, now: float) -> int: ...

    def take(self, count: int) -> list[Timed]: ...

    async def run(self) -> None:
        """Background work (a connection, an observation); a polled driver returns at once."""


@runtime_checkable
class Actuator(Protocol):
    def actuate(self, value: float) -> None: ...


@runtime_checkable
class Injectable(Protocol):
    def inject(self, kind: str, duration_s: float) -> None: ...


class PushQueue:
    """The queue a push driver fills: bounded, the oldest dropped and counted when nobody reads."""

    wall_times = True

    def __init__(self, limit: int = 10_000) -> None:
        self.produced = 0
        self.dropped = 0
        self._queue: deque[Timed] = deque()
        self._limit = limit

    def put(self, value: SampleValue, wall_ts: float | None = None) -> None:
        """A sample as it arrives; `wall_ts` is its time on the wall clock (now when not given)."""
        at = time.time() if wall_ts is None else wall_ts
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((at, value))

    def due(self, now: float) -> int:
        return len(self._queue)

    def take(self, count: int) -> list[Timed]:
        taken = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        self.produced += len(taken)
        return taken


async def idle() -> None:
    """The `run` of a driver with nothing to do in the background."""
    await asyncio.sleep(math.inf)
