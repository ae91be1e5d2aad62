"""Quantizing ONNX models to int8 with `onnxruntime.quantization`.

Static quantization calibrates activation ranges on a calibration set (a ``.npy`` array for a
single-input model, a ``.npz`` with one array per input name, or a callable yielding input dicts) and
writes QDQ (the default; what ONNX Runtime's CPU kernels and most accelerators prefer) or QOperator
graphs. Dynamic quantization needs no data: weights are int8 and activations are quantized at run
time. `quant_pre_process` (shape inference and basic optimization) runs first; when it fails the
original graph is quantized as it is. TFLite models are quantized when they are converted, not here.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgekernel.device.models import _onnx_graph
from edgekernel.device.models._files import check_file, detect_format
from edgekernel.device.models.runtime import ModelError, RuntimeUnavailableError

log = logging.getLogger(__name__)

QuantMode = Literal["static", "dynamic"]
QuantFormat = Literal["qdq", "qoperator"]
Feeds = Mapping[str, npt.NDArray[Any]]
Calibration = Path | str | Callable[[], Iterable[Feeds]]
CALIBRATION_BATCH = 16  # samples per calibration run when the batch dimension is dynamic


class QuantizationError(ModelError):
    """The model cannot be quantized as asked: no calibration set, a bad one, a TFLite file, ..."""


@dataclass(frozen=True, slots=True)
class QuantizeReport:
    source: Path
    output: Path
    mode: QuantMode
    format: QuantFormat
    per_channel: bool
    source_bytes: int
    output_bytes: int
    calibration_batches: int  # 0 for dynamic quantization
    preprocessed: bool
    notes: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """Output size over source size."""
        return self.output_bytes / self.source_bytes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            source=str(self.source), output=str(self.output), ratio=self.ratio, notes=list(self.notes)
        )
        return data


def quantize_onnx(
    src: Path,
    dst: Path,
    *,
    mode: QuantMode = "static",
    calibration: Calibration | None = None,
    per_channel: bool = True,
    format: QuantFormat = "qdq",
    activations: Literal["uint8", "int8"] = "uint8",
) -> QuantizeReport:
    """Write an int8 version of the ONNX model `src` to `dst` and say what was done.

    Raises `QuantizationError` (a TFLite file, a model that is already quantized, static mode without
    or with an unusable calibration set, a failure inside ONNX Runtime), `ModelFileError` for a file
    that is not an ONNX model, `RuntimeUnavailableError` when onnxruntime is not installed.
    """
    src, dst = Path(src), Path(dst)
    size = check_file(src)
    if detect_format(src) == "tflite":
        raise QuantizationError(
            "this is a TFLite model, and TFLite models are quantized when they are converted: use the "
            "LiteRT converter (tf.lite.TFLiteConverter with optimizations=[tf.lite.Optimize.DEFAULT] and a "
            "representative dataset, or ai-edge-torch for PyTorch models); edgekernel quantizes ONNX files",
            model=str(src),
        )
    model = _onnx_graph.load(src)
    already = _onnx_graph.quantization_styles(model, _onnx_graph.op_histogram(model))
    if already:
        raise QuantizationError(f"already quantized ({', '.join(already)})", model=str(src))
    reader = _Reader(_feeds(model, calibration, src)) if calibration is not None else None
    if mode == "static" and reader is None:
        raise QuantizationError(
            "static quantization needs a calibration set: pass --calibration FILE.npy (one array, for a "
            "single-input model) or FILE.npz (one array per input name), or use --mode dynamic",
            model=str(src),
        )
    quantization = _import("onnxruntime.quantization")
    notes: list[str] = []
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ek-quant-", dir=dst.parent) as tmp:
        work = Path(tmp)
        source, preprocessed = _preprocess(quantization, src, work / "pre.onnx", notes)
        partial = work / "out.onnx"
        batches = 0
        try:
            if reader is not None and mode == "static":
                if reader.empty():
                    raise QuantizationError("the calibration set is empty", model=str(src))
                types = quantization.QuantType
                quantization.quantize_static(
                    str(source),
                    str(partial),
                    reader,
                    quant_format=getattr(quantization.QuantFormat, "QDQ" if format == "qdq" else "QOperator"),
                    per_channel=per_channel,
                    activation_type=types.QUInt8 if activations == "uint8" else types.QInt8,
                    weight_type=types.QInt8,
                )
                batches = reader.count
            else:
                if format == "qdq":
                    notes.append("dynamic quantization always writes integer operators (QOperator style)")
                quantization.quantize_dynamic(
                    str(source),
                    str(partial),
                    per_channel=per_channel,
                    weight_type=quantization.QuantType.QInt8,
                )
        except QuantizationError:
            raise
        except _errors() as err:
            raise QuantizationError(f"ONNX Runtime could not quantize it: {err}", model=str(src)) from err
        os.replace(partial, dst)
    return QuantizeReport(
        source=src,
        output=dst,
        mode=mode,
        format="qoperator" if mode == "dynamic" else format,
        per_channel=per_channel,
        source_bytes=size,
        output_bytes=dst.stat().st_size,
        calibration_batches=batches,
        preprocessed=preprocessed,
        notes=tuple(notes),
    )


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise RuntimeUnavailableError(f"{name} is not installed (pip install onnxruntime)") from err


def _errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime's quantization tools raise: ORT's own errors and plain Python ones."""
    state = _import("onnxruntime.capi.onnxruntime_pybind11_state")
    native = [
        value
        for value in vars(state).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == state.__name__
    ]
    return (ValueError, RuntimeError, TypeError, KeyError, IndexError, OSError, *native)


