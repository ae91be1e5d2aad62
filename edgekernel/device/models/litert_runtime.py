"""LiteRT (TensorFlow Lite) behind the `Runtime` protocol.

The interpreter comes from `ai_edge_litert` (maintained, NumPy 2) or, where only it exists, from
`tflite_runtime`; both are imported lazily. XNNPACK is LiteRT's default CPU delegate; the Edge TPU
delegate is loaded when ``edgetpu`` is preferred and libedgetpu is installed. Quantized int8/uint8
inputs and outputs are quantized and dequantized here, so callers pass and get float32. TFLite shapes
are fixed at allocation: a batch (or any dynamic dimension) is set with `resize_tensor_input` when it
changes; a batch-1 model whose graph does not resize runs a larger batch sample by sample.
"""

from __future__ import annotations

import ctypes.util
import importlib
import logging
import platform
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from edgekernel.device.models._files import check_file, is_tflite
from edgekernel.device.models._tensors import AnyArray, check_inputs, leading_batch, to_float, to_tensor
from edgekernel.device.models.runtime import (
    FloatArray,
    InferenceError,
    ModelFileError,
    Quantization,
    RuntimeUnavailableError,
    TensorInfo,
)

log = logging.getLogger(__name__)

_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, OSError)


@cache
def interpreter_module() -> Any | None:
    """`ai_edge_litert.interpreter`, else `tflite_runtime.interpreter`, else None."""
    for name in _MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@cache
def edgetpu_library() -> str | None:
    """The Edge TPU runtime library's name when it is installed here."""
    if ctypes.util.find_library("edgetpu") is None:
        return None
    return _EDGETPU_LIBRARY.get(platform.system())


