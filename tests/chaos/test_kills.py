"""Fault tests with real processes: SIGKILLed devices and gateways lose nothing and store nothing twice."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto
from tests.integration.helpers import poll

from .harness import check_exactly_once, device, gateway, highest_stored, running

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_a_device_killed_five_times_at_random_loses_nothing(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    gw = gateway(tmp_path, persistent_broker.url)
    dev = device(tmp_path, "dev-1", persistent_broker.url)
    gw.start()
    rng = random.Random(4)
    try:
        for _ in range(5):
            dev.start()
            time.sleep(rng.uniform(1.5, 3.0))
            dev.kill()
        dev.start()  # resends everything it still holds, then keeps going
        poll(lambda: highest_stored(tmp_path).get("dev-1", 0) > 50, 60, "more than 50 messages stored")
        dev.stop()
        time.sleep(1.0)
    finally:
        dev.stop()
        gw.stop()
    assert check_exactly_once(tmp_path, "dev-1") > 50


def test_a_gateway_killed_and_restarted_loses_nothing_and_stores_nothing_twice(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    gw = gateway(tmp_path, persistent_broker.url)
    devices = [device(tmp_path, f"dev-{i}", persistent_broker.url) for i in (1, 2)]
    with running(gw, devices):
        time.sleep(4.0)
        gw.kill()
        time.sleep(1.5)
        gw.start()
        time.sleep(5.0)
    for dev in devices:
        assert check_exactly_once(tmp_path, dev.name) > 50
