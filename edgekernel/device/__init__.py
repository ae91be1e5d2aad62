"""The device kernel: the program each edge box runs."""

from edgekernel.device.inference import Inference
from edgekernel.device.kernel import Kernel
from edgekernel.device.state import DeviceState, StateError

__all__ = ["DeviceState", "Inference", "Kernel", "StateError"]
