"""The device's in-process bus: sensor streams and agents' output streams, to the agents that
subscribe, with no broker round trip.

Publishing never waits: each subscriber has its own bounded queue, and when a slow one's queue is
full its oldest item is dropped and counted (on the subscription and on the bus), so one slow agent
never holds up a sensor or another agent.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_DEPTH = 1024


class Subscription(Generic[T]):
    def __init__(self, bus: Bus[T], stream: str, owner: str, depth: int) -> None:
        if depth < 1:
            raise ValueError("a subscription holds at least 1 item")
        self.stream = stream
        self.owner = owner
        self.depth = depth
        self.delivered = 0
        self.dropped = 0
        self._bus = bus
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def _offer(self, items: Iterable[T]) -> int:
        dropped = 0
        for item in items:
            if len(self._items) >= self.depth:
                self._items.popleft()
                dropped += 1
            self._items.append(item)
        self.dropped += dropped
        self._ready.set()
        return dropped

    def get_nowait(self) -> T | None:
        if not self._items:
            return None
        self.delivered += 1
        return self._items.popleft()

    async def get(self) -> T:
        """The next item; raises StopAsyncIteration once the subscription is closed and drained."""
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        self.delivered += 1
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await self.get()

    @property
    def pending(self) -> int:
        return len(self._items)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._bus._remove(self)


class Bus(Generic[T]):
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscription[T]]] = {}
        self.published: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # by subscriber (owner)

    def subscribe(self, stream: str, owner: str, depth: int = DEFAULT_DEPTH) -> Subscription[T]:
        subscription = Subscription(self, stream, owner, depth)
        self._subscribers.setdefault(stream, []).append(subscription)
        return subscription

    def publish(self, stream: str, items: Iterable[T]) -> None:
        """Hand `items` to every subscriber of `stream` (from the event loop's thread)."""
        subscribers = self._subscribers.get(stream)
        batch = list(items)
        self.published[stream] += len(batch)
        if not subscribers:
            return
        for subscription in subscribers:
            dropped = subscription._offer(batch)
            if dropped:
                self.dropped[subscription.owner] += dropped

    def subscribers(self, stream: str) -> int:
        return len(self._subscribers.get(stream, ()))

    def close_owner(self, owner: str) -> None:
        """Close what `owner` subscribed to (an agent that stopped)."""
        for subscription in [s for subs in self._subscribers.values() for s in subs if s.owner == owner]:
            subscription.close()

    def _remove(self, subscription: Subscription[T]) -> None:
        subscribers = self._subscribers.get(subscription.stream, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            self._subscribers.pop(subscription.stream, None)
