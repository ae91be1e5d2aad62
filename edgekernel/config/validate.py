"""Validate a whole firmware-config folder: each file against its model and the files it names
(they exist, and a model file matches its sha256), then the files together.

    fleet.yaml        FleetConfig
    devices/*.yaml    DeviceConfig, one device per file, named after the device id
    gateways/*.yaml   GatewayConfig, one gateway per file, named after the gateway id
    agents/*.yaml     AgentSpec, one agent spec per file, named after the agent's name
    schema/           skipped (generated JSON Schemas)

Every device and gateway must belong to the fleet named in fleet.yaml, and ids and agent names are
unique. An agent spec's own `config:` is checked against the agent's Config model only where the
agent kind is installed (`edgekernel config validate` does that; this package does not load agents).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, JsonValue

from edgekernel.config.agents import AgentSpec
from edgekernel.config.errors import ConfigError, ConfigProblem
from edgekernel.config.files import file_problems
from edgekernel.config.loader import Located, load_located
from edgekernel.config.models import DeviceConfig, FleetConfig, GatewayConfig


class ConfigKind(StrEnum):
    DEVICE = "device"
    GATEWAY = "gateway"
    FLEET = "fleet"
    AGENT = "agent"


MODELS: dict[ConfigKind, type[BaseModel]] = {
    ConfigKind.DEVICE: DeviceConfig,
    ConfigKind.GATEWAY: GatewayConfig,
    ConfigKind.FLEET: FleetConfig,
    ConfigKind.AGENT: AgentSpec,
}
# (agent kind, its settings) → problems as (key path in the settings, message); the CLI passes one
# that loads installed agents, which this package does not.
AgentCheck = Callable[[str, dict[str, JsonValue]], list[tuple[tuple[str | int, ...], str]]]
FLEET_FILE = "fleet.yaml"
FOLDERS = {"devices": ConfigKind.DEVICE, "gateways": ConfigKind.GATEWAY, "agents": ConfigKind.AGENT}
SKIPPED = "schema"
YAML_SUFFIXES = (".yaml", ".yml")
_UNDERSTOOD = f"{FLEET_FILE}, devices/*.yaml, gateways/*.yaml and agents/*.yaml ({SKIPPED}/ is skipped)"


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome for one file; `kind` is None for a file edgekernel does not understand."""

    file: Path
    kind: ConfigKind | None
    error: ConfigError | None

    @property
    def ok(self) -> bool:
        return self.error is None


def kind_of(file: Path) -> ConfigKind | None:
    """The kind a file has by its place: ``fleet.yaml``, ``devices/…``, ``gateways/…`` or ``agents/…``."""
    if file.name == FLEET_FILE:
        return ConfigKind.FLEET
    if file.suffix not in YAML_SUFFIXES:
        return None
    return FOLDERS.get(file.parent.name)


def validate_file(file: Path, kind: ConfigKind, agent_check: AgentCheck | None = None) -> FileResult:
    """Validate one file against the model of `kind`, with no cross-file checks."""
    try:
        located = load_located(file, MODELS[kind])
    except ConfigError as err:
        return FileResult(file, kind, err)
    problems = file_problems(located) + agent_problems(located, agent_check)
    return FileResult(file, kind, ConfigError(problems) if problems else None)


def agent_problems(located: Located[BaseModel], agent_check: AgentCheck | None) -> list[ConfigProblem]:
    """Agent settings (an agent spec's, or each of a device's `agents:`) that their agent refuses."""
    config = located.config
    specs: list[tuple[tuple[str | int, ...], AgentSpec]] = []
    if isinstance(config, AgentSpec):
        specs.append(((), config))
    elif isinstance(config, DeviceConfig):
        specs.extend((("agents", index), spec) for index, spec in enumerate(config.agents))
    if agent_check is None:
        return []
    return [
        located.problem((*where, "config", *loc), f"agent {spec.agent!r}: {message}")
        for where, spec in specs
        for loc, message in agent_check(spec.agent, spec.config)
    ]


def validate_tree(root: Path, agent_check: AgentCheck | None = None) -> list[FileResult]:
    """Validate every YAML file under `root` and the rules that tie them together."""
    if not root.is_dir():
        return [FileResult(root, None, ConfigError([ConfigProblem(root, None, None, "", "not a folder")]))]
    checker = _TreeCheck(root, agent_check)
    for file in _yaml_files(root):
        checker.add(file)
    return checker.results()


