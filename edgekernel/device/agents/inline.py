"""An agent run as an asyncio task in the kernel's own process: the cheapest isolation, and the one
that cannot survive an agent that blocks the event loop (use `process` for code you do not trust)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents import registry
from edgekernel.device.agents.context import Context, KernelCalls
from edgekernel.device.agents.store import StateStore

log = logging.getLogger(__name__)


class InlineExecution:
    def __init__(
        self,
        spec: AgentSpec,
        *,
        device: str,
        calls: KernelCalls,
        states: StateStore,
        on_end: Callable[[str], None] | None = None,
        load: Callable[[str], type[Any]] = registry.agent_class,
    ) -> None:
        self.spec = spec
        self._device = device
        self._calls = calls
        self._states = states
        self._on_end = on_end
        self._load = load
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cls = self._load(self.spec.agent)
        config = registry.configure(cls, self.spec.name, self.spec.config)
        saved = await asyncio.to_thread(self._states.load, self.spec.name)
        ctx = Context(
            agent=self.spec.name, device=self._device, config=config, calls=self._calls, state=saved
        )
        instance = cls()
        self._task = asyncio.create_task(instance.run(ctx), name=f"agent-run:{self.spec.name}")

    async def wait(self) -> None:
        assert self._task is not None
        try:
            await asyncio.wait([self._task])  # cancelling the waiter leaves the agent's task running
        finally:
            if self._task.done() and self._on_end is not None:
                self._on_end(self.spec.name)
        self._task.result()

    async def stop(self, timeout_s: float) -> bool:
        task = self._task
        if task is None or task.done():
            return True
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if self._on_end is not None:
            self._on_end(self.spec.name)
        if not done:  # it swallows cancellation; nothing can kill a coroutine, so it is left behind
            log.error("agent %s ignores its stop; it is abandoned and counted", self.spec.name)
            return False
        return True
