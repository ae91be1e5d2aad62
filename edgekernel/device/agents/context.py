"""What an agent sees of the kernel: `ctx`, the same object inline and in a child process.

    class Doubler(Agent):
        class Config(BaseModel):
            gain: float = 2.0

        async def run(self, ctx: Context) -> None:
            async for sample in ctx.subscribe("temperature"):
                await ctx.publish("doubled", sample.value * ctx.config.gain)

Every call goes through `KernelCalls`: the kernel's own implementation for an inline agent, a Unix
socket client for a process agent. Quotas and validation sit on the kernel's side of that line, so
both isolations behave the same.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from pydantic import BaseModel, JsonValue

from edgekernel.device.agents.bus import Subscription
from edgekernel.protocol import Sample

if TYPE_CHECKING:
    import numpy as np

    FloatArray: TypeAlias = np.ndarray[Any, np.dtype[np.float32]]
else:  # NumPy loads when an agent first infers: checking an agent's settings needs none of it
    FloatArray = Any
Value = float | Mapping[str, float]


class KernelCalls(Protocol):
    """The kernel's side of an agent's calls, for the agent named by the first argument."""

    async def infer(
        self, agent: str, model: str, inputs: list[FloatArray], priority: int, deadline_s: float | None
    ) -> list[FloatArray]: ...

    async def publish(self, agent: str, stream: str, samples: list[Sample], best_effort: bool) -> None: ...

    async def event(self, agent: str, event_type: str, body: JsonValue) -> None: ...

    def subscribe(self, agent: str, stream: str, depth: int) -> Subscription[Sample]: ...

    async def state_set(self, agent: str, key: str, value: JsonValue) -> None: ...

    async def state_delete(self, agent: str, key: str) -> None: ...

    async def heartbeat(self, agent: str) -> None: ...

    async def kernel_stats(self, agent: str) -> dict[str, float]: ...

    async def actuate(self, agent: str, stream: str, value: float) -> None: ...


class State:
    """The agent's persisted key/value state: reads from memory, writes committed before they return."""

    def __init__(self, agent: str, calls: KernelCalls, saved: Mapping[str, JsonValue]) -> None:
        self._agent = agent
        self._calls = calls
        self._values = dict(saved)

    def get(self, key: str, default: JsonValue = None) -> JsonValue:
        return self._values.get(key, default)

    def __getitem__(self, key: str) -> JsonValue:
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def keys(self) -> list[str]:
        return list(self._values)

    async def set(self, key: str, value: JsonValue) -> None:
        await self._calls.state_set(self._agent, key, value)
        self._values[key] = value

    async def delete(self, key: str) -> None:
        await self._calls.state_delete(self._agent, key)
        self._values.pop(key, None)


class Context:
    def __init__(
        self,
        *,
        agent: str,
        device: str,
        config: Any,
        calls: KernelCalls,
        state: Mapping[str, JsonValue],
        log: logging.Logger | None = None,
    ) -> None:
        self.agent = agent
        self.device = device
        self.config = config
        self.state = State(agent, calls, state)
        self.log = log or logging.getLogger(f"edgekernel.agent.{agent}")
        self._calls = calls

    async def infer(
        self,
        model: str,
        inputs: FloatArray | Sequence[FloatArray],
        *,
        priority: int = 0,
        deadline_ms: float | None = None,
    ) -> list[FloatArray]:
        """Run `model` through the kernel's scheduler; one array per model input (with its batch
        dimension, if the model has one), float32 outputs."""
        import numpy as np  # noqa: PLC0415 (see FloatArray)

        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        deadline_s = None if deadline_ms is None else deadline_ms / 1000.0
        return await self._calls.infer(
            self.agent, model, [np.asarray(a, dtype=np.float32) for a in arrays], priority, deadline_s
        )

    async def publish(
        self,
        stream: str,
        value: Value | Sequence[Sample],
        *,
        ts: float | None = None,
        best_effort: bool = False,
    ) -> None:
        """Publish a value (a number, or a map of names to numbers) or a list of samples on the device's
        `…/telemetry/{stream}`, through the outbox unless `best_effort`, and on the local bus."""
        if isinstance(value, Sequence) and not isinstance(value, str):
            samples = list(value)
        else:
            samples = [_sample(value, time.time() if ts is None else ts)]
        await self._calls.publish(self.agent, stream, samples, best_effort)

    async def event(self, event_type: str, body: JsonValue) -> None:
        """An event on `…/events/{event_type}` (an anomaly, an alert)."""
        await self._calls.event(self.agent, event_type, body)

    def subscribe(self, stream: str, *, depth: int = 1024) -> Subscription[Sample]:
        """Samples of a local stream (a sensor's, or another agent's output) as they come; when this
        agent falls `depth` samples behind, the oldest are dropped and counted."""
        return self._calls.subscribe(self.agent, stream, depth)

    async def every(self, seconds: float) -> AsyncIterator[float]:
        """Ticks every `seconds` on the monotonic clock; ticks missed while the agent was busy are
        skipped, not bunched."""
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"every() takes a positive number of seconds, got {seconds!r}")
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
                now = next_at
            yield now
            await self._calls.heartbeat(self.agent)
            next_at += seconds
            if next_at < time.monotonic():
                next_at += math.ceil((time.monotonic() - next_at) / seconds) * seconds

    async def actuate(self, stream: str, value: float) -> None:
        """Set the input of a sensor stream's driver (the `sim` plant's fan duty, 0 to 1): the stream's
        samples respond to it. An error says when the stream has no such input or refuses the value."""
        await self._calls.actuate(self.agent, stream, value)

    async def kernel_stats(self) -> dict[str, float]:
        """The kernel's own figures: inference queue depth, outbox backlog."""
        return await self._calls.kernel_stats(self.agent)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _sample(value: Value, ts: float) -> Sample:
    if isinstance(value, Mapping):
        return Sample(ts=ts, value={str(k): float(v) for k, v in value.items()})
    return Sample(ts=ts, value=float(value))


class Agent:
    """Base class of an agent (subclassing it is optional: any class with `run(ctx)` will do).

    `Config`, when set, is the pydantic model of the agent's settings; `ctx.config` is then an
    instance of it, else the plain mapping from the device config.
    """

    Config: type[BaseModel] | None = None

    async def run(self, ctx: Context) -> None:
        raise NotImplementedError
