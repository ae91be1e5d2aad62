"""Which runtime opens which model: by name (a model spec's ``runtime``) or by the file itself."""

from __future__ import annotations

from pathlib import Path

from edgekernel.device.models._files import detect_format
from edgekernel.device.models.litert_runtime import LiteRtRuntime
from edgekernel.device.models.onnx_runtime import OnnxRuntime
from edgekernel.device.models.runtime import Runtime, RuntimeUnavailableError

_NAMES: dict[str, type[OnnxRuntime] | type[LiteRtRuntime]] = {
    "onnx": OnnxRuntime,
    "onnxruntime": OnnxRuntime,
    "litert": LiteRtRuntime,
    "tflite": LiteRtRuntime,
}
RUNTIMES = ("onnx", "litert")


def runtime_for(name: str) -> Runtime:
    """The runtime called `name` (``onnx`` or ``litert``; ``onnxruntime`` and ``tflite`` are accepted).

    It is returned even when its package is missing here: `open` then raises `RuntimeUnavailableError`.
    """
    try:
        return _NAMES[name.lower()]()
    except KeyError:
        raise RuntimeUnavailableError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def runtime_for_file(path: Path) -> Runtime:
    """The runtime for a model file, from its bytes (TFLite's ``TFL3`` identifier) and extension.

    Raises `ModelFileError` for a missing or empty file, or one that is neither ONNX nor TFLite.
    """
    return runtime_for("litert" if detect_format(Path(path)) == "tflite" else "onnx")


def available_devices() -> dict[str, list[str]]:
    """Per installed runtime, the devices it can reach here, best first, ending with ``cpu``."""
    found: dict[str, list[str]] = {}
    for name in RUNTIMES:
        runtime = runtime_for(name)
        if runtime.available():
            found[name] = runtime.devices()
    return found
