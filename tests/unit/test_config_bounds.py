"""Every number a config holds is bounded; bad files (FIFOs, folders named *.yaml) are refused without
blocking; values PyYAML cannot construct are reported at their line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from edgekernel.config import (
    ConfigError,
    DeviceConfig,
    FleetConfig,
    GatewayConfig,
    load_device,
    validate_tree,
)
from edgekernel.config.validate import ConfigKind, validate_file

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "fleet: demo\ndevice: dev-01\ndata_dir: var\n"


def unbounded(schema: dict[str, Any]) -> Iterator[str]:
    """Paths in a JSON Schema of numbers without both bounds, lists without maxItems, maps without
    maxProperties."""
    defs = schema.get("$defs", {})

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        if "$ref" in node:
            yield from walk(defs[node["$ref"].rsplit("/", 1)[1]], path)
            return
        for option in node.get("anyOf", []):
            yield from walk(option, path)
        kind = node.get("type")
        lower = {"minimum", "exclusiveMinimum"} & node.keys()
        upper = {"maximum", "exclusiveMaximum"} & node.keys()
        if kind in ("integer", "number") and not (lower and upper):
            yield path
        if kind == "array":
            if "maxItems" not in node:
                yield f"{path}[]"
            if isinstance(node.get("items"), dict):
                yield from walk(node["items"], f"{path}[]")
        if kind == "object":
            if isinstance(node.get("additionalProperties"), dict):
                if "maxProperties" not in node:
                    yield f"{path}{{}}"
                yield from walk(node["additionalProperties"], f"{path}{{}}")
            for name, child in node.get("properties", {}).items():
                yield from walk(child, f"{path}.{name}")

    yield from walk(schema, "")


@pytest.mark.parametrize("model", [DeviceConfig, GatewayConfig, FleetConfig])
def test_every_number_list_and_map_is_bounded(model: type[BaseModel]) -> None:
    assert sorted(set(unbounded(model.model_json_schema()))) == []


def write(tmp_path: Path, text: str, name: str = "dev-01.yaml") -> Path:
    path = tmp_path / "devices" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**30), max_value=10**30))
def test_reported_interval_is_accepted_only_within_its_bounds(value: float) -> None:
    data = {"fleet": "demo", "device": "dev-01", "data_dir": "var", "reported_interval_s": value}
    try:
        config = DeviceConfig.model_validate(data)
    except ValueError:
        assert not 0.5 <= value <= 86_400
    else:
        assert 0.5 <= config.reported_interval_s <= 86_400


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("reported_interval_s: 1e-300", "greater than or equal to 0.5"),
        ("reported_interval_s: 1.0e+300", "less than or equal to 86400"),
        ("sensors: [{stream: s, sim: {seed: -1}}]", "greater than or equal to 0"),
        ("sensors: [{stream: s, sim: {frequency_hz: 1.0e+30}}]", "less than or equal to 10000"),
        ("broker: {reconnect: {min_delay_s: 1.0e-9}}", "greater than or equal to 0.01"),
        ("kernel: {scheduler: {slo: {p95_ms: 10, kp: 1.0e+12}}}", "less than or equal to 1000"),
    ],
)
def test_out_of_range_numbers_are_errors_at_their_line(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, DEVICE + line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_device(path)
    [problem] = caught.value.problems
    assert problem.line == 4
    assert expected in problem.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("!!timestamp nope", "'nope' is not a timestamp"),
        ("9" * 5000, "the integer has too many digits"),
        ("!!int twelve", "'twelve' is not an integer"),
        ("!!float nope", "nope"),
    ],
)
def test_values_yaml_cannot_construct_carry_their_line(tmp_path: Path, value: str, expected: str) -> None:
    path = write(tmp_path, DEVICE + "labels:\n  a: b\n  c: " + value + "\n")
    with pytest.raises(ConfigError) as caught:
        load_device(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (6, 6)
    assert expected in problem.message


@given(st.text(max_size=40))
def test_any_scalar_in_a_numeric_field_is_a_config_error_with_a_line(value: str) -> None:
    text = DEVICE + "reported_interval_s: " + value.replace("\n", " ") + "\n"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ek-bounds-{os.getpid()}.yaml"
    path.write_text(text, encoding="utf-8")
    problems = []
    try:
        load_device(path)
    except ConfigError as err:
        problems = err.problems
    finally:
        path.unlink()
    assert all(problem.line is not None for problem in problems), problems


def test_a_fifo_is_refused_without_opening_it_for_a_blocking_read(tmp_path: Path) -> None:
    fifo = tmp_path / "devices" / "dev-01.yaml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    for argv in (
        ["config", "validate", str(fifo)],
        ["config", "validate", str(tmp_path)],
        ["device", "run", "-c", str(fifo)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "edgekernel", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, (argv, done.stdout, done.stderr)
        assert "is a FIFO (named pipe), not a config file" in done.stdout + done.stderr


def test_a_folder_named_like_a_config_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("fleet: demo\n")
    (tmp_path / "devices" / "dev-01.yaml").mkdir(parents=True)
    (tmp_path / "devices" / "dev-01.yaml" / "inside.yaml").write_text(DEVICE)
    results = {r.file.relative_to(tmp_path).as_posix(): r for r in validate_tree(tmp_path)}
    assert sorted(results) == ["devices/dev-01.yaml", "fleet.yaml"]
    error = results["devices/dev-01.yaml"].error
    assert error is not None
    assert "is a folder, not a config file" in str(error)
    single = validate_file(tmp_path / "devices" / "dev-01.yaml", ConfigKind.DEVICE)
    assert not single.ok
    done = subprocess.run(
        [sys.executable, "-m", "edgekernel", "config", "validate", str(tmp_path / "devices" / "dev-01.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stdout
    assert "is a folder, not a config file" in done.stdout
