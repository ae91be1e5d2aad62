"""Fault tests with real processes: SIGKILLed devices and gateways lose nothing and store nothing twice."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto
from tests.waiting import wait_until

from .harness import (
    check_exactly_once,
    device,
    gateway,
    more_than_now,
    outbox_pending,
    running,
    stored,
    wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def test_a_device_killed_five_times_at_random_loses_nothing(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    gw = gateway(tmp_path, persistent_broker.url)
    dev = device(tmp_path, "dev-1", persistent_broker.url)
    gw.start()
    rng = random.Random(4)
    try:
        for kill in range(1, 6):
            dev.start()
            # killed at a random moment once it streams again, however long it took to start
            wait_stored(
                tmp_path, more_than_now(tmp_path, ["dev-1"], 1), what=f"dev-1 streaming before kill {kill}"
            )
            time.sleep(rng.uniform(0.5, 2.0))
            dev.kill()
        held = outbox_pending(tmp_path, "dev-1")
        dev.start()
        wait_until(
            lambda: held <= {seq for seq, _ in stored(tmp_path, "dev-1")},
            "dev-1 to resend everything it held when last killed",
            timeout=120,
            seen=lambda: sorted(held - {seq for seq, _ in stored(tmp_path, "dev-1")})[:20],
        )
        wait_stored(tmp_path, more_than_now(tmp_path, ["dev-1"], 50), what="dev-1 to keep going")
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
    names = [dev.name for dev in devices]
    with running(gw, devices):
        wait_stored(tmp_path, dict.fromkeys(names, 100))
        gw.kill()
        time.sleep(1.5)  # the devices keep sending while no gateway listens
        gw.start()
        wait_stored(
            tmp_path, more_than_now(tmp_path, names, 100), what="100 more each from the restarted gateway"
        )
    for name in names:
        assert check_exactly_once(tmp_path, name) > 200
