"""`edgekernel config validate` and `edgekernel config schema`, driven through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from edgekernel.cli.config_cmd import app
from edgekernel.config import DeviceConfig, FleetConfig, GatewayConfig, write_schemas
from edgekernel.config.agents import AgentSpec
from edgekernel.config.schema import JSON_SCHEMA_DIALECT, SCHEMAS, schema_text

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware-config"
BAD_DEVICE = "fleet: demo\ndevice: dev-09\ndata_dir: x\nencoding: xml\n"


def run(*args: str | Path) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(arg) for arg in args])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "firmware-config"
    shutil.copytree(EXAMPLE, root)
    return root


# --- validate ----------------------------------------------------------------------------------


def test_example_fleet_validates() -> None:
    result = run("validate", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(" OK ") == 7
    assert "FAIL" not in result.stdout
    assert "dev-01.yaml" in result.stdout
    assert result.stdout.rstrip().endswith("7 files: 7 valid, 0 invalid")


def test_invalid_file_in_a_tree_fails_with_file_line_path_message(tree: Path) -> None:
    bad = tree / "devices" / "dev-09.yaml"
    bad.write_text(BAD_DEVICE, encoding="utf-8")
    result = run("validate", tree)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
    assert f"{bad}:4: encoding: Input should be 'json' or 'cbor' (got 'xml')" in result.stdout.splitlines()
    assert result.stdout.rstrip().endswith("8 files: 7 valid, 1 invalid")


def test_cross_file_problem_fails_the_tree(tree: Path) -> None:
    device = tree / "devices" / "dev-02.yaml"
    device.write_text(device.read_text(encoding="utf-8").replace("fleet: demo", "fleet: other"), "utf-8")
    result = run("validate", tree)
    assert result.exit_code == 1
    assert f"{device}:4: fleet: fleet 'other' is not 'demo' named in fleet.yaml" in result.stdout


def test_single_file_kind_comes_from_its_folder(tree: Path) -> None:
    result = run("validate", tree / "devices" / "dev-01.yaml", tree / "gateways" / "gw-1.yaml")
    assert result.exit_code == 0, result.output
    assert "device" in result.stdout
    assert "gateway" in result.stdout
    assert "2 files: 2 valid, 0 invalid" in result.stdout


def test_single_fleet_file(tree: Path) -> None:
    assert run("validate", tree / "fleet.yaml").exit_code == 0


def test_file_of_unknown_kind_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "box.yaml"
    shutil.copy(EXAMPLE / "devices" / "dev-01.yaml", path)
    result = run("validate", path)
    assert result.exit_code == 2
    assert "--kind" in result.output


def test_kind_option_names_the_model(tmp_path: Path) -> None:
    path = tmp_path / "box.yaml"
    shutil.copy(EXAMPLE / "devices" / "dev-03.yaml", path)  # names no model file
    assert run("validate", "--kind", "device", path).exit_code == 0
    result = run("validate", "--kind", "gateway", path)
    assert result.exit_code == 1
    first_key = 1 + path.read_text(encoding="utf-8").splitlines().index("fleet: demo")
    assert f"{path}:{first_key}: store: required key missing" in result.stdout


def test_bad_kind_is_a_usage_error(tree: Path) -> None:
    assert run("validate", "--kind", "toaster", tree).exit_code == 2


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = run("validate", tmp_path / "nope")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_no_arguments_shows_help() -> None:
    result = run()
    assert "validate" in result.output
    assert "schema" in result.output


def test_devices_folder_validates_each_file_as_a_device(tree: Path) -> None:
    (tree / "devices" / "dev-09.yaml").write_text(BAD_DEVICE, encoding="utf-8")
    result = run("validate", tree / "devices")
    assert result.exit_code == 1
    assert "4 files: 3 valid, 1 invalid" in result.stdout


def test_same_file_twice_is_reported_once(tree: Path) -> None:
    result = run("validate", tree, tree / "devices" / "dev-01.yaml")
    assert result.exit_code == 0
    assert "7 files: 7 valid, 0 invalid" in result.stdout


def test_markup_in_problems_is_printed_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "devices" / "[red]x.yaml"
    path.parent.mkdir()
    path.write_text("fleet: demo\ndevice: x\ndata_dir: y\nlabels: {site: [bold]}\n", encoding="utf-8")
    result = run("validate", path)
    assert result.exit_code == 1
    assert "[red]x.yaml" in result.stdout


def test_json_output(tree: Path) -> None:
    bad = tree / "devices" / "dev-09.yaml"
    bad.write_text(BAD_DEVICE, encoding="utf-8")
    result = run("validate", "--json", tree)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    files = {entry["file"]: entry for entry in report["files"]}
    assert files[str(tree / "fleet.yaml")] == {
        "file": str(tree / "fleet.yaml"),
        "kind": "fleet",
        "ok": True,
        "problems": [],
    }
    assert files[str(bad)]["problems"] == [
        {
            "file": str(bad),
            "line": 4,
            "column": 1,
            "path": "encoding",
            "message": "Input should be 'json' or 'cbor' (got 'xml')",
        }
    ]


def test_json_output_when_valid() -> None:
    result = run("validate", "--json", EXAMPLE)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["ok"] is True


# --- schema ------------------------------------------------------------------------------------


def test_schema_command_writes_and_prints_the_paths(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "schema"
    result = run("schema", "--out", out)
    assert result.exit_code == 0, result.output
    names = ["device.schema.json", "gateway.schema.json", "fleet.schema.json", "agent.schema.json"]
    assert result.stdout.splitlines() == [str(out / name) for name in names]
    for name in names:
        schema = json.loads((out / name).read_text(encoding="utf-8"))
        assert schema["$schema"] == JSON_SCHEMA_DIALECT
        assert schema["title"].startswith("edgekernel ")
        assert schema["additionalProperties"] is False


def test_schema_command_defaults_to_firmware_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("schema").exit_code == 0
    assert sorted(path.name for path in (tmp_path / "firmware-config" / "schema").iterdir()) == [
        "agent.schema.json",
        "device.schema.json",
        "fleet.schema.json",
        "gateway.schema.json",
    ]


def test_schemas_are_stable(tmp_path: Path) -> None:
    first = {path.name: path.read_bytes() for path in write_schemas(tmp_path / "a")}
    second = {path.name: path.read_bytes() for path in write_schemas(tmp_path / "b")}
    assert first == second
    for text in first.values():
        assert text.endswith(b"}\n")
        assert (
            json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
            == text
        )


def test_schemas_describe_each_model() -> None:
    models = {name: model for name, (model, _title) in SCHEMAS.items()}
    assert models == {
        "device.schema.json": DeviceConfig,
        "gateway.schema.json": GatewayConfig,
        "fleet.schema.json": FleetConfig,
        "agent.schema.json": AgentSpec,
    }
    device = json.loads(schema_text(DeviceConfig, "t"))
    assert set(device["required"]) == {"fleet", "device", "data_dir"}
    assert device["$defs"]["SimSignal"]["properties"]["kind"]["enum"] == [
        "sine",
        "vibration",
        "temperature",
        "random-walk",
        "plant",
    ]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_schemas_are_up_to_date(name: str) -> None:
    model, title = SCHEMAS[name]
    committed = (EXAMPLE / "schema" / name).read_text(encoding="utf-8")
    assert committed == schema_text(model, title), "run `edgekernel config schema` and commit the result"


def test_agent_settings_are_checked_against_the_installed_agent(tree: Path) -> None:
    spec = tree / "agents" / "vibration-watch.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("  hop: 128", "  hop: 256"), "utf-8")
    result = run("validate", spec)
    assert result.exit_code == 1
    assert "config: agent 'pipeline': Value error, hop must be at most window" in result.stdout


def test_settings_of_an_agent_not_installed_here_are_not_judged(tree: Path) -> None:
    spec = tree / "agents" / "vibration-watch.yaml"
    text = spec.read_text(encoding="utf-8").replace("agent: pipeline", "agent: acme.detector")
    spec.write_text(text, "utf-8")
    assert run("validate", spec).exit_code == 0