def _preprocess(quantization: Any, src: Path, out: Path, notes: list[str]) -> tuple[Path, bool]:
    """Shape inference before quantizing; symbolic shape inference only where sympy is installed."""
    symbolic = importlib.util.find_spec("sympy") is not None
    try:
        quantization.shape_inference.quant_pre_process(str(src), str(out), skip_symbolic_shape=not symbolic)
    except Exception as err:  # pre-processing only helps: whatever fails in it, quantize without it
        log.info("pre-processing %s failed (%s); quantizing it as it is", src, err)
        notes.append(f"pre-processing skipped: {err}")
        return src, False
    return out, True


class _Reader:
    """`CalibrationDataReader` for ONNX Runtime (it checks the protocol, not the base class)."""

    def __init__(self, feeds: Iterable[Feeds]) -> None:
        self._feeds = iter(feeds)
        self._ahead: Feeds | None = None
        self.count = 0

    def empty(self) -> bool:
        """Whether there is no batch at all (reads the first one ahead, which checks it)."""
        if self._ahead is None:
            self._ahead = next(self._feeds, None)
        return self._ahead is None

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        feed = self._ahead if self._ahead is not None else next(self._feeds, None)
        self._ahead = None
        if feed is None:
            return None
        self.count += 1
        return dict(feed)

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> dict[str, npt.NDArray[Any]]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def _feeds(model: Any, calibration: Calibration, src: Path) -> Iterable[Feeds]:
    inputs = _model_inputs(model)
    if callable(calibration):
        return _checked(calibration(), inputs, src)
    path = Path(calibration)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise QuantizationError(f"cannot read calibration file {path}: {err}", model=str(src)) from err
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            names = ", ".join(inputs)
            raise QuantizationError(
                f"{path} holds one array but the model has {len(inputs)} inputs ({names}): "
                "use an .npz with one array per input name",
                model=str(src),
            )
        arrays = {next(iter(inputs)): loaded}
    else:
        with loaded:
            arrays = {name: loaded[name] for name in loaded.files}
        missing = [name for name in inputs if name not in arrays]
        if missing:
            raise QuantizationError(
                f"{path} has no array for input(s) {', '.join(missing)} "
                f"(it has {', '.join(arrays) or 'none'})",
                model=str(src),
            )
    return _checked(_batches(arrays, inputs, path, src), inputs, src)


def _model_inputs(model: Any) -> dict[str, tuple[tuple[int | None, ...], npt.DTypeLike]]:
    graph = model.graph
    constants = {tensor.name for tensor in graph.initializer}
    found: dict[str, tuple[tuple[int | None, ...], npt.DTypeLike]] = {}
    for value in graph.input:
        if value.name in constants:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        found[value.name] = (dims, _onnx_graph.dtype_name(tensor.elem_type))
    return found


def _batches(
    arrays: dict[str, npt.NDArray[Any]],
    inputs: Mapping[str, tuple[tuple[int | None, ...], npt.DTypeLike]],
    path: Path,
    src: Path,
) -> Iterator[Feeds]:
    """Cut each input's samples into runs: fixed-batch slices, or up to `CALIBRATION_BATCH` samples."""
    counts = set()
    steps = {}
    for name, (shape, _) in inputs.items():
        array = arrays[name]
        if array.ndim == len(shape) + 1:  # a stack of whole inputs
            arrays[name] = array.reshape((-1, *array.shape[2:]))
            steps[name] = array.shape[1]
        elif array.ndim == len(shape) and shape:
            steps[name] = shape[0] or CALIBRATION_BATCH
        else:
            raise QuantizationError(
                f"calibration array {name!r} in {path} has shape {array.shape}; "
                f"input {name!r} has rank {len(shape)}",
                model=str(src),
            )
        counts.add(arrays[name].shape[0] // steps[name])
    if len(counts) != 1:
        raise QuantizationError(
            f"calibration arrays in {path} hold different numbers of samples", model=str(src)
        )
    for run in range(counts.pop()):
        yield {
            name: np.asarray(arrays[name][run * steps[name] : (run + 1) * steps[name]], dtype=dtype)
            for name, (_, dtype) in inputs.items()
        }


def _checked(
    feeds: Iterable[Feeds], inputs: Mapping[str, tuple[tuple[int | None, ...], npt.DTypeLike]], src: Path
) -> Iterator[Feeds]:
    for feed in feeds:
        for name, (shape, _) in inputs.items():
            value = feed.get(name)
            if value is None:
                raise QuantizationError(f"a calibration sample has no input {name!r}", model=str(src))
            if value.ndim != len(shape) or any(
                want is not None and want != got for want, got in zip(shape, value.shape, strict=True)
            ):
                raise QuantizationError(
                    f"calibration input {name!r} has shape {value.shape}; the model wants {shape}",
                    model=str(src),
                )
        yield {name: np.asarray(feed[name], dtype=dtype) for name, (_, dtype) in inputs.items()}
