"""Pydantic models for every file a user writes, and the loader that reports file:line.

Each export is imported on first use (an agent process needs `config.base`, not every model)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekernel.config.errors import ConfigError, ConfigProblem
    from edgekernel.config.files import load_checked
    from edgekernel.config.loader import load, load_device, load_fleet, load_gateway
    from edgekernel.config.models import (
        BrokerConfig,
        DeviceConfig,
        FleetConfig,
        GatewayConfig,
        SensorConfig,
    )
    from edgekernel.config.outbox import OutboxConfig
    from edgekernel.config.schema import write_schemas
    from edgekernel.config.validate import ConfigKind, FileResult, validate_tree

__all__ = [
    "BrokerConfig",
    "ConfigError",
    "ConfigKind",
    "ConfigProblem",
    "DeviceConfig",
    "FileResult",
    "FleetConfig",
    "GatewayConfig",
    "OutboxConfig",
    "SensorConfig",
    "load",
    "load_checked",
    "load_device",
    "load_fleet",
    "load_gateway",
    "validate_tree",
    "write_schemas",
]

_WHERE = {
    "BrokerConfig": "edgekernel.config.models",
    "ConfigError": "edgekernel.config.errors",
    "ConfigKind": "edgekernel.config.validate",
    "ConfigProblem": "edgekernel.config.errors",
    "DeviceConfig": "edgekernel.config.models",
    "FileResult": "edgekernel.config.validate",
    "FleetConfig": "edgekernel.config.models",
    "GatewayConfig": "edgekernel.config.models",
    "OutboxConfig": "edgekernel.config.outbox",
    "SensorConfig": "edgekernel.config.models",
    "load": "edgekernel.config.loader",
    "load_checked": "edgekernel.config.files",
    "load_device": "edgekernel.config.loader",
    "load_fleet": "edgekernel.config.loader",
    "load_gateway": "edgekernel.config.loader",
    "validate_tree": "edgekernel.config.validate",
    "write_schemas": "edgekernel.config.schema",
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(where)
    value = module if where == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value
