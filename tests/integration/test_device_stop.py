"""A device with as many sensors as its config allows stops on SIGTERM with exit code 0, even with its
outbox full and set to block for an hour: what the sensors hold at the stop gets a few seconds to be
committed, and is counted as lost when it cannot be."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekernel.link import Mosquitto
from edgekernel.protocol import ReportedBody, decode, topics
from tests.waiting import DEADLINE_S, wait_until_async

from .helpers import Collector

pytestmark = pytest.mark.integration

SENSORS = 256  # the most a device config takes
OUTBOX_BYTES = 1 << 20
STOP_DEADLINE_S = 90.0


def write_config(tmp_path: Path, broker: Mosquitto) -> Path:
    # one sensor fills the outbox (no gateway acknowledges); the others hold what they sample, and at
    # the stop the outbox would have each of them wait an hour for room to commit it
    fast = {"stream": "fast", "rate_hz": 10_000}
    holding = {"rate_hz": 100, "batch": {"max_samples": 10_000, "max_wait_ms": 60_000}}
    device = {
        "fleet": "plant",
        "device": "dev-01",
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": broker.url},
        "reported_interval_s": 1,
        "outbox": {"max_bytes": OUTBOX_BYTES, "overflow": "block", "block_timeout_s": 3600},
        "sensors": [fast, *({"stream": f"s{index:03d}", **holding} for index in range(SENSORS - 1))],
    }
    path = tmp_path / "dev-01.yaml"
    path.write_text(yaml.safe_dump(device))
    return path


async def wait_full(broker: Mosquitto, proc: subprocess.Popen[bytes]) -> None:
    """Until the device's `reported` says its outbox is half full (or the device has exited)."""
    async with Collector(broker.url, topics.reported("plant", "dev-01")) as reports:

        def queued() -> int:
            if not reports.messages:
                return 0
            backlog = ReportedBody.from_envelope(decode(reports.messages[-1].payload)).backlog
            return backlog.pending_bytes if backlog is not None else 0

        await wait_until_async(
            lambda: queued() >= OUTBOX_BYTES // 2 or proc.poll() is not None,
            "the outbox to fill",
            # 256 sensors in one process on a loaded 2-core machine fill it slowly but surely: wait long,
            # and fail early only if the backlog stops growing
            timeout=6 * DEADLINE_S,
            seen=lambda: (queued(), proc.poll()),
            stalled_after=2 * DEADLINE_S,
        )


def test_a_device_with_many_sensors_and_a_full_outbox_stops_on_sigterm(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    log = tmp_path / "device.log"
    argv = [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        asyncio.run(wait_full(broker, proc))
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the device did not stop within {STOP_DEADLINE_S:g} s of SIGTERM:\n{log.read_text()[-3000:]}"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    assert "signal wakeup fd" not in output
    assert "not committed at the stop" in re.sub(r"\s+", " ", output)
