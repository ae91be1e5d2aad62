"""Sensor drivers: each is one small module with a config model and a sample source (see `base`)."""

from edgekernel.device.drivers.base import Actuator, Injectable, PushQueue, SampleValue, Source
from edgekernel.device.drivers.errors import (
    DriverConfigError,
    DriverError,
    DriverNotFoundError,
    NotAnActuatorError,
)

__all__ = [
    "Actuator",
    "DriverConfigError",
    "DriverError",
    "DriverNotFoundError",
    "Injectable",
    "NotAnActuatorError",
    "PushQueue",
    "SampleValue",
    "Source",
]
