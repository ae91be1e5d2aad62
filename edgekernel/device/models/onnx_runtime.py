"""ONNX Runtime behind the `Runtime` protocol.

Execution providers are picked from the caller's preference list (short names such as ``cuda`` or full
names such as ``CUDAExecutionProvider``) among those this build of ONNX Runtime offers, with the CPU
always last. Sessions keep to their thread budget and do not spin idle threads. With a `cache_dir`,
the optimized graph is saved once (keyed by the file's sha256, ORT version, providers, optimization
level and machine) and loaded from there next time; an entry that fails its checksum or does not load
is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import platform
import uuid
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from edgekernel.device.models import _onnx_graph
from edgekernel.device.models._files import check_file, file_digest
from edgekernel.device.models._tensors import check_inputs, leading_batch, to_float, to_tensor
from edgekernel.device.models.runtime import (
    FloatArray,
    InferenceError,
    ModelError,
    ModelFileError,
    Quantization,
    RuntimeUnavailableError,
    TensorInfo,
)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# short name → execution provider, best first (the order `devices()` reports them in)
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": CPU,
}
_ALIASES = {"dml": "directml", "trt": "tensorrt"}
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
_QUANTIZABLE = ("int8", "uint8", "int16", "uint16")
_OPTIMIZATION = "ORT_ENABLE_ALL"


def _ort() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as err:
        raise RuntimeUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from err


@cache
def _ort_errors() -> tuple[type[Exception], ...]:
    """Every exception ONNX Runtime raises: its pybind classes plus the Python-level checks."""
    state = importlib.import_module("onnxruntime.capi.onnxruntime_pybind11_state")
    native = [
        value
        for value in vars(state).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == state.__name__
    ]
    return (*native, RuntimeError, ValueError, TypeError)


def resolve_providers(preferred: Sequence[str], available: Sequence[str]) -> list[str]:
    """Execution providers to ask for, in order: the preferred ones that are available, then the CPU.

    A preference listed after ``cpu`` is never reached (the CPU runs every op), so the list stops there.
    Names nobody knows (``edgetpu`` is a LiteRT delegate) are skipped.
    """
    chosen: list[str] = []
    for name in preferred:
        short = _ALIASES.get(name.lower(), name.lower())
        provider = PROVIDERS.get(short, name)
        if provider == CPU:
            break
        if provider in available and provider not in chosen:
            chosen.append(provider)
        else:
            log.debug("execution provider %s is not available here; skipped", name)
    return [*chosen, CPU]


class OnnxRuntime:
    """Opens ``.onnx`` files with ONNX Runtime."""

    @property
    def name(self) -> str:
        return "onnx"

    def available(self) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def devices(self) -> list[str]:
        if not self.available():
            return []
        offered = set(_ort().get_available_providers())
        accelerators = [short for short, provider in PROVIDERS.items() if provider in offered]
        return [short for short in accelerators if short != "cpu"] + ["cpu"]

    def open(
        self,
        path: Path,
        *,
        preferred: Sequence[str] = ("cpu",),
        threads: int = 1,
        cache_dir: Path | None = None,
    ) -> OnnxSession:
        path = Path(path)
        ort = _ort()
        check_file(path)
        providers = resolve_providers(preferred, ort.get_available_providers())
        threads = max(1, threads)
        if providers != [CPU]:
            try:
                return OnnxSession(_Loader(ort, path, providers, threads, cache_dir).load(), path)
            except _ort_errors() as err:
                log.warning("%s: %s failed (%s); falling back to the CPU", path, providers[0], err)
        try:
            return OnnxSession(_Loader(ort, path, [CPU], threads, cache_dir).load(), path)
        except _ort_errors() as err:
            raise ModelFileError(f"ONNX Runtime cannot load it: {err}", model=str(path)) from err


class _Loader:
    """Creates one InferenceSession, through the optimized-graph cache when there is one."""

    def __init__(self, ort: Any, path: Path, providers: list[str], threads: int, cache_dir: Path | None):
        self.ort, self.path, self.providers, self.threads = ort, path, providers, threads
        self.cache_dir = cache_dir

    def options(self, *, optimize: bool) -> Any:
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: ORT's warnings are about its own choices
        level = _OPTIMIZATION if optimize else "ORT_DISABLE_ALL"
        options.graph_optimization_level = getattr(self.ort.GraphOptimizationLevel, level)
        return options

    def create(self, source: Path, options: Any) -> Any:
        return self.ort.InferenceSession(str(source), sess_options=options, providers=self.providers)

    def load(self) -> Any:
        folder = self._cache_folder()
        if folder is None:
            return self.create(self.path, self.options(optimize=True))
        key = hashlib.sha256(
            "|".join(
                [
                    file_digest(self.path),
                    self.ort.__version__,
                    ",".join(self.providers),
                    _OPTIMIZATION,
                    platform.machine(),
                ]
            ).encode()
        ).hexdigest()[:32]
        entry = folder / f"{key}.onnx"
        meta = folder / f"{key}.json"
        if entry.exists():
            cached = self._from_cache(entry, meta)
            if cached is not None:
                return cached
        partial = folder / f"{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"  # loads may race
        options = self.options(optimize=True)
        options.optimized_model_filepath = str(partial)
        try:
            session = self.create(self.path, options)
        except _ort_errors() as err:
            partial.unlink(missing_ok=True)
            log.info("%s: could not save its optimized graph (%s); trying without the cache", self.path, err)
            return self.create(self.path, self.options(optimize=True))  # a bad file fails here too
        self._commit(partial, entry, meta)
        return session

    def _cache_folder(self) -> Path | None:
        if self.cache_dir is None:
            return None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.warning("graph cache %s is not usable (%s); optimizing in memory", self.cache_dir, err)
            return None
        return self.cache_dir

    def _from_cache(self, entry: Path, meta: Path) -> Any | None:
        errors: tuple[type[Exception], ...] = (OSError, KeyError, ValueError, ModelError, *_ort_errors())
        try:
            recorded = json.loads(meta.read_text())["sha256"]
            if recorded != file_digest(entry):
                raise ValueError("checksum mismatch")
            return self.create(entry, self.options(optimize=False))
        except errors as err:
            log.warning("graph cache entry %s is unusable (%s); rebuilding it", entry, err)
            entry.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return None

    def _commit(self, partial: Path, entry: Path, meta: Path) -> None:
        try:
            record = {
                "sha256": file_digest(partial),
                "source": str(self.path),
                "onnxruntime": self.ort.__version__,
                "providers": self.providers,
                "optimization": _OPTIMIZATION,
            }
            tmp_meta = partial.with_suffix(".json.tmp")
            tmp_meta.write_text(json.dumps(record, indent=1))
            os.replace(tmp_meta, meta)  # the record first: a reader never sees an entry without it
            os.replace(partial, entry)
        except (OSError, ModelError) as err:  # the cache must never fail a load
            log.warning("could not write graph cache entry %s: %s", entry, err)
            partial.unlink(missing_ok=True)


class OnnxSession:
    """An `InferenceSession` that takes and gives float32 arrays."""

    def __init__(self, session: Any, path: Path) -> None:
        self._session: Any | None = session
        self._model = str(path)
        self._device = str(session.get_providers()[0])
        args = [*session.get_inputs(), *session.get_outputs()]
        integer = any(_DTYPES.get(arg.type) in _QUANTIZABLE for arg in args)
        quantization = _onnx_graph.io_quantization(_onnx_graph.load(path)) if integer else {}
        self._inputs = tuple(self._info(arg, quantization, path) for arg in session.get_inputs())
        outputs = [arg for arg in session.get_outputs() if arg.type in _DTYPES]
        skipped = [f"{arg.name} ({arg.type})" for arg in session.get_outputs() if arg.type not in _DTYPES]
        if skipped:
            log.info("%s: outputs %s are not tensors edgekernel can pass; left out", path, ", ".join(skipped))
        if not outputs:
            raise ModelFileError("the model has no output edgekernel can pass", model=str(path))
        self._outputs = tuple(self._info(arg, quantization, path) for arg in outputs)
        self._output_names = [info.name for info in self._outputs]
        self._batch_capable = leading_batch(self._inputs) and leading_batch(self._outputs)

    @staticmethod
    def _info(arg: Any, quantization: dict[str, Quantization], path: Path) -> TensorInfo:
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise ModelFileError(
                f"input {arg.name!r} has type {arg.type}, which edgekernel cannot pass", model=str(path)
            )
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in arg.shape)
        return TensorInfo(arg.name, shape, dtype, quantization.get(arg.name))

    @property
    def runtime(self) -> str:
        return "onnx"

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

    @property
    def options(self) -> Any:
        """ONNX Runtime's session options as applied (threads, spinning, optimization level)."""
        return self._live().get_session_options()

    def run(self, inputs: Sequence[FloatArray]) -> list[FloatArray]:
        session = self._live()
        check_inputs(self._model, self._inputs, inputs)
        feed = {
            info.name: to_tensor(self._model, info, array)
            for info, array in zip(self._inputs, inputs, strict=True)
        }
        try:
            results = session.run(self._output_names, feed)
        except _ort_errors() as err:
            raise InferenceError(f"ONNX Runtime failed: {err}", model=self._model) from err
        return [to_float(info, value) for info, value in zip(self._outputs, results, strict=True)]

    def close(self) -> None:
        self._session = None

    def _live(self) -> Any:
        if self._session is None:
            raise InferenceError("session is closed", model=self._model)
        return self._session
