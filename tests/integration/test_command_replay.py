"""A captured command cannot be replayed after the device restarts: the ids of accepted commands are kept
in the device's state file until they expire. A signed command sent on the topic of another command is
refused, not run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgekernel.config import BrokerConfig, DeviceConfig
from edgekernel.config.models import ReconnectConfig
from edgekernel.device.kernel import Kernel
from edgekernel.link import Mosquitto, MqttSession
from edgekernel.protocol import Envelope, FleetKey, ReplyBody, decode, encode, sign_command, topics

pytestmark = pytest.mark.integration

FLEET = "plant"
REPLIES = f"ek-reply/{FLEET}/ops"


async def send(broker: Mosquitto, envelope: Envelope, topic_name: str = "ping") -> ReplyBody:
    """Publish `envelope` as it was captured on `…/cmd/{topic_name}`, and return the device's reply."""
    session = MqttSession(
        BrokerConfig(url=broker.url), client_id="ops", subscriptions=[(REPLIES, 1)], persistent=False
    )
    async with session:
        await session.wait_subscribed(10)
        await session.publish(
            topics.cmd(FLEET, "dev-01", topic_name),
            encode(envelope),
            qos=1,
            response_topic=REPLIES,
            correlation_data=envelope.id.encode(),
        )
        async with asyncio.timeout(10):
            async for message in session.messages():
                return ReplyBody.from_envelope(decode(message.payload))
    raise AssertionError("no reply")


def device_config(broker: Mosquitto, tmp_path: Path, key: FleetKey) -> DeviceConfig:
    (tmp_path / "fleet.pub").write_bytes(key.public_pem())
    return DeviceConfig(
        fleet=FLEET,
        device="dev-01",
        broker=BrokerConfig(url=broker.url, reconnect=ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5)),
        data_dir=tmp_path / "dev-01",
        fleet_keys=[tmp_path / "fleet.pub"],
    )


def test_a_command_accepted_before_a_restart_is_refused_as_replayed_after_it(
    broker: Mosquitto, tmp_path: Path
) -> None:
    key = FleetKey.generate()
    config = device_config(broker, tmp_path, key)
    captured = sign_command(key, src="ops", device="dev-01", name="ping", args={}, ttl_s=60)
    fresh = sign_command(key, src="ops", device="dev-01", name="ping", args={}, ttl_s=60)

    async def run_once(envelopes: list[Envelope]) -> list[ReplyBody]:
        kernel = Kernel(config)
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_subscribed(10)
        replies = [await send(broker, envelope) for envelope in envelopes]
        stop.set()
        await task
        return replies

    [first] = asyncio.run(run_once([captured]))
    assert first.ok
    again, other = asyncio.run(run_once([captured, fresh]))  # a new process, the same data_dir
    assert not again.ok
    assert again.error is not None
    assert again.error.reason == "replayed"
    assert other.ok


def test_a_signed_command_on_the_topic_of_another_is_refused_and_not_run(
    broker: Mosquitto, tmp_path: Path
) -> None:
    key = FleetKey.generate()
    config = device_config(broker, tmp_path, key)
    stats = sign_command(key, src="ops", device="dev-01", name="stats", args={}, ttl_s=60)
    ping = sign_command(key, src="ops", device="dev-01", name="ping", args={}, ttl_s=60)

    async def scenario() -> tuple[list[ReplyBody], dict[str, int]]:
        kernel = Kernel(config)
        stop = asyncio.Event()
        task = asyncio.create_task(kernel.run(stop))
        await kernel.session.wait_subscribed(10)
        replies = [
            await send(broker, stats, topic_name="ping"),  # a signed stats on …/cmd/ping
            await send(broker, ping, topic_name="stats"),  # a signed ping on …/cmd/stats
            await send(broker, stats, topic_name="stats"),  # the same stats on its own topic runs
        ]
        assert kernel.commands is not None
        counters = dict(kernel.commands.counters)
        stop.set()
        await task
        return replies, counters

    replies, counters = asyncio.run(scenario())
    for refused in replies[:2]:
        assert not refused.ok
        assert refused.error is not None
        assert refused.error.reason == "name-mismatch"
    assert replies[2].ok
    assert isinstance(replies[2].result, dict)
    assert counters["refused:name-mismatch"] == 2
    assert counters["ok"] == 1
