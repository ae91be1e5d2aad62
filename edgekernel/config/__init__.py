"""Pydantic models for every file a user writes, and the loader that reports file:line."""

from edgekernel.config.models import (
    BrokerConfig,
    DeviceConfig,
    FleetConfig,
    GatewayConfig,
    SensorConfig,
)

__all__ = ["BrokerConfig", "DeviceConfig", "FleetConfig", "GatewayConfig", "SensorConfig"]
