"""Fault test 7: a device whose data directory fills up keeps running, refuses new samples with a
counted reason, and sends again once there is room (a real 2 MB tmpfs; root only)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edgekernel.link import Mosquitto
from edgekernel.protocol import decode
from tests.integration.helpers import poll

from . import harness

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Retained:
    """The newest status and reported body of one device, as the broker hands them out."""

    def __init__(self, broker_url: str, device: str) -> None:
        host, _, port = broker_url.removeprefix("mqtt://").rpartition(":")
        self.bodies: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="retained", protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_connect = lambda client, *_: client.subscribe(
            [(f"ek/v1/{harness.FLEET}/{device}/status", 1), (f"ek/v1/{harness.FLEET}/{device}/reported", 1)]
        )
        self._client.on_message = self._on_message
        self._client.connect(host, int(port))
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        body = decode(bytes(msg.payload)).body
        assert isinstance(body, dict)
        with self._lock:
            self.bodies[msg.topic.rsplit("/", 1)[-1]] = body

    def get(self, kind: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.bodies.get(kind, {}))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def fill(disk: Path) -> None:
    with (disk / "filler").open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_refuses_samples_and_the_device_resumes(
    broker: Mosquitto, tmp_path: Path, tiny_tmpfs: Path
) -> None:
    dev = harness.device(
        tmp_path,
        "dev-1",
        broker.url,
        rate_hz=100,
        batch=5,
        data_dir=tiny_tmpfs / "dev-1",
        reported_interval_s=1,
    )
    gw = harness.gateway(tmp_path, broker.url)
    seen = Retained(broker.url, "dev-1")
    try:
        gw.start()
        dev.start()
        poll(lambda: harness.stored_counts(tmp_path).get("dev-1", 0) >= 10, 120, "the first messages stored")
        gw.stop()  # no gateway: the backlog grows until the disk is full
        fill(tiny_tmpfs)

        def refused() -> int:
            return int(seen.get("reported").get("backlog", {}).get("disk_full", 0))

        poll(lambda: refused() > 0, 120, "samples refused for a full disk, on reported")
        boot = int(seen.get("status")["boot"])
        broker.stop()  # a reconnect on a full disk takes a new boot id
        broker.start()
        poll(lambda: seen.get("status").get("boot", 0) > boot, 120, "the device back online with a new boot")
        assert seen.get("status")["online"] is True
        first = refused()
        poll(lambda: refused() > first, 120, "the device still refusing samples and reporting it")
        assert dev.proc is not None
        assert dev.proc.poll() is None, "the device exited on a full disk"

        (tiny_tmpfs / "filler").unlink()  # room again
        freed = time.time()
        gw.start()
        poll(
            lambda: any(ts > freed + 0.5 for _, ts in harness.stored(tmp_path, "dev-1")),
            120,
            "samples taken after the disk had room again, stored",
        )
        assert dev.proc.poll() is None
        dev.stop()
        assert dev.proc.returncode == 0
    finally:
        dev.stop()
        gw.stop()
        seen.close()
    log = (tmp_path / "dev-1.log").read_text()
    assert "Traceback" not in log
    assert "the disk is full" in " ".join(log.split())  # the console wraps lines
