"""Validation checks the files a config names: present, regular files, models matching their sha256;
a copied firmware-config/ keeps working."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgekernel.config import ConfigError, DeviceConfig, FleetConfig, load_checked, validate_tree
from edgekernel.config.files import sha256_of
from edgekernel.config.validate import ConfigKind, validate_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "firmware-config"
DEV_01 = "devices/dev-01.yaml"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "elsewhere" / "my-fleet"
    shutil.copytree(EXAMPLE, root)
    return root


def line_of(path: Path, start: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.strip().startswith(start))


def only_problem(file: Path) -> str:
    result = validate_file(file, ConfigKind.DEVICE)
    assert result.error is not None, f"{file} unexpectedly valid"
    [problem] = result.error.problems
    assert problem.line == line_of(file, "file:")
    assert problem.path == "kernel.models.0.file"
    return str(problem)


def test_a_copied_example_validates_and_names_its_own_models(tree: Path) -> None:
    assert all(result.ok for result in validate_tree(tree)), validate_tree(tree)
    config = load_checked(tree / DEV_01, DeviceConfig)
    assert config.kernel.models[0].file == tree / "models" / "vibration_cnn.int8.onnx"


def test_the_example_models_are_the_projects_own() -> None:
    manifest = {
        m["file"]: m["sha256"] for m in json.loads((ROOT / "models" / "manifest.json").read_text())["models"]
    }
    shipped = sorted(path.name for path in (EXAMPLE / "models").iterdir())
    assert shipped == ["gesture_cnn.int8.tflite", "vibration_cnn.int8.onnx"]
    for name in shipped:
        assert sha256_of(EXAMPLE / "models" / name) == manifest[name], name


def test_a_missing_model_file_is_an_error_at_its_line(tree: Path) -> None:
    (tree / "models" / "vibration_cnn.int8.onnx").unlink()
    message = only_problem(tree / DEV_01)
    assert f"{tree / DEV_01}:{line_of(tree / DEV_01, 'file:')}:" in message
    assert "no such file" in message


def test_a_model_that_does_not_match_its_sha256_is_an_error(tree: Path) -> None:
    (tree / "models" / "vibration_cnn.int8.onnx").write_bytes(b"another version")
    message = only_problem(tree / DEV_01)
    assert "does not match its sha256" in message


def test_a_folder_where_the_model_should_be_is_an_error(tree: Path) -> None:
    model = tree / "models" / "vibration_cnn.int8.onnx"
    model.unlink()
    model.mkdir()
    assert "is a folder, not a regular file" in only_problem(tree / DEV_01)


def test_a_fifo_where_the_model_should_be_is_refused_without_blocking(tree: Path) -> None:
    model = tree / "models" / "vibration_cnn.int8.onnx"
    model.unlink()
    os.mkfifo(model)
    assert "FIFO" in only_problem(tree / DEV_01)


def test_the_tree_reports_file_problems_beside_the_others(tree: Path) -> None:
    (tree / "models" / "gesture_cnn.int8.tflite").unlink()
    results = {r.file.name: r for r in validate_tree(tree)}
    assert results["dev-01.yaml"].ok
    error = results["dev-02.yaml"].error
    assert error is not None
    assert "no such file" in str(error)


def test_fleet_keys_and_signing_key_must_exist(tmp_path: Path) -> None:
    device = tmp_path / "devices" / "dev-01.yaml"
    device.parent.mkdir()
    device.write_text("fleet: demo\ndevice: dev-01\ndata_dir: ../var\nfleet_keys:\n  - ../keys/fleet.pub\n")
    with pytest.raises(ConfigError) as caught:
        load_checked(device, DeviceConfig)
    [problem] = caught.value.problems
    assert (problem.line, problem.path) == (5, "fleet_keys.0")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("fleet: demo\nsigning_key: keys/fleet.key\n")
    with pytest.raises(ConfigError, match=r"fleet.yaml:2: signing_key: no such file"):
        load_checked(fleet, FleetConfig)
