"""The device kernel: the program each edge box runs.

The exports are imported on first use: an agent process imports `edgekernel.device.agents` and
must not pay for the kernel, its model runtimes and its links (tens of MB, most of a second)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekernel.device.inference import Inference
    from edgekernel.device.kernel import Kernel
    from edgekernel.device.state import DeviceState, StateError

__all__ = ["DeviceState", "Inference", "Kernel", "StateError"]

_WHERE = {
    "DeviceState": "edgekernel.device.state",
    "Inference": "edgekernel.device.inference",
    "Kernel": "edgekernel.device.kernel",
    "StateError": "edgekernel.device.state",
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value
