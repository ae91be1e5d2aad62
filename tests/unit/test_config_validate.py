"""Validating a whole firmware-config folder: each file, then the rules that tie files together."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgekernel.config import ConfigKind, ConfigProblem, FileResult, validate_tree
from edgekernel.config.validate import kind_of, validate_file

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware-config"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "firmware-config"
    shutil.copytree(EXAMPLE, root)
    return root


def by_name(results: list[FileResult]) -> dict[str, FileResult]:
    return {result.file.name: result for result in results}


def problems(result: FileResult) -> list[ConfigProblem]:
    assert result.error is not None, f"{result.file} unexpectedly valid"
    return result.error.problems


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, start: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(number for number, line in enumerate(lines, 1) if line.startswith(start))


def test_the_example_fleet_is_valid() -> None:
    results = validate_tree(EXAMPLE)
    assert [(r.file.relative_to(EXAMPLE).as_posix(), r.kind, r.ok) for r in results] == [
        ("fleet.yaml", ConfigKind.FLEET, True),
        ("devices/dev-01.yaml", ConfigKind.DEVICE, True),
        ("devices/dev-02.yaml", ConfigKind.DEVICE, True),
        ("devices/dev-03.yaml", ConfigKind.DEVICE, True),
        ("gateways/gw-1.yaml", ConfigKind.GATEWAY, True),
        ("agents/system-monitor.yaml", ConfigKind.AGENT, True),
        ("agents/vibration-watch.yaml", ConfigKind.AGENT, True),
    ]


def test_a_copy_of_the_example_is_valid(tree: Path) -> None:
    assert all(result.ok for result in validate_tree(tree))


def test_device_of_another_fleet(tree: Path) -> None:
    device = tree / "devices" / "dev-02.yaml"
    replace(device, "fleet: demo", "fleet: other")
    results = by_name(validate_tree(tree))
    [problem] = problems(results["dev-02.yaml"])
    assert (problem.file, problem.line, problem.path) == (device, line_of(device, "fleet:"), "fleet")
    assert problem.message == "fleet 'other' is not 'demo' named in fleet.yaml"
    assert results["dev-01.yaml"].ok
    assert results["fleet.yaml"].ok


def test_gateway_of_another_fleet(tree: Path) -> None:
    gateway = tree / "gateways" / "gw-1.yaml"
    replace(gateway, "fleet: demo", "fleet: other")
    [problem] = problems(by_name(validate_tree(tree))["gw-1.yaml"])
    assert (problem.line, problem.path) == (line_of(gateway, "fleet:"), "fleet")


def test_file_must_be_named_after_the_device(tree: Path) -> None:
    device = tree / "devices" / "dev-3.yaml"
    (tree / "devices" / "dev-03.yaml").rename(device)
    [problem] = problems(by_name(validate_tree(tree))["dev-3.yaml"])
    assert (problem.line, problem.path) == (line_of(device, "device:"), "device")
    assert problem.message == "the file is named dev-3.yaml but holds device 'dev-03'; name it dev-03.yaml"


def test_file_must_be_named_after_the_gateway(tree: Path) -> None:
    (tree / "gateways" / "gw-1.yaml").rename(tree / "gateways" / "main.yaml")
    [problem] = problems(by_name(validate_tree(tree))["main.yaml"])
    assert problem.path == "gateway"
    assert "name it gw-1.yaml" in problem.message


def test_device_ids_are_unique_across_files(tree: Path) -> None:
    copy = tree / "devices" / "dev-04.yaml"
    shutil.copy(tree / "devices" / "dev-01.yaml", copy)
    results = by_name(validate_tree(tree))
    assert results["dev-01.yaml"].ok
    found = problems(results["dev-04.yaml"])
    assert {problem.line for problem in found} == {line_of(copy, "device:")}
    assert [problem.message for problem in found] == [
        "the file is named dev-04.yaml but holds device 'dev-01'; name it dev-01.yaml",
        f"device id 'dev-01' is already used by {tree / 'devices' / 'dev-01.yaml'}",
    ]


def test_yml_files_are_devices_too(tree: Path) -> None:
    (tree / "devices" / "dev-03.yaml").rename(tree / "devices" / "dev-03.yml")
    result = by_name(validate_tree(tree))["dev-03.yml"]
    assert (result.kind, result.ok) == (ConfigKind.DEVICE, True)


def test_a_file_that_does_not_validate_skips_the_cross_checks(tree: Path) -> None:
    device = tree / "devices" / "dev-02.yaml"
    replace(device, "fleet: demo", "fleet: other\ncolour: red")
    [problem] = problems(by_name(validate_tree(tree))["dev-02.yaml"])
    assert problem.path == "colour"


def test_missing_fleet_file(tree: Path) -> None:
    (tree / "fleet.yaml").unlink()
    results = validate_tree(tree)
    first = results[0]
    assert (first.file, first.kind) == (tree / "fleet.yaml", ConfigKind.FLEET)
    [problem] = problems(first)
    assert problem.message == "missing: a firmware-config folder needs a fleet.yaml"
    assert all(result.ok for result in results[1:])


def test_invalid_fleet_file_fails_alone(tree: Path) -> None:
    replace(tree / "fleet.yaml", "fleet: demo", "fleet: Demo!")
    results = by_name(validate_tree(tree))
    [problem] = problems(results["fleet.yaml"])
    assert problem.path == "fleet"
    assert results["dev-01.yaml"].ok


@pytest.mark.parametrize(
    "relative", ["models/detector.yaml", "devices/extra/dev-09.yaml", "device.yaml", "fleet.yml"]
)
def test_unknown_yaml_files_are_named(tree: Path, relative: str) -> None:
    stray = tree / relative
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("a: 1\n", encoding="utf-8")
    result = {r.file: r for r in validate_tree(tree)}[stray]
    assert result.kind is None
    [problem] = problems(result)
    assert problem.line is None
    assert "fleet.yaml, devices/*.yaml, gateways/*.yaml and agents/*.yaml" in problem.message


def test_unknown_files_come_last(tree: Path) -> None:
    (tree / "a.yaml").write_text("a: 1\n", encoding="utf-8")
    assert validate_tree(tree)[-1].file == tree / "a.yaml"


def test_schema_hidden_and_other_files_are_skipped(tree: Path) -> None:
    (tree / "schema" / "old.yaml").write_text("a: 1\n", encoding="utf-8")
    (tree / ".git").mkdir()
    (tree / ".git" / "x.yaml").write_text("a: 1\n", encoding="utf-8")
    (tree / "README.md").write_text("# fleet\n", encoding="utf-8")
    (tree / "devices" / "notes.txt").write_text("hi\n", encoding="utf-8")
    results = validate_tree(tree)
    assert len(results) == 7
    assert all(result.ok for result in results)


def test_problems_of_a_bad_file_are_kept(tree: Path) -> None:
    (tree / "devices" / "dev-01.yaml").write_text("fleet: demo\nfleet: demo\n", encoding="utf-8")
    [problem] = problems(by_name(validate_tree(tree))["dev-01.yaml"])
    assert (problem.line, problem.message) == (2, "duplicate key 'fleet' (first on line 1)")


def test_root_that_is_not_a_folder(tmp_path: Path) -> None:
    [result] = validate_tree(tmp_path / "nope")
    assert [problem.message for problem in problems(result)] == ["not a folder"]


def test_empty_folder_needs_a_fleet_file(tmp_path: Path) -> None:
    [result] = validate_tree(tmp_path)
    assert result.file == tmp_path / "fleet.yaml"
    assert not result.ok


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("fleet.yaml", ConfigKind.FLEET),
        ("x/devices/a.yaml", ConfigKind.DEVICE),
        ("x/devices/a.yml", ConfigKind.DEVICE),
        ("gateways/g.yaml", ConfigKind.GATEWAY),
        ("devices/a.json", None),
        ("other/a.yaml", None),
    ],
)
def test_kind_of_a_file_by_its_place(path: str, kind: ConfigKind | None) -> None:
    assert kind_of(Path(path)) is kind


def test_validate_file_checks_one_file_against_its_kind() -> None:
    assert validate_file(EXAMPLE / "devices" / "dev-01.yaml", ConfigKind.DEVICE).ok
    wrong = validate_file(EXAMPLE / "devices" / "dev-01.yaml", ConfigKind.GATEWAY)
    assert {problem.path for problem in problems(wrong)} >= {"device", "gateway", "store"}


# --- agent specs (agents/*.yaml) ----------------------------------------------------------------


def test_agent_spec_must_be_named_after_its_agent(tree: Path) -> None:
    spec = tree / "agents" / "watcher.yaml"
    (tree / "agents" / "vibration-watch.yaml").rename(spec)
    [problem] = problems(by_name(validate_tree(tree))["watcher.yaml"])
    assert (problem.line, problem.path) == (line_of(spec, "name:"), "name")
    assert problem.message == (
        "the file is named watcher.yaml but holds agent 'vibration-watch'; name it vibration-watch.yaml"
    )


def test_agent_names_are_unique_across_specs(tree: Path) -> None:
    copy = tree / "agents" / "vibration-watch.yml"
    shutil.copy(tree / "agents" / "vibration-watch.yaml", copy)
    found = problems(by_name(validate_tree(tree))["vibration-watch.yml"])
    assert [problem.message for problem in found] == [
        f"agent name 'vibration-watch' is already used by {tree / 'agents' / 'vibration-watch.yaml'}"
    ]


def test_agent_spec_fields_are_checked_at_their_line(tree: Path) -> None:
    spec = tree / "agents" / "system-monitor.yaml"
    replace(spec, "isolation: process", "isolation: thread")
    [problem] = problems(by_name(validate_tree(tree))["system-monitor.yaml"])
    assert (problem.line, problem.path) == (line_of(spec, "isolation:"), "isolation")
    assert "'inline' or 'process'" in problem.message


def checker(kind: str, settings: dict[str, object]) -> list[tuple[tuple[str | int, ...], str]]:
    return [((key,), f"{kind} has no {key}") for key in settings if key.startswith("x")]


def test_agent_settings_go_through_the_given_check(tree: Path) -> None:
    spec = tree / "agents" / "vibration-watch.yaml"
    replace(spec, "  window: 128", "  xwindow: 128")
    assert by_name(validate_tree(tree))["vibration-watch.yaml"].ok  # without a check: any settings
    [problem] = problems(by_name(validate_tree(tree, checker))["vibration-watch.yaml"])
    assert (problem.line, problem.path) == (line_of(spec, "  xwindow:"), "config.xwindow")
    assert problem.message == "agent 'pipeline': pipeline has no xwindow"


def test_device_agents_settings_go_through_the_check_too(tree: Path) -> None:
    device = tree / "devices" / "dev-03.yaml"
    device.write_text(
        device.read_text(encoding="utf-8")
        + "agents:\n  - name: mon\n    agent: monitor\n    config: {xinterval: 3}\n",
        encoding="utf-8",
    )
    [problem] = problems(validate_file(device, ConfigKind.DEVICE, checker))
    assert problem.path == "agents.0.config.xinterval"
    assert problem.message == "agent 'monitor': monitor has no xinterval"
