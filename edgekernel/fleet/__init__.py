"""The fleet manager: registry of devices from their retained status and reported state."""

from edgekernel.fleet.registry import DeviceView, Registry, snapshot

__all__ = ["DeviceView", "Registry", "snapshot"]
