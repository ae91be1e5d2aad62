"""What a model file holds, without running it: format, digest, tensors, quantization, ops, parameters.

ONNX files are read once with the `onnx` package (no external data); TFLite files with the LiteRT
interpreter, without allocating tensors, so models with custom ops (Edge TPU) can be inspected too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekernel.device.models import _onnx_graph
from edgekernel.device.models._files import ModelFormat, check_file, detect_format, file_digest
from edgekernel.device.models.litert_runtime import interpreter_module, quantization_of, tensor_info
from edgekernel.device.models.runtime import ModelFileError, RuntimeUnavailableError, TensorInfo

if TYPE_CHECKING:
    import onnx

_LITERT_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, OSError)


@dataclass(frozen=True, slots=True)
class ModelReport:
    path: Path
    format: ModelFormat
    size: int  # bytes
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    quantization: tuple[str, ...]  # qdq, qoperator, dynamic, weight-only, full-integer, dynamic-range, ...
    ops: tuple[tuple[str, int], ...]  # op type → count, most frequent first
    parameters: int  # elements of constant tensors (weights, biases)
    parameter_dtypes: tuple[tuple[str, int], ...]  # dtype → elements
    quantized_tensors: int
    subgraphs: int
    producer: str | None = None  # ONNX producer name and version
    opsets: tuple[tuple[str, int], ...] = ()  # ONNX domain → opset version
    ir_version: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return bool(self.quantization)

    def top_ops(self, count: int = 10) -> tuple[tuple[str, int], ...]:
        return self.ops[:count]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["quantized"] = self.quantized
        data["ops"] = dict(self.ops)
        data["parameter_dtypes"] = dict(self.parameter_dtypes)
        data["opsets"] = dict(self.opsets)
        for key in ("inputs", "outputs"):
            data[key] = [_tensor_json(info) for info in getattr(self, key)]
        data["quantization"] = list(self.quantization)
        data["notes"] = list(self.notes)
        return data


def _tensor_json(info: TensorInfo) -> dict[str, Any]:
    q = info.quantization
    return {
        "name": info.name,
        "shape": list(info.shape),
        "dtype": info.dtype,
        "quantization": None
        if q is None
        else {"scale": list(q.scale), "zero_point": list(q.zero_point), "axis": q.axis},
    }


def inspect_model(path: Path) -> ModelReport:
    """Describe an ONNX or TFLite file. Raises `ModelFileError` for anything that is not a valid model,
    `RuntimeUnavailableError` for a TFLite file when LiteRT is not installed."""
    path = Path(path)
    size = check_file(path)
    kind = detect_format(path)
    digest = file_digest(path)
    if kind == "onnx":
        return _inspect_onnx(path, size, digest)
    return _inspect_tflite(path, size, digest)


def _sorted(counts: Counter[str]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _inspect_onnx(path: Path, size: int, digest: str) -> ModelReport:
    model = _onnx_graph.load(path)
    graph = model.graph
    constants = {tensor.name for tensor in graph.initializer}
    quantization = _onnx_graph.io_quantization(model)

    def info(value: onnx.ValueInfoProto) -> TensorInfo:
        field = value.type.WhichOneof("value")
        if field != "tensor_type":
            return TensorInfo(_onnx_graph.text(value.name), (), field or "unknown")
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        return TensorInfo(
            _onnx_graph.text(value.name),
            tuple(dims),
            _onnx_graph.dtype_name(tensor.elem_type),
            quantization.get(value.name),
        )

    ops = _onnx_graph.op_histogram(model)
    params = _onnx_graph.parameters(model)
    styles = _onnx_graph.quantization_styles(model, ops)
    parts = (model.producer_name, model.producer_version)
    producer = " ".join(_onnx_graph.text(part) for part in parts if part) or None
    notes = []
    if any(t.data_location == _EXTERNAL for t in graph.initializer):
        notes.append("weights are stored in external data files beside the model")
    return ModelReport(
        path=path,
        format="onnx",
        size=size,
        sha256=digest,
        inputs=tuple(info(value) for value in graph.input if value.name not in constants),
        outputs=tuple(info(value) for value in graph.output),
        quantization=styles,
        ops=_sorted(ops),
        parameters=sum(params.values()),
        parameter_dtypes=_sorted(params),
        quantized_tensors=sum(t.data_type in _onnx_graph.INTEGER_TYPES for t in graph.initializer),
        subgraphs=sum(1 for _ in _onnx_graph.graphs(graph)),
        producer=producer,
        opsets=tuple(
            (_onnx_graph.text(op.domain) or "ai.onnx", int(op.version)) for op in model.opset_import
        ),
        ir_version=int(model.ir_version),
        notes=tuple(notes),
    )


def _inspect_tflite(path: Path, size: int, digest: str) -> ModelReport:
    module = interpreter_module()
    if module is None:
        raise RuntimeUnavailableError("LiteRT is not installed (pip install ai-edge-litert)")
    resolver = getattr(module, "OpResolverType", None)
    extra = {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if resolver else {}
    try:
        interpreter = module.Interpreter(model_path=str(path), **extra)
        inputs = tuple(tensor_info(d) for d in interpreter.get_input_details())
        outputs = tuple(tensor_info(d) for d in interpreter.get_output_details())
        tensors = {int(d["index"]): d for d in interpreter.get_tensor_details()}
        subgraphs = int(interpreter.num_subgraphs()) if hasattr(interpreter, "num_subgraphs") else 1
    except _LITERT_ERRORS as err:
        raise ModelFileError(f"not a valid TFLite model: {err}", model=str(path)) from err
    notes: list[str] = []
    try:
        ops_details: list[dict[str, Any]] = list(interpreter._get_ops_details())
    except (AttributeError, *_LITERT_ERRORS):
        ops_details = []
        notes.append("this LiteRT version does not list ops; op counts and parameters are unknown")
    ops = Counter(str(op["op_name"]) for op in ops_details if op["op_name"] != "DELEGATE")
    produced = {int(i) for op in ops_details for i in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    used = {int(i) for op in ops_details for i in op["inputs"] if int(i) >= 0}
    constant_ids = used - produced - graph_inputs
    params: Counter[str] = Counter()
    for index in constant_ids & tensors.keys():
        detail = tensors[index]
        params[np.dtype(detail["dtype"]).name] += int(np.prod(detail["shape"], dtype=np.int64))
    quantized = {i for i, d in tensors.items() if quantization_of(d) is not None}
    return ModelReport(
        path=path,
        format="tflite",
        size=size,
        sha256=digest,
        inputs=inputs,
        outputs=outputs,
        quantization=_tflite_styles(tensors, quantized, constant_ids, inputs),
        ops=_sorted(ops),
        parameters=sum(params.values()),
        parameter_dtypes=_sorted(params),
        quantized_tensors=len(quantized),
        subgraphs=subgraphs,
        notes=tuple(notes),
    )


def _tflite_styles(
    tensors: dict[int, dict[str, Any]],
    quantized: set[int],
    constants: set[int],
    inputs: tuple[TensorInfo, ...],
) -> tuple[str, ...]:
    dtype = {i: np.dtype(d["dtype"]).name for i, d in tensors.items()}
    integer = ("int8", "uint8", "int16")
    styles: list[str] = []
    if any(dtype[i] in integer for i in quantized - constants):
        styles.append("full-integer")
    elif any(dtype[i] in integer for i in quantized & constants):
        styles.append("dynamic-range")
    if any(dtype[i] == "float16" for i in constants if i in dtype):
        styles.append("float16")
    if any(info.quantization is not None for info in inputs):
        styles.append("integer-io")
    return tuple(styles)