def quantization_of(detail: dict[str, Any]) -> Quantization | None:
    """Per-tensor or per-axis parameters from an interpreter tensor detail; None when not quantized."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float64).ravel()
    zeros = np.asarray(params.get("zero_points", ()), dtype=np.int64).ravel()
    if scales.size == 0 or not np.any(scales):
        return None
    if zeros.size != scales.size:
        zeros = np.resize(zeros if zeros.size else np.zeros(1, np.int64), scales.size)
    axis = int(params.get("quantized_dimension", 0)) if scales.size > 1 else None
    return Quantization(tuple(float(s) for s in scales), tuple(int(z) for z in zeros), axis)


def tensor_info(detail: dict[str, Any], *, batch: bool = False) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = [int(d) for d in (signature if signature is not None and len(signature) else detail["shape"])]
    shape = tuple(None if d < 0 or (batch and axis == 0) else d for axis, d in enumerate(dims))
    return TensorInfo(str(detail["name"]), shape, np.dtype(detail["dtype"]).name, quantization_of(detail))


class LiteRtRuntime:
    """Opens ``.tflite`` files with the LiteRT interpreter."""

    @property
    def name(self) -> str:
        return "litert"

    def available(self) -> bool:
        return interpreter_module() is not None

    def devices(self) -> list[str]:
        if not self.available():
            return []
        return ["edgetpu", "cpu"] if edgetpu_library() else ["cpu"]

    def open(
        self,
        path: Path,
        *,
        preferred: Sequence[str] = ("cpu",),
        threads: int = 1,
        cache_dir: Path | None = None,  # LiteRT has no graph cache: the flatbuffer is what runs
    ) -> LiteRtSession:
        path = Path(path)
        module = interpreter_module()
        if module is None:
            raise RuntimeUnavailableError("LiteRT is not installed (pip install ai-edge-litert)")
        check_file(path)
        if not is_tflite(path):
            raise ModelFileError("not a TFLite model (no TFL3 identifier)", model=str(path))
        delegate = self._delegate(module, path, preferred)
        if delegate is not None:
            try:
                return _session(module, path, threads, [delegate], "edgetpu")
            except ModelFileError as err:
                log.warning("%s does not run on the Edge TPU (%s); running it on the CPU", path, err)
        return _session(module, path, threads, None, "cpu")

    @staticmethod
    def _delegate(module: Any, path: Path, preferred: Sequence[str]) -> Any | None:
        for name in preferred:
            if name.lower() == "cpu":
                return None
            if name.lower() != "edgetpu":
                continue  # XNNPACK is the default; other names belong to ONNX Runtime
            library = edgetpu_library()
            if library is None:
                log.info("%s: Edge TPU runtime (libedgetpu) not installed; using the CPU", path)
                return None
            try:
                return module.load_delegate(library)
            except _ERRORS as err:
                log.info("%s: Edge TPU delegate did not load (%s); using the CPU", path, err)
                return None
        return None


def _session(
    module: Any, path: Path, threads: int, delegates: list[Any] | None, device: str
) -> LiteRtSession:
    interpreter = _interpreter(module, path, threads, delegates)
    try:
        return LiteRtSession(interpreter, path, device)
    except _ERRORS as err:  # a damaged file can pass allocation and fail reading its tensors
        raise ModelFileError(f"LiteRT cannot read its tensors: {err}", model=str(path)) from err


def _interpreter(module: Any, path: Path, threads: int, delegates: list[Any] | None) -> Any:
    try:
        interpreter = module.Interpreter(
            model_path=str(path), num_threads=max(1, threads), experimental_delegates=delegates
        )
        interpreter.allocate_tensors()
    except _ERRORS as err:
        raise ModelFileError(f"LiteRT cannot load it: {err}", model=str(path)) from err
    return interpreter


class LiteRtSession:
    """A LiteRT interpreter that takes and gives float32 arrays."""

    def __init__(self, interpreter: Any, path: Path, device: str) -> None:
        self._interpreter: Any | None = interpreter
        self._model = str(path)
        self._device = device
        self._lock = threading.RLock()  # run() re-enters for a sample-by-sample batch
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        self._input_index = [int(d["index"]) for d in inputs]
        self._output_index = [int(d["index"]) for d in outputs]
        self._shapes = tuple(tuple(int(x) for x in d["shape"]) for d in inputs)
        declared = [tensor_info(d) for d in (*inputs, *outputs)]
        resizable = leading_batch(declared) or self._probe_batch()
        self._inputs = tuple(tensor_info(d, batch=resizable) for d in inputs)
        self._outputs = tuple(tensor_info(d, batch=resizable) for d in outputs)
        self._batch_capable = resizable
        allocated = [tuple(d["shape"][:1]) for d in (*inputs, *outputs)]
        self._per_sample = not resizable and all(dims == (1,) for dims in allocated)

    @property
    def runtime(self) -> str:
        return "litert"

    @property
    def device(self) -> str:
        return self._device

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def batch_capable(self) -> bool:
        return self._batch_capable

    def run(self, inputs: Sequence[FloatArray]) -> list[FloatArray]:
        with self._lock:  # an interpreter is not thread-safe: one run at a time
            return self._run(inputs)

    def _run(self, inputs: Sequence[FloatArray]) -> list[FloatArray]:
        self._live()
        if self._per_sample and self._is_larger_batch(inputs):
            rows = [self.run([array[i : i + 1] for array in inputs]) for i in range(inputs[0].shape[0])]
            return [np.concatenate(parts, axis=0) for parts in zip(*rows, strict=True)]
        check_inputs(self._model, self._inputs, inputs)
        tensors = [to_tensor(self._model, info, a) for info, a in zip(self._inputs, inputs, strict=True)]
        self._resize(tuple(tensor.shape for tensor in tensors))
        interpreter = self._live()
        try:
            for index, tensor in zip(self._input_index, tensors, strict=True):
                interpreter.set_tensor(index, tensor)
            interpreter.invoke()
            results: list[AnyArray] = [interpreter.get_tensor(index) for index in self._output_index]
        except _ERRORS as err:
            raise InferenceError(f"LiteRT failed: {err}", model=self._model) from err
        return [to_float(info, value) for info, value in zip(self._outputs, results, strict=True)]

    def close(self) -> None:
        self._interpreter = None

    def _live(self) -> Any:
        if self._interpreter is None:
            raise InferenceError("session is closed", model=self._model)
        return self._interpreter

    def _is_larger_batch(self, inputs: Sequence[FloatArray]) -> bool:
        if len(inputs) != len(self._inputs) or not all(isinstance(a, np.ndarray) and a.ndim for a in inputs):
            return False  # let check_inputs say what is wrong
        sizes = {array.shape[0] for array in inputs}
        return len(sizes) == 1 and sizes.pop() > 1

    def _resize(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        if shapes == self._shapes:
            return
        interpreter = self._live()
        try:
            self._apply(interpreter, shapes)
        except _ERRORS as err:
            try:
                self._apply(interpreter, self._shapes)
            except _ERRORS:
                self._interpreter = None
            raise InferenceError(f"cannot resize inputs to {list(shapes)}: {err}", model=self._model) from err
        self._shapes = shapes

    def _apply(self, interpreter: Any, shapes: tuple[tuple[int, ...], ...]) -> None:
        for index, shape in zip(self._input_index, shapes, strict=True):
            interpreter.resize_tensor_input(index, list(shape), strict=False)
        interpreter.allocate_tensors()

    def _probe_batch(self) -> bool:
        """Whether a model exported with a fixed batch still resizes to another batch size."""
        interpreter = self._live()
        firsts = {shape[0] if shape else None for shape in self._shapes}
        if len(firsts) != 1 or None in firsts or not self._output_index:
            return False
        batch = int(firsts.pop() or 0)
        try:
            self._apply(interpreter, tuple((batch + 1, *shape[1:]) for shape in self._shapes))
            outputs = [detail["shape"] for detail in interpreter.get_output_details()]
            grew = all(len(shape) and int(shape[0]) == batch + 1 for shape in outputs)
        except _ERRORS:
            grew = False
        try:
            self._apply(interpreter, self._shapes)
        except _ERRORS as err:
            raise ModelFileError(
                f"cannot restore input shapes after probing: {err}", model=self._model
            ) from err
        return grew
