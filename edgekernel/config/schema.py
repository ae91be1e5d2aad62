"""Export the JSON Schema of each config file, for editors and other tools.

Point an editor with the YAML language server at one with a first line such as
``# yaml-language-server: $schema=../schema/device.schema.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from edgekernel.config.agents import AgentSpec
from edgekernel.config.models import DeviceConfig, FleetConfig, GatewayConfig

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    "device.schema.json": (DeviceConfig, "edgekernel device config (devices/*.yaml)"),
    "gateway.schema.json": (GatewayConfig, "edgekernel gateway config (gateways/*.yaml)"),
    "fleet.schema.json": (FleetConfig, "edgekernel fleet config (fleet.yaml)"),
    "agent.schema.json": (AgentSpec, "edgekernel agent spec (agents/*.yaml)"),
}


def schema_text(model_cls: type[BaseModel], title: str) -> str:
    """The JSON Schema of `model_cls` as stable text: sorted keys, two-space indent, final newline."""
    schema = {"$schema": JSON_SCHEMA_DIALECT, **model_cls.model_json_schema(), "title": title}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    """Write one ``*.schema.json`` per config file kind into `out_dir`; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (model_cls, title) in SCHEMAS.items():
        path = out_dir / name
        path.write_text(schema_text(model_cls, title), encoding="utf-8")
        written.append(path)
    return written
