"""Signed commands end to end: `edgekernel fleet call` against a running device."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgekernel.cli.main import app
from edgekernel.link import Mosquitto
from edgekernel.protocol import FleetKey

from .helpers import poll

pytestmark = pytest.mark.integration

runner = CliRunner()


def start_device(tmp_path: Path, broker: Mosquitto, keys: list[Path]) -> subprocess.Popen[str]:
    config = tmp_path / "dev-01.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fleet": "demo",
                "device": "dev-01",
                "data_dir": "data",
                "fleet_keys": [str(k) for k in keys],
                "sensors": [{"stream": "temp", "rate_hz": 5}],
            }
        )
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekernel",
            "device",
            "run",
            "--config",
            str(config),
            "--broker",
            broker.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def call(broker: Mosquitto, key: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app, ["fleet", "call", *args, "--broker", broker.url, "--fleet", "demo", "--key", str(key), "--json"]
    )
    return result.exit_code, result.output


def test_ping_and_stats_with_the_fleet_key_and_refusal_with_another(
    broker: Mosquitto, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["fleet", "keygen", "--out", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    key, public = tmp_path / "keys" / "fleet.key", tmp_path / "keys" / "fleet.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    rogue = tmp_path / "rogue.key"
    FleetKey.generate().save(rogue)
    device = start_device(tmp_path, broker, [public])
    try:
        code, out = poll(
            lambda: (r := call(broker, key, "dev-01", "ping", "--timeout", "5"))[0] == 0 and r,
            120,  # a device program starting on a loaded machine
            "the first answered ping",
        )
        reply = json.loads(out)
        assert reply["ok"] is True
        assert reply["result"]["pong"] is True
        assert reply["round_trip_ms"] > 0
        code, out = call(broker, key, "dev-01", "stats", "--timeout", "60")
        assert code == 0, out
        stats = json.loads(out)["result"]
        assert stats["device"] == "dev-01"
        assert stats["link"]["connected"] is True
        table = runner.invoke(
            app,
            [
                *["device", "stats", "dev-01", "--broker", broker.url, "--fleet", "demo"],
                *["--key", str(key), "--timeout", "60"],
            ],
        )
        assert table.exit_code == 0, table.output
        assert "link" in table.output
        assert "connected" in table.output
        code, out = call(broker, rogue, "dev-01", "ping", "--timeout", "60")
        assert code == 1
        assert json.loads(out)["error"]["reason"] == "unknown-key"
        code, out = call(broker, key, "dev-01", "reboot", "--timeout", "60")
        assert code == 1
        assert json.loads(out)["error"]["reason"] == "unknown-command"
        code, out = call(broker, key, "dev-99", "ping", "--timeout", "1")
        assert code == 5  # no reply; 3 is for a broker that cannot be reached
        assert "did not answer" in out
    finally:
        device.send_signal(signal.SIGTERM)
        device.communicate(timeout=60)