def _yaml_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        here = Path(folder)
        subfolders[:] = [
            name for name in subfolders if not name.startswith(".") and not (here == root and name == SKIPPED)
        ]
        # a folder named like a config file is reported (the loader refuses it), not walked into
        found.extend(here / name for name in subfolders if Path(name).suffix in YAML_SUFFIXES)
        subfolders[:] = [name for name in subfolders if Path(name).suffix not in YAML_SUFFIXES]
        found.extend(here / name for name in names if Path(name).suffix in YAML_SUFFIXES)
    return sorted(found)


def _identity(config: BaseModel) -> tuple[str, str, str, str | None] | None:
    """(id key, what it names, id, fleet) of a device or gateway config or an agent spec (no fleet)."""
    if isinstance(config, DeviceConfig):
        return "device", "device id", config.device, config.fleet
    if isinstance(config, GatewayConfig):
        return "gateway", "gateway id", config.gateway, config.fleet
    if isinstance(config, AgentSpec):
        return "name", "agent name", config.name, None
    return None


class _TreeCheck:
    def __init__(self, root: Path, agent_check: AgentCheck | None) -> None:
        self._root = root
        self._agent_check = agent_check
        self._order: list[tuple[Path, ConfigKind | None]] = []
        self._problems: dict[Path, list[ConfigProblem]] = {}
        self._members: list[Located[BaseModel]] = []
        self._fleet: Located[BaseModel] | None = None

    def add(self, file: Path) -> None:
        kind = self._kind(file)
        self._order.append((file, kind))
        problems = self._problems.setdefault(file, [])
        if kind is None:
            message = f"not a config file edgekernel knows; it understands {_UNDERSTOOD}"
            problems.append(ConfigProblem(file, None, None, "", message))
            return
        try:
            located = load_located(file, MODELS[kind])
        except ConfigError as err:
            problems.extend(err.problems)
            return
        problems.extend(file_problems(located))
        problems.extend(agent_problems(located, self._agent_check))
        if kind is ConfigKind.FLEET:
            self._fleet = located
        else:
            self._members.append(located)

    def results(self) -> list[FileResult]:
        fleet_file = self._root / FLEET_FILE
        if fleet_file not in self._problems:
            self._order.insert(0, (fleet_file, ConfigKind.FLEET))
            message = f"missing: a firmware-config folder needs a {FLEET_FILE}"
            self._problems[fleet_file] = [ConfigProblem(fleet_file, None, None, "", message)]
        self._check_members()
        self._order.sort(key=lambda entry: (_rank(entry[1]), entry[0]))
        return [
            FileResult(file, kind, ConfigError(self._problems[file]) if self._problems[file] else None)
            for file, kind in self._order
        ]

    def _kind(self, file: Path) -> ConfigKind | None:
        relative = file.relative_to(self._root)
        if relative == Path(FLEET_FILE):
            return ConfigKind.FLEET
        if len(relative.parts) == 2 and relative.parts[0] in FOLDERS:
            return FOLDERS[relative.parts[0]]
        return None

    def _check_members(self) -> None:
        fleet = self._fleet.config if self._fleet is not None else None
        owners: dict[tuple[str, str], Path] = {}
        for member in self._members:
            identity = _identity(member.config)
            if identity is None:
                continue
            key, noun, ident, member_fleet = identity
            problems = self._problems[member.file]
            if isinstance(fleet, FleetConfig) and member_fleet not in (None, fleet.fleet):
                message = f"fleet {member_fleet!r} is not {fleet.fleet!r} named in {FLEET_FILE}"
                problems.append(member.problem(("fleet",), message))
            if member.file.stem != ident:
                message = f"the file is named {member.file.name} but holds {noun.split()[0]} {ident!r}; "
                problems.append(member.problem((key,), f"{message}name it {ident}.yaml"))
            if (key, ident) in owners:
                message = f"{noun} {ident!r} is already used by {owners[key, ident]}"
                problems.append(member.problem((key,), message))
            owners.setdefault((key, ident), member.file)


def _rank(kind: ConfigKind | None) -> int:
    order = [ConfigKind.FLEET, ConfigKind.DEVICE, ConfigKind.GATEWAY, ConfigKind.AGENT, None]
    return order.index(kind)
