"""Pydantic models for every file a user writes, and the loader that reports file:line."""

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
