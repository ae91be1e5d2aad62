"""The in-process bus: every subscriber gets every item, a slow one loses its oldest, counted."""

from __future__ import annotations

import asyncio

from edgekernel.device.agents.bus import Bus


async def test_each_subscriber_gets_what_is_published_in_order() -> None:
    bus: Bus[int] = Bus()
    a = bus.subscribe("s", "a")
    b = bus.subscribe("s", "b")
    bus.publish("s", [1, 2, 3])
    bus.publish("other", [9])
    assert [await a.get() for _ in range(3)] == [1, 2, 3]
    assert [await b.get() for _ in range(3)] == [1, 2, 3]
    assert a.pending == 0


async def test_a_slow_subscriber_drops_its_oldest_and_counts_them() -> None:
    bus: Bus[int] = Bus()
    slow = bus.subscribe("s", "slow", depth=4)
    fast = bus.subscribe("s", "fast", depth=100)
    bus.publish("s", range(10))
    assert [slow.get_nowait() for _ in range(4)] == [6, 7, 8, 9]
    assert slow.dropped == 6
    assert bus.dropped["slow"] == 6
    assert fast.pending == 10


async def test_closing_ends_the_iteration_after_what_is_pending() -> None:
    bus: Bus[int] = Bus()
    sub = bus.subscribe("s", "a")
    got: list[int] = []

    async def read() -> None:
        async for item in sub:
            got.append(item)

    reader = asyncio.create_task(read())
    bus.publish("s", [1, 2])
    await asyncio.sleep(0)
    bus.close_owner("a")
    await asyncio.wait_for(reader, 5)
    assert got == [1, 2]
    assert bus.subscribers("s") == 0
