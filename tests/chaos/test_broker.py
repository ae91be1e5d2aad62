"""Fault tests on the broker: killed mid-stream, and down for a minute, with real device processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto

from .harness import check_exactly_once, device, gateway, running, wait_stored

# Streams of a fixed length: on a loaded machine the devices take several times longer to send them.
pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(900)]


def test_broker_sigkill_in_a_20000_message_stream_from_5_devices(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    broker = persistent_broker
    gw = gateway(tmp_path, broker.url)
    names = [f"dev-{i}" for i in range(1, 6)]
    devices = [device(tmp_path, name, broker.url, rate_hz=100, batch=1) for name in names]
    with running(gw, devices):
        wait_stored(tmp_path, dict.fromkeys(names, 1500))
        broker.kill()
        time.sleep(1.0)
        broker.start()
        wait_stored(tmp_path, dict.fromkeys(names, 4000))
    total = sum(check_exactly_once(tmp_path, name) for name in names)
    assert total >= 20_000


def test_broker_down_for_a_minute_while_devices_publish_200_messages_a_second(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    broker = persistent_broker
    gw = gateway(tmp_path, broker.url)
    names = ["dev-1", "dev-2"]
    devices = [device(tmp_path, name, broker.url, rate_hz=200, batch=1) for name in names]
    with running(gw, devices):
        wait_stored(tmp_path, dict.fromkeys(names, 200))
        broker.stop()
        time.sleep(60)
        broker.start()
        wait_stored(tmp_path, dict.fromkeys(names, 13_000))  # everything from before, during and after
    for name in names:
        assert check_exactly_once(tmp_path, name) >= 13_000
