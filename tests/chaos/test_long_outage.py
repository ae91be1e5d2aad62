"""A broker down for a minute: devices whose keepalive is shorter than their reconnect backoff come
back once it returns, stay connected, and lose nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgekernel.link import Mosquitto
from tests.stores import rows
from tests.waiting import wait_until

from .harness import check_exactly_once, device, gateway, more_than_now, running, stored, wait_stored

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(600)]

OUTAGE_S = 60.0
KEEPALIVES = {"ka-5": 5, "ka-10": 10}
# the backoff passes both keepalives long before the broker returns
RECONNECT = {"min_delay_s": 0.5, "max_delay_s": 12.0, "jitter": 0.25}
MARGIN_S = 45.0  # a loaded machine: process start-up, the gateway's own reconnect, a store flush


def statuses(tmp: Path) -> dict[str, tuple[int, int]]:
    """(online, boot) of each device, as the gateway stored its last status."""
    found = rows(tmp / "store.db", "SELECT device, online, boot FROM devices WHERE boot IS NOT NULL")
    return {str(name): (int(online or 0), int(boot)) for name, online, boot in found}


def test_devices_with_short_keepalives_come_back_after_a_minute_without_broker(
    broker: Mosquitto, tmp_path: Path
) -> None:
    gw = gateway(tmp_path, broker.url)
    names = list(KEEPALIVES)
    devices = [
        device(tmp_path, name, broker.url, rate_hz=20, batch=1, keepalive_s=keepalive, reconnect=RECONNECT)
        for name, keepalive in KEEPALIVES.items()
    ]
    with running(gw, devices):
        wait_stored(tmp_path, dict.fromkeys(names, 40))
        before = wait_until(
            lambda: (s := statuses(tmp_path)) and all(s.get(n, (0, 0))[0] for n in names) and s,
            "both devices online",
            seen=lambda: statuses(tmp_path),
        )
        broker.stop()
        down_at = time.time()
        time.sleep(OUTAGE_S)
        broker.start()
        up_at = time.time()

        def back() -> dict[str, tuple[int, int]] | None:
            now = statuses(tmp_path)
            fresh = all(now.get(n, (0, 0))[0] == 1 and now[n][1] > before[n][1] for n in names)
            return now if fresh else None

        deadline = RECONNECT["max_delay_s"] + max(KEEPALIVES.values()) + MARGIN_S
        after = wait_until(
            back,
            "both devices online again with a new boot id",
            timeout=deadline,
            seen=lambda: statuses(tmp_path),
        )
        # connected for longer than either keepalive, still in the same connection, storing again
        settled_at = time.monotonic()
        wait_stored(tmp_path, more_than_now(tmp_path, names, 40))
        wait_until(
            lambda: time.monotonic() - settled_at > 1.5 * max(KEEPALIVES.values()),
            "a few keepalive periods",
        )
        wait_stored(tmp_path, more_than_now(tmp_path, names, 10))
        assert statuses(tmp_path) == after, "a device connected again (its boot id climbs)"
        # one new connection after the outage: attempts the closed port refused take no boot id
        assert {n: after[n][1] - before[n][1] for n in names} == dict.fromkeys(names, 1)
    for name in names:
        check_exactly_once(tmp_path, name)
        during = [ts for _, ts in stored(tmp_path, name) if down_at < ts < up_at]
        assert len(during) > OUTAGE_S, f"{name}: what it sent while the broker was down was not stored"
