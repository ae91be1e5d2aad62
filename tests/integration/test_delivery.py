"""End to end: the device's outbox, QoS 1, the gateway's store and its acknowledgement."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.models import BatchConfig, ReconnectConfig, SensorConfig, SimSignal, StoreConfig
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway, read_summary
from edgekernel.link import Mosquitto, Outbox
from tests.stores import rows
from tests.waiting import DEADLINE_S

from .helpers import wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)


def device(broker: Mosquitto, tmp_path: Path) -> Kernel:
    return Kernel(
        DeviceConfig(
            fleet=FLEET,
            device="dev-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            data_dir=tmp_path / "dev-1",
            outbox=OutboxConfig(resend_after_s=1.0, synchronous="NORMAL"),
            sensors=[
                SensorConfig(
                    stream="vibration",
                    rate_hz=400,
                    batch=BatchConfig(max_samples=10, max_wait_ms=100),
                    sim=SimSignal(kind="vibration", seed=3),
                )
            ],
        )
    )


def gateway(broker: Mosquitto, tmp_path: Path) -> Gateway:
    return Gateway(
        GatewayConfig(
            fleet=FLEET,
            gateway="gw-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
        )
    )


def stored(tmp_path: Path) -> set[int]:
    return {seq for (seq,) in rows(tmp_path / "store.db", "SELECT seq FROM messages")}


async def run_both(kernel: Kernel, gw: Gateway, during: object) -> int:
    """Run both through `during`, wait until everything sent by then is acknowledged, stop both;
    returns the highest seq committed by the end of `during`."""
    stop_device, stop_gateway = asyncio.Event(), asyncio.Event()
    gw_task = asyncio.create_task(gw.run(stop_gateway))
    dev_task = asyncio.create_task(kernel.run(stop_device))
    await kernel.session.wait_connected(DEADLINE_S)
    await during  # type: ignore[misc]
    target = kernel.outbox.stats().highest_seq  # the stream goes on: wait for everything up to here
    await wait_until(
        lambda: set(range(1, target + 1)) <= stored(gw.config.store.path.parent),
        what="everything up to here stored",
    )
    stop_device.set()
    await dev_task
    await asyncio.sleep(0.3)
    stop_gateway.set()
    await gw_task
    return target


def still_in_outbox(tmp_path: Path) -> set[int]:
    async def read() -> set[int]:
        async with Outbox(tmp_path / "dev-1" / "outbox.db") as outbox:
            return {m.seq for m in await outbox.pending(10**6)}

    return asyncio.run(read())


def check_nothing_lost(tmp_path: Path, target: int) -> None:
    """Every seq up to `target` is stored once; every later one is stored or still in the outbox."""
    kept, waiting = stored(tmp_path), still_in_outbox(tmp_path)
    assert set(range(1, target + 1)) <= kept
    assert kept | waiting == set(range(1, max(kept | waiting) + 1))
    [summary] = read_summary(tmp_path / "store.db")
    assert summary.duplicates == 0 or summary.messages == len(kept)


def test_every_message_is_stored_once_and_acknowledged(broker: Mosquitto, tmp_path: Path) -> None:
    kernel, gw = device(broker, tmp_path), gateway(broker, tmp_path)
    committed = wait_until(lambda: kernel.outbox.stats().highest_seq >= 30, what="30 messages committed")
    target = asyncio.run(run_both(kernel, gw, committed))
    assert target >= 30
    check_nothing_lost(tmp_path, target)
    assert kernel.counters["telemetry_sent"] >= target


def test_a_broker_killed_mid_stream_loses_nothing(persistent_broker: Mosquitto, tmp_path: Path) -> None:
    broker = persistent_broker
    kernel, gw = device(broker, tmp_path), gateway(broker, tmp_path)

    async def chaos() -> None:
        await asyncio.sleep(0.8)
        broker.kill()  # what it acknowledged since its last autosave is gone
        await asyncio.sleep(1.0)
        broker.start()
        await asyncio.sleep(1.0)

    target = asyncio.run(run_both(kernel, gw, chaos()))
    check_nothing_lost(tmp_path, target)
