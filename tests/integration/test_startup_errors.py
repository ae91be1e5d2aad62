"""`device run` that cannot start says why in one line and exits 1, with no traceback: a corrupt outbox,
a data dir another device process holds, and `fleet_keys` naming a missing file or a directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekernel.link import Mosquitto
from edgekernel.protocol import FleetKey

from .helpers import poll

pytestmark = pytest.mark.integration

RUN_S = "600"  # the device under test never gets this far: it stops at its start


def write_config(tmp_path: Path, broker: Mosquitto, **extra: object) -> Path:
    path = tmp_path / "dev-01.yaml"
    config = {
        "fleet": "plant",
        "device": "dev-01",
        "data_dir": str(tmp_path / "data"),
        "broker": {"url": broker.url},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def device_run(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config), "--duration", RUN_S],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def the_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a run that exited 1 without a traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert "ExceptionGroup" not in output
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_a_corrupt_outbox_is_one_line_and_exit_1(broker: Mosquitto, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker)
    outbox = tmp_path / "data" / "outbox.db"
    outbox.parent.mkdir(parents=True)
    outbox.write_bytes(b"this is not a SQLite database, it is garbage " * 200)
    error = the_error(device_run(config))
    assert str(outbox) in error


@pytest.mark.parametrize("what", ["missing", "directory", "garbage"])
def test_fleet_keys_that_cannot_be_read_are_named_in_one_line_and_exit_1(
    broker: Mosquitto, tmp_path: Path, what: str
) -> None:
    keys = tmp_path / "keys" / "fleet.pub"
    if what == "directory":
        keys.mkdir(parents=True)
    elif what == "garbage":
        keys.parent.mkdir(parents=True)
        keys.write_bytes(b"not a key")
    good = tmp_path / "good.pub"
    good.write_bytes(FleetKey.generate().public_pem())
    config = write_config(tmp_path, broker, fleet_keys=[str(good), str(keys)])
    error = the_error(device_run(config))
    assert str(keys) in error


def test_a_second_device_process_on_the_same_data_dir_names_the_first(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = write_config(tmp_path, broker)
    argv = [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config), "--duration", RUN_S]
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        poll(lambda: (tmp_path / "data" / "outbox.db").exists() or first.poll() is not None, what="a start")
        assert first.poll() is None, log.read_text()
        error = the_error(device_run(config))
        assert str(first.pid) in error
        assert str(tmp_path / "data") in error
        assert first.poll() is None, log.read_text()  # the first one runs on
    finally:
        first.terminate()
        first.wait(60)
    assert first.returncode == 0, log.read_text()
