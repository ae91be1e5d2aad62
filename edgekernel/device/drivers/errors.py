"""Errors of the sensor drivers."""

from __future__ import annotations

from edgekernel.errors import EdgeKernelError


class DriverError(EdgeKernelError):
    """A driver cannot be found, configured or run for a stream (.driver, .stream)."""

    def __init__(self, driver: str, stream: str, message: str) -> None:
        super().__init__(message)
        self.driver = driver
        self.stream = stream


class DriverNotFoundError(DriverError):
    """No driver of that name is installed (entry point group `edgekernel.drivers`)."""


class DriverConfigError(DriverError):
    """The sensor's driver settings do not validate against the driver's Config model."""


class NotAnActuatorError(DriverError):
    """`actuate` on a stream whose driver takes no input."""
