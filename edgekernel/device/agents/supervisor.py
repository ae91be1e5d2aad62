"""The supervisor: runs each configured agent, restarts it by its policy and backoff, marks it broken
after too many failures, and applies a new list of agents (start, stop, reconfigure) without touching
the agents that did not change.

Each agent has one supervising task. A run is an `Execution`: an asyncio task in the kernel
(`inline`) or a child process (`process`); both end in a return, an error, or a kill when a stop does
not finish within `stop_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import JsonValue

from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents.errors import AgentConfigError, AgentError
from edgekernel.device.agents.lifecycle import AgentState, Backoff, Change, Lifecycle, RestartPolicy

log = logging.getLogger(__name__)


class Execution(Protocol):
    """One run of an agent."""

    async def start(self) -> None:
        """Load and start it; raises AgentError when it cannot start (AgentConfigError: never will)."""

    async def wait(self) -> None:
        """Until the run ends by itself: returns, or raises what ended it."""

    async def stop(self, timeout_s: float) -> bool:
        """Ask it to stop; kill it after `timeout_s`. True when it stopped by itself."""


ExecutionFactory = Callable[[AgentSpec], Execution]


@dataclass(frozen=True, slots=True)
class AgentStatus:
    name: str
    agent: str
    isolation: str
    state: str
    since: float
    restarts: int
    failures: int
    last_error: str
    retry_in_s: float | None
    killed: int

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "name": self.name,
            "agent": self.agent,
            "isolation": self.isolation,
            "state": self.state,
            "since": round(self.since, 3),
            "restarts": self.restarts,
            "failures": self.failures,
            "last_error": self.last_error,
            "retry_in_s": None if self.retry_in_s is None else round(self.retry_in_s, 3),
            "killed": self.killed,
        }


@dataclass(slots=True)
class _Supervised:
    spec: AgentSpec
    lifecycle: Lifecycle
    task: asyncio.Task[None] | None = None
    execution: Execution | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    killed: int = 0


class Supervisor:
    def __init__(
        self,
        factory: ExecutionFactory,
        *,
        on_change: Callable[[Change], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._factory = factory
        self._on_change = on_change
        self._clock = clock
        self._agents: dict[str, _Supervised] = {}
        self.killed: Counter[str] = Counter()  # stops that did not finish in time, by agent

    @property
    def names(self) -> list[str]:
        return list(self._agents)

    async def apply(self, specs: Sequence[AgentSpec]) -> None:
        """Run exactly `specs`: stop the agents no longer listed or whose spec changed, start the new
        and changed ones; a broken agent whose spec is applied again is cleared and started."""
        wanted = {spec.name: spec for spec in specs}
        for name, supervised in list(self._agents.items()):
            spec = wanted.get(name)
            if spec is None or spec != supervised.spec:
                await self._stop(name)
        for name, spec in wanted.items():
            supervised_now = self._agents.get(name)
            if supervised_now is None:
                self._start(spec)
            elif supervised_now.lifecycle.state is AgentState.BROKEN:
                self.restart(name)

    def restart(self, name: str) -> bool:
        """Clear a broken or backing-off agent and start it at once (an agent-restart command)."""
        supervised = self._agents.get(name)
        if supervised is None:
            return False
        supervised.lifecycle.clear(self._clock())
        if supervised.task is None or supervised.task.done():
            supervised.task = asyncio.create_task(self._supervise(supervised), name=f"agent:{name}")
        else:
            supervised.wake.set()
        return True

    def _start(self, spec: AgentSpec) -> None:
        lifecycle = Lifecycle(
            spec.name,
            policy=RestartPolicy(spec.restart),
            backoff=Backoff(first_s=spec.backoff_first_s, cap_s=spec.backoff_cap_s),
            max_failures=spec.max_failures,
            failure_window_s=spec.failure_window_s,
            on_change=self._changed,
        )
        supervised = _Supervised(spec, lifecycle)
        self._agents[spec.name] = supervised
        supervised.task = asyncio.create_task(self._supervise(supervised), name=f"agent:{spec.name}")

    def _changed(self, change: Change) -> None:
        log.info(
            "agent %s: %s → %s%s",
            change.agent,
            change.old,
            change.new,
            f" ({change.reason})" if change.reason else "",
        )
        if self._on_change is not None:
            self._on_change(change)

    async def _supervise(self, supervised: _Supervised) -> None:
        lifecycle, spec = supervised.lifecycle, supervised.spec
        while not supervised.stopping:
            supervised.wake.clear()
            lifecycle.starting(self._clock())
            execution = self._factory(spec)
            supervised.execution = execution
            try:
                await execution.start()
            except AgentConfigError as err:
                lifecycle.broken(self._clock(), str(err))
                return
            except AgentError as err:
                delay = self._failed_to_start(lifecycle, str(err))
            else:
                lifecycle.running(self._clock())
                delay = await self._until_ended(supervised, execution)
            supervised.execution = None
            if delay is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(supervised.wake.wait(), delay)

    def _failed_to_start(self, lifecycle: Lifecycle, error: str) -> float | None:
        lifecycle.running(self._clock())  # ended() counts from a start; a load failure ran for 0 s
        return lifecycle.ended(self._clock(), error)

    async def _until_ended(self, supervised: _Supervised, execution: Execution) -> float | None:
        try:
            await execution.wait()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            return supervised.lifecycle.ended(self._clock(), _describe(err))
        return supervised.lifecycle.ended(self._clock(), None)

    async def _stop(self, name: str) -> None:
        supervised = self._agents.pop(name, None)
        if supervised is None:
            return
        supervised.stopping = True
        lifecycle = supervised.lifecycle
        task, execution = supervised.task, supervised.execution
        if lifecycle.state in (AgentState.RUNNING, AgentState.STARTING) and execution is not None:
            lifecycle.stopping(self._clock(), "stop")
            if task is not None:
                task.cancel()  # the supervising task; the execution is stopped below
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not await execution.stop(supervised.spec.stop_timeout_s):
                supervised.killed += 1
                self.killed[name] += 1
                log.warning("agent %s did not stop within %g s: killed", name, supervised.spec.stop_timeout_s)
            lifecycle.stopped(self._clock(), "stop")
            return
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if lifecycle.state in (AgentState.BACKOFF, AgentState.BROKEN):
            lifecycle.stopped(self._clock(), "stop")

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(name) for name in list(self._agents)))

    def status(self) -> list[AgentStatus]:
        return [
            AgentStatus(
                name=s.spec.name,
                agent=s.spec.agent,
                isolation=s.spec.isolation,
                state=s.lifecycle.state.value,
                since=s.lifecycle.since,
                restarts=s.lifecycle.restarts,
                failures=s.lifecycle.failures,
                last_error=s.lifecycle.last_error,
                retry_in_s=s.lifecycle.retry_in_s,
                killed=s.killed,
            )
            for s in self._agents.values()
        ]


def _describe(err: BaseException) -> str:
    text = str(err)
    name = type(err).__name__
    message = f"{name}: {text}" if text else name
    return message[:500]
