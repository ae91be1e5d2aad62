"""Fault test 5: a full outbox under each overflow policy; its counters match exactly what did not arrive."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.models import BatchConfig, ReconnectConfig, SensorConfig, StoreConfig
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway
from edgekernel.link import Mosquitto, OutboxStats
from tests.waiting import DEADLINE_S, wait_until_async

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)


def stored(path: Path) -> set[int]:
    if not path.exists():
        return set()
    with sqlite3.connect(path) as db:
        return {seq for (seq,) in db.execute("SELECT seq FROM messages")}


def overflowed(policy: str, stats: OutboxStats) -> bool:
    """The full outbox has acted on its policy at least once."""
    if policy == "drop-oldest":
        return stats.dropped_oldest > 0
    if policy == "drop-newest":
        return stats.dropped_newest > 0
    return stats.refused > 0


@pytest.mark.parametrize("policy", ["drop-oldest", "drop-newest", "block"])
def test_overflow_counters_match_what_did_not_arrive(broker: Mosquitto, tmp_path: Path, policy: str) -> None:
    outbox = OutboxConfig(
        max_bytes=40_000, overflow=policy, block_timeout_s=0.05, resend_after_s=1.0, synchronous="NORMAL"
    )
    kernel = Kernel(
        DeviceConfig(
            fleet="chaos",
            device="dev-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            data_dir=tmp_path / "dev-1",
            outbox=outbox,
            sensors=[
                SensorConfig(stream="vib", rate_hz=200, batch=BatchConfig(max_samples=2, max_wait_ms=50))
            ],
        )
    )
    store = tmp_path / "store.db"
    gw = Gateway(
        GatewayConfig(
            fleet="chaos",
            gateway="gw-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            store=StoreConfig(path=store, batch_wait_ms=20),
        )
    )

    async def scenario() -> None:
        stop_device, stop_gateway = asyncio.Event(), asyncio.Event()
        gw_task = asyncio.create_task(gw.run(stop_gateway))
        dev_task = asyncio.create_task(kernel.run(stop_device))
        await kernel.session.wait_connected(DEADLINE_S)
        await asyncio.sleep(0.5)
        broker.stop()  # the outbox fills: about 40 kB of ~400-byte messages at 100 a second
        await wait_until_async(
            lambda: overflowed(policy, kernel.outbox.stats()),
            f"the outbox to overflow ({policy})",
            seen=kernel.outbox.stats,
        )
        await asyncio.sleep(0.5)
        broker.start()
        await asyncio.sleep(1.0)
        stop_device.set()  # stop producing, then let everything left be delivered
        await dev_task
        replay = Kernel(kernel.config.model_copy(update={"sensors": []}))  # only drains what is left
        stop_device = asyncio.Event()
        dev_task = asyncio.create_task(replay.run(stop_device))
        await replay.session.wait_connected(DEADLINE_S)
        committed.append(replay.outbox.stats().highest_seq)
        await wait_until_async(
            lambda: replay.outbox.stats().pending == 0, "the outbox drained", seen=replay.outbox.stats
        )
        stop_device.set()
        await dev_task
        await asyncio.sleep(0.3)
        stop_gateway.set()
        await gw_task

    committed: list[int] = []
    asyncio.run(scenario())
    stats = kernel.outbox.stats()
    arrived = stored(store)
    highest = committed[0]  # the high-water mark on disk: seqs whose put returned
    if policy == "drop-oldest":
        dropped = {seq for first, last in stats.dropped_oldest_ranges for seq in range(first, last + 1)}
        assert stats.dropped_oldest == len(dropped) > 0
        lost = set(range(1, highest + 1)) - arrived
        # a dropped message that had already been handed to the broker may still arrive
        assert lost <= dropped
        assert len(dropped - arrived) >= stats.dropped_oldest - stats.dropped_oldest_sent
    elif policy == "drop-newest":
        assert stats.dropped_newest > 0
        assert kernel.counters["outbox_refused"] == stats.dropped_newest  # refused: never given a seq
        assert arrived >= set(range(1, highest + 1))  # everything that got a seq arrived
    else:
        assert stats.refused > 0  # a put that waited past block_timeout_s
        assert kernel.counters["outbox_refused"] == stats.refused
        assert arrived >= set(range(1, highest + 1))
