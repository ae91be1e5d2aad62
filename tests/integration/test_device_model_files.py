"""`device run` with models it cannot serve exits 1 with a one-line error; a copied firmware-config/
runs a device from wherever it was copied."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekernel.link import Mosquitto
from edgekernel.protocol import ReportedBody, decode, topics

from .helpers import poll

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EDGEKERNEL = [sys.executable, "-m", "edgekernel"]
REPORTED = topics.reported("demo", "dev-01")
NOBODY = "mqtt://127.0.0.1:1"  # the model check comes before any connection


def device_run(config: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgekernel", "device", "run", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_device(tmp_path: Path, model_file: Path, sha256: str, *, pinned: bool) -> Path:
    path = tmp_path / "devices" / "dev-01.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = {"name": "vib", "file": str(model_file), "sha256": sha256, "runtime": "onnx", "memory_mb": 4}
    config = {
        "fleet": "demo",
        "device": "dev-01",
        "data_dir": str(tmp_path / "data"),
        "kernel": {"models": [{**model, "pinned": pinned}]},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_missing_model_stops_device_run_with_exit_1_at_its_line(tmp_path: Path) -> None:
    config = write_device(tmp_path, tmp_path / "gone.onnx", "0" * 64, pinned=True)
    done = device_run(config, "--broker", NOBODY, "--duration", "30")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{config}:" in done.stderr
    assert "no such file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("pinned", [True, False])
def test_a_model_file_that_never_loads_stops_device_run_with_exit_1(tmp_path: Path, pinned: bool) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not an ONNX model" * 10)
    config = write_device(tmp_path, bad, hashlib.sha256(bad.read_bytes()).hexdigest(), pinned=pinned)
    done = device_run(config, "--broker", NOBODY, "--duration", "30")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "garbage.onnx" in errors[0]
    assert "Traceback" not in done.stderr


def test_a_copied_firmware_config_runs_a_device(broker: Mosquitto, tmp_path: Path) -> None:
    copy = tmp_path / "somewhere" / "else" / "fleet-config"
    shutil.copytree(ROOT / "firmware-config", copy)
    validate = subprocess.run(
        [sys.executable, "-m", "edgekernel", "config", "validate", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    proc = subprocess.Popen(
        [*EDGEKERNEL, "device", "run", "-c", str(copy / "devices" / "dev-01.yaml"), "--broker", broker.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def loaded() -> bool:
            done = subprocess.run(
                ["mosquitto_sub", "-p", str(broker.port), "-t", REPORTED, "-C", "1", "-W", "2"],
                capture_output=True,
                check=False,
            )
            if not done.stdout.strip():
                return False
            models = ReportedBody.from_envelope(decode(done.stdout.strip())).models
            return any(m.name == "vibration-anomaly" and m.loaded for m in models)

        poll(loaded, timeout=60, what="dev-01 reporting its model loaded")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert (copy.parent / "var" / "dev-01").is_dir()  # data_dir ../../var: beside the copy
