"""Models on the box: runtimes (ONNX Runtime, LiteRT), the manager, inspection, quantization, benchmarks."""

from edgekernel.device.models.benchmark import BenchRow, bench_model
from edgekernel.device.models.inspect import ModelReport, inspect_model
from edgekernel.device.models.litert_runtime import LiteRtRuntime
from edgekernel.device.models.manager import (
    BudgetError,
    LoadedModelInfo,
    ManagerStats,
    ModelManager,
    UnknownModelError,
    file_sha256,
)
from edgekernel.device.models.onnx_runtime import OnnxRuntime
from edgekernel.device.models.quantize import QuantizationError, QuantizeReport, quantize_onnx
from edgekernel.device.models.registry import available_devices, runtime_for, runtime_for_file
from edgekernel.device.models.runtime import (
    InferenceError,
    ModelError,
    ModelFileError,
    Quantization,
    Runtime,
    RuntimeUnavailableError,
    Session,
    TensorInfo,
)

__all__ = [
    "BenchRow",
    "BudgetError",
    "InferenceError",
    "LiteRtRuntime",
    "LoadedModelInfo",
    "ManagerStats",
    "ModelError",
    "ModelFileError",
    "ModelManager",
    "ModelReport",
    "OnnxRuntime",
    "Quantization",
    "QuantizationError",
    "QuantizeReport",
    "Runtime",
    "RuntimeUnavailableError",
    "Session",
    "TensorInfo",
    "UnknownModelError",
    "available_devices",
    "bench_model",
    "file_sha256",
    "inspect_model",
    "quantize_onnx",
    "runtime_for",
    "runtime_for_file",
]
