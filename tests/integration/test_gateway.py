"""The gateway stores valid telemetry once and refuses bad input with a reason, losing nothing else."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekernel.cli.main import app
from edgekernel.config import BrokerConfig, GatewayConfig
from edgekernel.config.models import StoreConfig
from edgekernel.gateway import Gateway, read_summary
from edgekernel.link import Mosquitto, MqttSession
from edgekernel.protocol import Encoding, Sample, StatusBody, TelemetryBody, decode, encode, topics
from edgekernel.protocol.bodies import AckBody

from .helpers import Collector, wait_until

pytestmark = pytest.mark.integration

FLEET = "plant"


def telemetry(
    device: str, seq: int, stream: str = "temp", n: int = 3, encoding: Encoding = Encoding.JSON
) -> bytes:
    body = TelemetryBody(stream=stream, samples=[Sample(ts=1.7e9 + i, value=float(i)) for i in range(n)])
    return encode(body.to_envelope(device, seq=seq), encoding)


def run_gateway(
    broker: Mosquitto,
    tmp_path: Path,
    scenario: Callable[[Gateway, MqttSession], Awaitable[None]],
    **extra: object,
) -> Gateway:
    cfg = GatewayConfig(
        fleet=FLEET,
        gateway="gw-1",
        broker=BrokerConfig(url=broker.url),
        store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
        **extra,  # type: ignore[arg-type]
    )
    gateway = Gateway(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await gateway.session.wait_subscribed(60)  # what is sent before would not reach it
        async with MqttSession(BrokerConfig(url=broker.url), client_id="sender", persistent=False) as sender:
            await sender.wait_connected(60)
            await scenario(gateway, sender)
        stop.set()
        await task

    asyncio.run(main())
    return gateway


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def test_stores_samples_and_drops_duplicates(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, sender: MqttSession) -> None:
        for seq in (1, 2, 2, 3):
            await sender.publish(topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-1", seq), qos=1)
        await sender.publish(
            topics.telemetry(FLEET, "dev-2", "temp"), telemetry("dev-2", 1, encoding=Encoding.CBOR), qos=1
        )
        await wait_until(lambda: gateway.counters["stored"] + gateway.counters["duplicates"] == 5)

    gateway = run_gateway(broker, tmp_path, scenario)
    assert gateway.counters["stored"] == 4
    assert gateway.counters["duplicates"] == 1
    db = tmp_path / "store.db"
    assert rows(db, "SELECT device, seq FROM messages ORDER BY device, seq") == [
        ("dev-1", 1),
        ("dev-1", 2),
        ("dev-1", 3),
        ("dev-2", 1),
    ]
    assert rows(db, "SELECT count(*) FROM samples") == [(12,)]
    assert rows(db, "SELECT value FROM samples WHERE device='dev-2' ORDER BY idx") == [(0.0,), (1.0,), (2.0,)]


def test_multi_channel_samples_keep_their_fields(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, sender: MqttSession) -> None:
        body = TelemetryBody(
            stream="accel", samples=[Sample(ts=1.7e9, value={"x": 0.1, "y": -0.2, "z": 9.8})]
        )
        await sender.publish(
            topics.telemetry(FLEET, "dev-1", "accel"), encode(body.to_envelope("dev-1", seq=7)), qos=1
        )
        await wait_until(lambda: gateway.counters["stored"] == 1)

    run_gateway(broker, tmp_path, scenario)
    [(value, fields)] = rows(tmp_path / "store.db", "SELECT value, fields FROM samples")
    assert value is None
    assert json.loads(str(fields)) == {"x": 0.1, "y": -0.2, "z": 9.8}


BAD = [
    ("not json", topics.telemetry(FLEET, "dev-1", "temp"), b"{not json", "bad-envelope"),
    ("garbage bytes", topics.telemetry(FLEET, "dev-1", "temp"), b"\x00\xff\xfe", "bad-cbor"),
    ("empty", topics.telemetry(FLEET, "dev-1", "temp"), b"", "empty"),
    ("oversized", topics.telemetry(FLEET, "dev-1", "temp"), b"{" + b" " * 5000 + b"}", "oversized"),
    ("unknown kind", f"ek/v1/{FLEET}/dev-1/bogus", telemetry("dev-1", 9), "unknown-kind"),
    ("wrong depth", f"ek/v1/{FLEET}/dev-1/telemetry", telemetry("dev-1", 9), "bad-depth"),
    ("bad device id", f"ek/v1/{FLEET}/Dev_1/telemetry/temp", telemetry("dev-1", 9), "bad-id"),
    ("other sender", topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-9", 9), "src-mismatch"),
    ("stream mismatch", topics.telemetry(FLEET, "dev-1", "other"), telemetry("dev-1", 9), "stream-mismatch"),
    (
        "wrong type",
        topics.telemetry(FLEET, "dev-1", "temp"),
        encode(StatusBody(online=True, boot=1).to_envelope("dev-1")),
        "wrong-type",
    ),
    (
        "bad body",
        topics.telemetry(FLEET, "dev-1", "temp"),
        b'{"v":1,"id":"x1","src":"dev-1","seq":5,"ts":1.0,"type":"telemetry","body":{"stream":"temp","samples":[]}}',
        "bad-body",
    ),
    (
        "bad status",
        topics.status(FLEET, "dev-1"),
        b'{"v":1,"id":"s","src":"dev-1","ts":1.7e9,"type":"status","body":{}}',
        "bad-body",
    ),
    (
        "seq on a status",
        topics.status(FLEET, "dev-1"),
        b'{"v":1,"id":"s","src":"dev-1","seq":3,"ts":1.7e9,"type":"status","body":{"online":true,"boot":1}}',
        "unexpected-seq",
    ),
    (
        "forged seq 2**63-1",
        topics.telemetry(FLEET, "dev-1", "temp"),
        encode(
            TelemetryBody(stream="temp", samples=[Sample(ts=1.7e9, value=1.0)]).to_envelope(
                "dev-1", seq=2**63 - 1
            )
        ),
        "seq-jump",
    ),
    (
        "envelope ts 1e15",
        topics.telemetry(FLEET, "dev-1", "temp"),
        encode(
            TelemetryBody(stream="temp", samples=[Sample(ts=1.7e9, value=1.0)]).to_envelope(
                "dev-1", seq=3, ts=1e15
            )
        ),
        "bad-ts",
    ),
    (
        "envelope ts 0",
        topics.status(FLEET, "dev-1"),
        encode(StatusBody(online=True, boot=1).to_envelope("dev-1", ts=0.0)),
        "bad-ts",
    ),
    (
        "sample ts 1e300",
        topics.telemetry(FLEET, "dev-1", "temp"),
        encode(
            TelemetryBody(stream="temp", samples=[Sample(ts=1e300, value=1.0)]).to_envelope("dev-1", seq=3)
        ),
        "bad-ts",
    ),
]


@pytest.mark.parametrize(("case", "topic", "payload", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_reason_and_nothing_else_is_lost(
    broker: Mosquitto, tmp_path: Path, case: str, topic: str, payload: bytes, reason: str
) -> None:
    async def scenario(gateway: Gateway, sender: MqttSession) -> None:
        await sender.publish(topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-1", 1), qos=1)
        await sender.publish(topic, payload, qos=1)
        await sender.publish(topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-1", 2), qos=1)
        await wait_until(lambda: gateway.counters["stored"] == 2 and gateway.counters["rejected"] == 1)

    gateway = run_gateway(broker, tmp_path, scenario, max_payload_bytes=4096)
    assert gateway.counters[f"rejected:{reason}"] == 1, dict(gateway.counters)
    db = tmp_path / "store.db"
    assert rows(db, "SELECT seq FROM messages ORDER BY seq") == [(1,), (2,)]
    [(stored_topic, stored_reason, size)] = rows(db, "SELECT topic, reason, size FROM rejected")
    assert (stored_topic, stored_reason, size) == (topic, reason, len(payload))


def test_status_and_reported_update_the_device_table(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario(gateway: Gateway, sender: MqttSession) -> None:
        status = encode(StatusBody(online=True, boot=4).to_envelope("dev-1"))
        await sender.publish(topics.status(FLEET, "dev-1"), status, qos=1, retain=True)
        await wait_until(lambda: gateway.counters["accepted:status"] == 1)

    run_gateway(broker, tmp_path, scenario)
    assert rows(tmp_path / "store.db", "SELECT device, online, boot FROM devices") == [("dev-1", 1, 4)]


def test_shared_subscription_gateways_split_the_load(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario(first: Gateway, sender: MqttSession) -> None:
        second_cfg = first.config.model_copy(
            update={"gateway": "gw-2", "store": StoreConfig(path=tmp_path / "store2.db", batch_wait_ms=20)}
        )
        second = Gateway(second_cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        await second.session.wait_subscribed(60)  # else the broker hands everything to the first
        for seq in range(1, 41):
            await sender.publish(topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-1", seq), qos=1)
        await wait_until(lambda: first.counters["stored"] + second.counters["stored"] == 40)
        assert first.counters["stored"] > 0
        assert second.counters["stored"] > 0
        stop.set()
        await task

    run_gateway(broker, tmp_path, scenario, share_group="gateways")


def test_a_gateway_stopped_mid_stream_and_restarted_stores_everything_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    total = 3000
    cfg = GatewayConfig(
        fleet=FLEET,
        gateway="gw-1",
        broker=BrokerConfig(url=broker.url),
        store=StoreConfig(path=tmp_path / "store.db", batch_wait_ms=20),
    )

    async def main() -> None:
        async with MqttSession(BrokerConfig(url=broker.url), client_id="sender", persistent=False) as sender:
            await sender.wait_connected(10)
            first = Gateway(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(first.run(stop))
            await first.session.wait_subscribed(10)
            topic = topics.telemetry(FLEET, "dev-1", "temp")
            for seq in range(1, total + 1):
                sender.publish_nowait(topic, telemetry("dev-1", seq, n=1), qos=1)
                if seq == total // 3:
                    stop.set()
                if seq % 200 == 0:
                    await asyncio.sleep(0.01)
            await sender.publish(topic, telemetry("dev-1", total + 1, n=1), qos=1)
            await task
            second = Gateway(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(second.run(stop))
            await wait_until(
                lambda: second.counters["stored"] + first.counters["stored"] >= total + 1, timeout=120
            )
            stop.set()
            await task

    asyncio.run(main())
    assert rows(
        tmp_path / "store.db", "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM messages"
    ) == [(total + 1, total + 1, 1, total + 1)]


def test_the_gateway_acknowledges_what_it_stored_and_re_acks_duplicates(
    broker: Mosquitto, tmp_path: Path
) -> None:
    acks: list[list[list[int]]] = []

    async def scenario(gateway: Gateway, sender: MqttSession) -> None:
        async with Collector(broker.url, topics.ack(FLEET, "dev-1"), client_id="acks") as seen:
            for seq in (1, 2, 3, 5):
                await sender.publish(topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-1", seq), qos=1)
            await wait_until(lambda: gateway.counters["stored"] == 4)
            await sender.publish(topics.telemetry(FLEET, "dev-1", "temp"), telemetry("dev-1", 2), qos=1)
            await wait_until(lambda: gateway.counters["duplicates"] == 1)
            await seen.wait_for(
                lambda ms: sum(len(list(AckBody.from_envelope(decode(m.payload)).seqs())) for m in ms) == 5
            )
            acks.extend(AckBody.from_envelope(decode(m.payload)).ranges for m in seen.messages)

    run_gateway(broker, tmp_path, scenario)
    acked = sorted(seq for ranges in acks for first, last in ranges for seq in range(first, last + 1))
    assert acked == [1, 2, 2, 3, 5]
    [summary] = read_summary(tmp_path / "store.db")
    assert (summary.messages, summary.highest_seq, summary.duplicates, summary.gaps) == (4, 5, 1, 1)
    result = CliRunner().invoke(app, ["gateway", "stats", "--store", str(tmp_path / "store.db"), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)["devices"]
    assert (row["device"], row["messages"], row["duplicates"], row["gaps"]) == ("dev-1", 4, 1, 1)
