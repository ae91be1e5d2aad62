"""The device kernel: the program each edge box runs."""

from edgekernel.device.kernel import Kernel
from edgekernel.device.state import DeviceState, StateError

__all__ = ["DeviceState", "Kernel", "StateError"]
