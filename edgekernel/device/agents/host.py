"""The kernel's side of the agents: the kernel calls behind every `ctx`, with each agent's quotas and
checks applied here (so inline and process agents behave the same), the local bus, the agents' state
store and the supervisor.

The kernel hands in what it owns as plain callables (`Ports`): running a model, committing samples
and events to the outbox. The host knows nothing of MQTT, CoAP or the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import JsonValue, ValidationError

from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents.bus import Bus, Subscription
from edgekernel.device.agents.context import FloatArray
from edgekernel.device.agents.errors import AgentError, AgentQuotaError, AgentStoppedError
from edgekernel.device.agents.inline import InlineExecution
from edgekernel.device.agents.lifecycle import Change
from edgekernel.device.agents.process import ProcessExecution
from edgekernel.device.agents.quotas import RateLimit
from edgekernel.device.agents.store import StateStore
from edgekernel.device.agents.supervisor import AgentStatus, Execution, Supervisor
from edgekernel.device.drivers.errors import DriverError
from edgekernel.protocol import Sample
from edgekernel.protocol.topics import ID_PATTERN

log = logging.getLogger(__name__)

MAX_SAMPLES_PER_PUBLISH = 1000
MAX_EVENT_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Ports:
    """What the kernel lends the agents."""

    infer: Callable[[str, str, list[FloatArray], int, float | None], Awaitable[list[FloatArray]]]
    publish: Callable[[str, list[Sample], bool], Awaitable[bool]]  # stream, samples, best_effort
    event: Callable[[str, str, JsonValue], Awaitable[bool]]  # type, agent, data
    sensor_streams: Collection[str] = frozenset()  # a live view: sensors come and go at run time
    stats: Callable[[], dict[str, float]] = dict
    actuate: Callable[[str, float], Awaitable[None]] | None = None  # stream, value


@dataclass(slots=True)
class _Usage:
    spec: AgentSpec
    infer_rate: RateLimit
    publish_rate: RateLimit
    in_flight: int = 0
    counters: Counter[str] = field(default_factory=Counter)


class AgentHost:
    def __init__(
        self,
        device: str,
        data_dir: Path,
        ports: Ports,
        *,
        on_change: Callable[[Change], None] | None = None,
    ) -> None:
        self.device = device
        self.ports = ports
        self.bus: Bus[Sample] = Bus()
        self.states = StateStore(data_dir / "agents.db")
        self.supervisor = Supervisor(self._execution, on_change=on_change)
        self._usage: dict[str, _Usage] = {}
        self._owners: dict[str, str] = {}  # output stream -> the agent that publishes it
        self._closed = False
        self._applying = asyncio.Lock()
        self._processes: weakref.WeakSet[ProcessExecution] = weakref.WeakSet()

    # -- running the agents ---------------------------------------------------------------------

    async def apply(self, specs: Sequence[AgentSpec]) -> None:
        """Run exactly `specs` (one change at a time: a newer list waits for the one before)."""
        async with self._applying:
            await self._apply(specs)

    async def _apply(self, specs: Sequence[AgentSpec]) -> None:
        for spec in specs:
            known = self._usage.get(spec.name)
            if known is None or known.spec != spec:
                quotas = spec.quotas
                self._usage[spec.name] = _Usage(
                    spec,
                    RateLimit("infer-rate", quotas.infer_rate, _burst(quotas.infer_rate)),
                    RateLimit("publish-rate", quotas.publish_rate, _burst(quotas.publish_rate)),
                )
        await self.supervisor.apply(specs)
        names = {spec.name for spec in specs}
        for name in [n for n in self._usage if n not in names]:
            del self._usage[name]
        self._owners = {stream: agent for stream, agent in self._owners.items() if agent in names}

    def restart(self, name: str) -> bool:
        return self.supervisor.restart(name)

    def _execution(self, spec: AgentSpec) -> Execution:
        if spec.isolation == "process":
            execution = ProcessExecution(spec, self)
            self._processes.add(execution)
            return execution
        return InlineExecution(
            spec, device=self.device, calls=self, states=self.states, on_end=self.bus.close_owner
        )

    async def close(self) -> None:
        self._closed = True
        await self.supervisor.close()
        self.states.close()

    def kill_now(self) -> None:
        """SIGKILL every agent process still running (when there is no event loop left to stop them)."""
        for execution in list(self._processes):
            execution.kill_now()

    def status(self) -> list[AgentStatus]:
        return self.supervisor.status()

    def usage(self) -> dict[str, dict[str, int]]:
        """Per agent: calls made and refused, by kind, and samples its subscriptions dropped."""
        return {
            name: {**usage.counters, "bus_dropped": self.bus.dropped[name], "in_flight": usage.in_flight}
            for name, usage in self._usage.items()
        }

    def _of(self, agent: str) -> _Usage:
        usage = self._usage.get(agent)
        if usage is None or self._closed:
            raise AgentStoppedError(agent, f"agent {agent} is not running on this device")
        return usage

    # -- the kernel calls -----------------------------------------------------------------------

    async def infer(
        self, agent: str, model: str, inputs: list[FloatArray], priority: int, deadline_s: float | None
    ) -> list[FloatArray]:
        usage = self._of(agent)
        limit = usage.spec.quotas.max_concurrent_infer
        if usage.in_flight >= limit:
            usage.counters["infer_refused:concurrent"] += 1
            raise AgentQuotaError(agent, "concurrent-infer", f"agent {agent} has {limit} inferences running")
        try:
            usage.infer_rate.take(agent)
        except AgentQuotaError:
            usage.counters["infer_refused:rate"] += 1
            raise
        if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
            raise AgentError(agent, f"deadline_ms must be a positive number, got {deadline_s * 1000!r}")
        usage.in_flight += 1
        try:
            outputs = await self.ports.infer(agent, model, inputs, priority, deadline_s)
        finally:
            usage.in_flight -= 1
        usage.counters["infer"] += 1
        return outputs

    async def publish(self, agent: str, stream: str, samples: list[Sample], best_effort: bool) -> None:
        usage = self._of(agent)
        self._check_stream(agent, stream)
        if not samples:
            return
        if len(samples) > MAX_SAMPLES_PER_PUBLISH:
            raise AgentError(agent, f"{len(samples)} samples in one publish, over {MAX_SAMPLES_PER_PUBLISH}")
        try:
            checked = [s if isinstance(s, Sample) else Sample.model_validate(s) for s in samples]
        except ValidationError as err:
            raise AgentError(agent, f"publish {stream}: not a sample: {err.errors()[0]['msg']}") from err
        try:
            usage.publish_rate.take(agent)
        except AgentQuotaError:
            usage.counters["publish_refused:rate"] += 1
            raise
        owner = self._owners.setdefault(stream, agent)
        if owner != agent:
            raise AgentError(agent, f"stream {stream!r} is {owner}'s output; pick another name")
        self.bus.publish(stream, checked)
        if not await self.ports.publish(stream, checked, best_effort):
            usage.counters["publish_refused:outbox"] += 1
            raise AgentError(agent, f"the outbox refused {stream}'s samples (full, or a full disk)")
        usage.counters["published"] += len(checked)

    async def event(self, agent: str, event_type: str, body: JsonValue) -> None:
        usage = self._of(agent)
        if not _ID.match(event_type):
            raise AgentError(agent, f"event type {event_type!r} must match {ID_PATTERN}")
        try:
            usage.publish_rate.take(agent)
        except AgentQuotaError:
            usage.counters["event_refused:rate"] += 1
            raise
        if not await self.ports.event(event_type, agent, body):
            usage.counters["event_refused:outbox"] += 1
            raise AgentError(agent, f"the outbox refused the {event_type} event (full, or a full disk)")
        usage.counters["events"] += 1

    async def actuate(self, agent: str, stream: str, value: float) -> None:
        usage = self._of(agent)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise AgentError(agent, f"actuate {stream}: the value must be a finite number, got {value!r}")
        if self.ports.actuate is None:
            raise AgentError(agent, "this kernel has no actuators")
        try:
            usage.publish_rate.take(agent)
        except AgentQuotaError:
            usage.counters["actuate_refused:rate"] += 1
            raise
        try:
            await self.ports.actuate(stream, float(value))
        except DriverError as err:
            usage.counters["actuate_refused"] += 1
            raise AgentError(agent, str(err)) from err
        usage.counters["actuated"] += 1

    def subscribe(self, agent: str, stream: str, depth: int) -> Subscription[Sample]:
        self._of(agent)
        if not _ID.match(stream):
            raise AgentError(agent, f"stream {stream!r} must match {ID_PATTERN}")
        if not 1 <= depth <= 1_000_000:
            raise AgentError(agent, f"depth must be 1 to 1000000, got {depth}")
        return self.bus.subscribe(stream, agent, depth)

    async def state_set(self, agent: str, key: str, value: JsonValue) -> None:
        self._of(agent)
        await asyncio.to_thread(self.states.put, agent, key, value)

    async def state_delete(self, agent: str, key: str) -> None:
        self._of(agent)
        await asyncio.to_thread(self.states.delete, agent, key)

    async def heartbeat(self, agent: str) -> None:
        return None

    async def kernel_stats(self, agent: str) -> dict[str, float]:
        self._of(agent)
        return self.ports.stats()

    def _check_stream(self, agent: str, stream: str) -> None:
        if not _ID.match(stream):
            raise AgentError(agent, f"stream {stream!r} must match {ID_PATTERN}")
        if stream in self.ports.sensor_streams:
            raise AgentError(agent, f"stream {stream!r} is a sensor's; an agent publishes its own streams")


def _burst(rate: float | None) -> float:
    return 1.0 if rate is None else max(1.0, 2.0 * rate)


_ID = re.compile(f"^{ID_PATTERN}$")
