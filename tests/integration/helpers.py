"""Small helpers for tests that talk to a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from edgekernel.config import BrokerConfig
from edgekernel.config.models import ReconnectConfig
from edgekernel.link import Message, MqttSession
from tests.waiting import DEADLINE_S, wait_until_async
from tests.waiting import wait_until as sync_wait_until

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
        await self.session.wait_subscribed(DEADLINE_S)  # else what is published next may pass it by
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
        self, predicate: Callable[[list[Message]], bool], timeout: float = DEADLINE_S, what: str = "messages"
    ) -> None:
        await wait_until_async(
            lambda: predicate(self.messages),
            what,
            timeout=timeout,
            seen=lambda: (
                f"{len(self.messages)} messages, the last on {[m.topic for m in self.messages[-5:]]}"
            ),
        )


async def wait_until(
    condition: Callable[[], object], timeout: float = DEADLINE_S, what: str = "condition"
) -> None:
    """`tests.waiting.wait_until_async`, in the argument order these tests use."""
    await wait_until_async(condition, what, timeout=timeout)


def poll(condition: Callable[[], T | None], timeout: float = DEADLINE_S, what: str = "condition") -> T:
    """`tests.waiting.wait_until` for tests that drive subprocesses: the condition's true value."""
    value = sync_wait_until(condition, what, timeout=timeout)
    assert value is not None
    return value
