"""Long and hostile topics on a device's tree stall nothing: a client publishes 60,000-character topics
on every kind (telemetry, events, cmd, status, an unknown kind) and the gateway refuses each, the device
refuses those sent to it, and both go on: the gateway keeps storing and the device keeps sampling.
(Logging one such topic through rich's highlighter took ~25 s, in the gateway under its lock, and on
the device in its event loop.)"""

from __future__ import annotations

import re
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekernel.link import Mosquitto
from tests.chaos.harness import (
    FLEET,
    device,
    gateway,
    logged,
    more_than_now,
    running,
    wait_stored,
    wait_subscribed,
)
from tests.waiting import DEADLINE_S, wait_until

pytestmark = pytest.mark.integration

LENGTH = 60_000
ROUNDS = 3


def long_topics(device_name: str) -> list[str]:
    base = f"ek/v1/{FLEET}/{device_name}"
    plain = "a" * LENGTH
    hostile = ("[x]=(1,'" * LENGTH)[:LENGTH]  # brackets, quotes, numbers: what highlighters match on
    return [
        f"{base}/telemetry/{plain}",
        f"{base}/events/{hostile}",
        f"{base}/cmd/{plain}",
        f"{base}/cmd/{hostile}",
        f"{base}/status/{plain}",
        f"{base}/{hostile}",
    ]


def publish_all(broker_url: str, topics: list[str]) -> None:
    host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="hostile", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.connect(host, int(port))
    client.loop_start()
    try:
        for topic in topics:
            client.publish(topic, b'{"v": 1}', qos=1).wait_for_publish(DEADLINE_S)
    finally:
        client.disconnect()
        client.loop_stop()


def test_long_topics_on_every_kind_stall_neither_the_gateway_nor_the_device(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw = gateway(tmp_path, broker.url)
    dev = device(tmp_path, "dev-1", broker.url, rate_hz=200, batch=10)
    with running(gw, [dev]):
        wait_subscribed(gw)
        wait_stored(tmp_path, {"dev-1": 20})
        topics = long_topics("dev-1")
        for _ in range(ROUNDS):
            publish_all(broker.url, topics)
        to_device = ROUNDS * sum("/cmd/" in topic for topic in topics)
        wait_until(
            lambda: logged(dev, "refused message on") >= to_device,
            "the device to refuse every long cmd topic",
            seen=lambda: logged(dev, "refused message on"),
        )
        wait_until(
            lambda: logged(gw, "refused message on") >= ROUNDS * 3,
            "the gateway to refuse the long topics it subscribes to",
            seen=lambda: logged(gw, "refused message on"),
        )
        wait_stored(tmp_path, more_than_now(tmp_path, ["dev-1"], 50), timeout=DEADLINE_S, what="50 more")
    for program in (gw, dev):
        text = program.log.read_text()
        assert "a" * 1_000 not in re.sub(r"\s+", "", text)  # what is logged of a topic is bounded
        assert logged(program, "chars cut") > 0
        assert "Traceback" not in text
