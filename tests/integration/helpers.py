"""Small helpers for tests that talk to a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from edgekernel.config import BrokerConfig
from edgekernel.config.models import ReconnectConfig
from edgekernel.link import Message, MqttSession

T = TypeVar("T")


class Collector:
    """A subscriber that keeps everything it receives."""

    def __init__(
        self,
        broker_url: str,
        topic_filter: str = "#",
        client_id: str = "collector",
        *,
        persistent: bool = False,
    ) -> None:
        self.session = MqttSession(
            BrokerConfig(url=broker_url, reconnect=ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)),
            client_id=client_id,
            subscriptions=[(topic_filter, 1)],
            persistent=persistent,
        )
        self.messages: list[Message] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self.session.start()
        await self.session.wait_connected(10)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        if self._task is not None:
            await self._task

    async def _collect(self) -> None:
        async for message in self.session.messages():
            self.messages.append(message)

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 10.0, what: str = "messages"
    ) -> None:
        await wait_until(lambda: predicate(self.messages), timeout, what)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def poll(condition: Callable[[], T | None], timeout: float = 10.0, what: str = "condition") -> T:
    """Synchronous polling for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
