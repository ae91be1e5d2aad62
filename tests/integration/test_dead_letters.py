"""A device's own message that the gateway can never accept (here: larger than the gateway's payload
limit) becomes a dead letter: kept whole in the gateway's rejected table and acknowledged, so the device
frees it instead of sending it again and again; over MQTT and over CoAP."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig, GatewayConfig, OutboxConfig
from edgekernel.config.models import (
    BatchConfig,
    DeviceCoapConfig,
    GatewayCoapConfig,
    ReconnectConfig,
    SensorConfig,
    StoreConfig,
)
from edgekernel.device.kernel import Kernel
from edgekernel.gateway import Gateway
from edgekernel.link import Mosquitto, free_port
from edgekernel.protocol import decode

from .helpers import wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"
FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)
LIMIT = 2048


def sensors() -> list[SensorConfig]:
    return [
        SensorConfig(stream="small", rate_hz=100, batch=BatchConfig(max_samples=5, max_wait_ms=100)),
        SensorConfig(stream="large", rate_hz=400, batch=BatchConfig(max_samples=200, max_wait_ms=60_000)),
    ]


def rejected(store: Path) -> list[tuple[str, bytes]]:
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        return list(db.execute("SELECT reason, payload FROM rejected"))


@pytest.mark.parametrize("link", ["mqtt", "coap"])
def test_a_message_the_gateway_can_never_take_is_dead_lettered_not_resent(
    link: str, broker: Mosquitto, tmp_path: Path
) -> None:
    coap_port = free_port()
    coap = (
        DeviceCoapConfig(serve=False, gateway_url=f"coap://127.0.0.1:{coap_port}", reconnect=FAST)
        if link == "coap"
        else None
    )
    kernel = Kernel(
        DeviceConfig(
            fleet=FLEET,
            device="dev-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            data_dir=tmp_path / "dev-1",
            outbox=OutboxConfig(resend_after_s=0.5, synchronous="NORMAL"),
            coap=coap,
            sensors=sensors(),
        )
    )
    gw = Gateway(
        GatewayConfig(
            fleet=FLEET,
            gateway="gw-1",
            broker=BrokerConfig(url=broker.url, reconnect=FAST),
            store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
            max_payload_bytes=LIMIT,
            coap=GatewayCoapConfig(host="127.0.0.1", port=coap_port),
        )
    )
    store = tmp_path / "store.db"

    async def scenario() -> None:
        stop_dev, stop_gw = asyncio.Event(), asyncio.Event()
        gw_task = asyncio.create_task(gw.run(stop_gw))
        await gw.session.wait_subscribed(10)
        dev_task = asyncio.create_task(kernel.run(stop_dev))
        if link == "mqtt":
            await wait_until(lambda: len(rejected(store)) >= 2, timeout=15, what="two dead letters")
        else:
            await wait_until(lambda: kernel.outbox.stats().dead >= 2, timeout=15, what="two dead letters")
        await asyncio.sleep(2.0)  # four resend periods: a poison message would be sent again by now
        stats = kernel.outbox.stats()
        stop_dev.set()
        await dev_task
        await asyncio.sleep(0.3)
        stop_gw.set()
        await gw_task
        assert stats.pending < 10, "the dead letters were not freed"
        with sqlite3.connect(store) as db:
            streams = {s for (s,) in db.execute("SELECT DISTINCT stream FROM messages")}
        assert streams == {"small"}  # the rest of the stream went on

        if link == "mqtt":  # the gateway keeps them whole, and acknowledges them
            rows = rejected(store)
            assert {reason for reason, _ in rows} == {"oversized"}
            for _, payload in rows:
                envelope = decode(payload, max_size=len(payload))
                assert envelope.body["stream"] == "large"
                assert len(payload) > LIMIT
            letters = len({decode(p, max_size=len(p)).seq for _, p in rows})
            assert gw.counters["dead_letters"] == len(rows)
            assert len(rows) <= letters + 1  # at most one of them re-sent before its acknowledgement came
        else:  # refused (4.13) before the gateway read it: the device keeps them as dead letters
            assert gw.coap is not None
            with sqlite3.connect(tmp_path / "dev-1" / "outbox.db") as db:
                dead = list(db.execute("SELECT stream, reason, payload FROM dead"))
            assert len(dead) >= 2
            # a refusal that came as the device stopped may have found its outbox closed
            assert len(dead) <= kernel.counters["refused_by_gateway"] <= len(dead) + 1
            assert gw.coap.counters["ingest:4.13"] >= kernel.counters["refused_by_gateway"]
            for stream, reason, payload in dead:
                assert stream == "large"
                assert reason.startswith("4.13")
                assert decode(payload, max_size=len(payload)).body["stream"] == "large"

    asyncio.run(scenario())
