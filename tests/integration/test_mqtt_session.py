"""The MQTT 5 session over paho-mqtt 2, against a real Mosquitto."""

from __future__ import annotations

import asyncio

import pytest

from edgekernel.config import BrokerConfig
from edgekernel.config.models import ReconnectConfig
from edgekernel.link import Mosquitto, MqttSession, NotConnectedError, Outgoing

from .helpers import Collector, wait_until

pytestmark = pytest.mark.integration

FAST = ReconnectConfig(min_delay_s=0.1, max_delay_s=0.5, jitter=0.5)


def config(broker: Mosquitto) -> BrokerConfig:
    return BrokerConfig(url=broker.url, reconnect=FAST, keepalive_s=5)


def test_publish_and_receive_in_order_with_mqtt5_properties(broker: Mosquitto) -> None:
    async def scenario() -> None:
        async with Collector(broker.url, "t/#") as seen, MqttSession(config(broker), client_id="pub") as pub:
            await pub.wait_connected(10)
            for i in range(200):
                pub.publish_nowait("t/x", b"%d" % i, qos=1, content_type="text/plain")
            await pub.publish("t/x", b"last", qos=1, response_topic="t/reply", correlation_data=b"c1")
            await seen.wait_for(lambda ms: any(m.payload == b"last" for m in ms))
            payloads = [m.payload for m in seen.on("t/x")]
            assert payloads == [b"%d" % i for i in range(200)] + [b"last"]
            last = seen.on("t/x")[-1]
            assert last.response_topic == "t/reply"
            assert last.correlation_data == b"c1"
            assert seen.on("t/x")[0].content_type == "text/plain"

    asyncio.run(scenario())


def test_birth_on_connect_and_last_will_on_abrupt_loss(broker: Mosquitto) -> None:
    async def scenario() -> None:
        def will() -> Outgoing:
            return Outgoing("dev/status", b"offline", qos=1, retain=True)

        def birth() -> Outgoing:
            return Outgoing("dev/status", b"online", qos=1, retain=True)

        async with Collector(broker.url, "dev/#") as seen:
            session = MqttSession(config(broker), client_id="dev", will=will, birth=birth)
            session.start()
            await seen.wait_for(lambda ms: [m.payload for m in ms] == [b"online"])
            sock = session._client.socket()  # cut the TCP connection without DISCONNECT
            assert sock is not None
            sock.close()
            await seen.wait_for(lambda ms: b"offline" in [m.payload for m in ms])
            await seen.wait_for(lambda ms: [m.payload for m in ms][-1] == b"online", timeout=15)
            await session.close()

    asyncio.run(scenario())


def test_both_sides_reconnect_after_a_broker_restart_and_nothing_queued_is_lost(
    persistent_broker: Mosquitto,
) -> None:
    broker = persistent_broker

    async def scenario() -> None:
        async with (
            Collector(broker.url, "q/#", client_id="durable-collector", persistent=True) as seen,
            MqttSession(config(broker), client_id="pub") as pub,
        ):
            await pub.wait_connected(10)
            broker.stop()
            await wait_until(lambda: not pub.connected and not seen.session.connected, what="disconnect")
            queued = [pub.publish_nowait("q/x", b"%d" % i, qos=1) for i in range(50)]
            with pytest.raises(NotConnectedError):
                await pub.publish("q/x", b"qos0", qos=0)
            assert pub.stats.dropped_qos0_offline == 1
            broker.start()
            await pub.wait_connected(15)
            await asyncio.wait_for(asyncio.gather(*queued), 15)
            await seen.wait_for(lambda ms: len(ms) == 50)
            assert [m.payload for m in seen.messages] == [b"%d" % i for i in range(50)]
            assert pub.stats.connects == 2
            assert seen.session.stats.connects == 2


def test_persistent_session_keeps_subscriptions_and_messages_while_offline(broker: Mosquitto) -> None:
    async def scenario() -> None:
        sub_cfg = config(broker)
        first = MqttSession(sub_cfg, client_id="durable", subscriptions=[("d/#", 1)])
        async with first:
            await first.wait_subscribed(60)  # a session left before its SUBACK may keep no subscription
        async with MqttSession(config(broker), client_id="pub") as pub:
            await pub.wait_connected(10)
            for i in range(20):
                await pub.publish("d/x", b"%d" % i, qos=1)
        second = MqttSession(sub_cfg, client_id="durable", subscriptions=[])
        got: list[bytes] = []
        async with second:
            await second.wait_connected(10)

            async def drain() -> None:
                async for message in second.messages():
                    got.append(message.payload)
                    if len(got) == 20:
                        return

            await asyncio.wait_for(drain(), 10)
        assert got == [b"%d" % i for i in range(20)]

    asyncio.run(scenario())


def test_wait_connected_times_out_with_the_reason(tmp_path: object) -> None:
    async def scenario() -> None:
        cfg = BrokerConfig(url="mqtt://127.0.0.1:1", reconnect=FAST)
        async with MqttSession(cfg, client_id="nobody") as session:
            with pytest.raises(NotConnectedError, match="cannot reach"):
                await session.wait_connected(1.0)

    asyncio.run(scenario())
