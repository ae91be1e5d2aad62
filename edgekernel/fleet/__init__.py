"""The fleet manager: registry of devices from their retained status and reported state."""

from edgekernel.fleet.calls import CallResult, CallTimeoutError, call
from edgekernel.fleet.registry import DeviceView, Registry, snapshot

__all__ = ["CallResult", "CallTimeoutError", "DeviceView", "Registry", "call", "snapshot"]
