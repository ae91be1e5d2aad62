"""Tables at 80 columns against a real device: whole values, never cut with "…"; `device stats`
shows the backlog without --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekernel.link import Mosquitto

from .helpers import poll

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def edgekernel(*argv: str, columns: int = 80, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekernel", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns), "TERM": "dumb"},
        timeout=timeout,
        check=False,
    )


def vibration_model() -> dict[str, object]:
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    entry = next(m for m in manifest["models"] if m["file"] == "vibration_cnn.int8.onnx")
    return {
        "name": "vibration-anomaly",
        "file": str(ROOT / "models" / entry["file"]),
        "sha256": entry["sha256"],
        "runtime": "onnx",
        "memory_mb": 4,
        "pinned": True,
    }


def assert_fits(output: str, width: int = 80) -> None:
    assert "…" not in output, output
    assert max(len(line) for line in output.splitlines()) <= width, output


def test_fleet_devices_and_device_stats_fit_80_columns(broker: Mosquitto, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert edgekernel("fleet", "keygen", "--out", str(keys)).returncode == 0
    config = tmp_path / "devices" / "dev-01.yaml"
    config.parent.mkdir()
    config.write_text(
        yaml.safe_dump(
            {
                "fleet": "demo",
                "device": "dev-01",
                "data_dir": str(tmp_path / "data"),
                "fleet_keys": [str(keys / "fleet.pub")],
                "sensors": [{"stream": "vibration", "rate_hz": 5}, {"stream": "temperature", "rate_hz": 1}],
                "kernel": {"models": [vibration_model()]},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekernel", "device", "run", "-c", str(config), "--broker", broker.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = ["--broker", broker.url, "--fleet", "demo"]
    try:

        def reported() -> bool:
            done = edgekernel("fleet", "devices", *target, "--json")
            devices = json.loads(done.stdout)["devices"] if done.returncode == 0 else []
            return bool(devices and devices[0]["online"] and devices[0]["models"])

        poll(reported, timeout=60, what="dev-01 online with its model reported")
        table = edgekernel("fleet", "devices", *target)
        assert table.returncode == 0, table.stderr
        assert_fits(table.stdout)
        for whole in ("dev-01", "online", "vibration-anomaly v1", "temperature", "vibration", "1 device"):
            assert whole in table.stdout, table.stdout
        wide = edgekernel("fleet", "devices", *target, columns=200)
        assert "runtimes" in wide.stdout, wide.stdout
        assert "accelerators" in wide.stdout, wide.stdout

        stats = edgekernel("device", "stats", "dev-01", *target, "--key", str(keys / "fleet.key"))
        assert stats.returncode == 0, stats.stdout + stats.stderr
        assert_fits(stats.stdout)
        assert "backlog" in stats.stdout, stats.stdout
        assert "pending_bytes" in stats.stdout, stats.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
