"""Reading an ONNX graph with the `onnx` package: loading with errors translated, the scale and zero
point of integer graph inputs and outputs, which quantization style a model uses, op and parameter
counts. Initializer data is read only where a scale is needed; external data is never loaded.

`onnx` is imported on first use, not with this module: its import takes 0.5-1 s (its `ml_dtypes`
extension) and tens of MB, and serving a model with float inputs and outputs never needs it."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgekernel.device.models.runtime import ModelFileError, Quantization

if TYPE_CHECKING:
    import onnx

# op → (data, scale, zero point) input positions of each quantized input it takes
_QUANTIZED_INPUTS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "DequantizeLinear": ((0, 1, 2),),
    "QLinearConv": ((0, 1, 2),),
    "QLinearMatMul": ((0, 1, 2), (3, 4, 5)),
    "QLinearAdd": ((0, 1, 2), (3, 4, 5)),
    "QLinearMul": ((0, 1, 2), (3, 4, 5)),
    "QGemm": ((0, 1, 2), (3, 4, 5)),
    "QLinearSigmoid": ((0, 1, 2),),
    "QLinearLeakyRelu": ((0, 1, 2),),
    "QLinearSoftmax": ((0, 1, 2),),
    "QLinearAveragePool": ((0, 1, 2),),
    "QLinearGlobalAveragePool": ((0, 1, 2),),
}
# op → (scale, zero point) input positions for its (first) output
_QUANTIZED_OUTPUT: dict[str, tuple[int, int]] = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearConcat": (0, 1),
}
_QOPERATOR = {"QGemm", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul"}
_DYNAMIC = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
_WEIGHT_ONLY = {"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}
INTEGER_TYPES = {3, 2, 5, 4}  # TensorProto INT8, UINT8, INT16, UINT16 (fixed by the ONNX spec)
_TENSOR, _GRAPH, _GRAPHS = 4, 5, 10  # AttributeProto.TENSOR, GRAPH, GRAPHS


def _onnx() -> ModuleType:
    return importlib.import_module("onnx")


def load(path: Path) -> onnx.ModelProto:
    """Parse `path` as an ONNX model without its external data; `ModelFileError` when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelFileError(f"cannot read it: {err.strerror or err}", model=str(path)) from err
    model: onnx.ModelProto = _onnx().ModelProto()
    decode_error: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError
    try:
        model.ParseFromString(data)
    except (decode_error, ValueError, RuntimeError) as err:
        raise ModelFileError(f"not an ONNX model: {err}", model=str(path)) from err
    if not data or model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelFileError("not an ONNX model (no IR version or no graph)", model=str(path))
    return model


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph of its If / Loop / Scan nodes, depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == _GRAPH:
                yield from graphs(attribute.g)
            elif attribute.type == _GRAPHS:
                for sub in attribute.graphs:
                    yield from graphs(sub)


def op_histogram(model: onnx.ModelProto) -> Counter[str]:
    counts: Counter[str] = Counter()
    for graph in graphs(model.graph):
        for node in graph.node:
            domain = "" if node.domain in ("", "ai.onnx") else f"{text(node.domain)}."
            counts[f"{domain}{text(node.op_type)}"] += 1
    return counts


def parameters(model: onnx.ModelProto) -> Counter[str]:
    """Parameter count per dtype name: initializers and Constant node values."""
    counts: Counter[str] = Counter()
    for graph in graphs(model.graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                tensors += [attr.t for attr in node.attribute if attr.type == _TENSOR]
        for tensor in tensors:
            counts[dtype_name(tensor.data_type)] += int(np.prod(tensor.dims, dtype=np.int64))
    return counts


def text(value: str | bytes) -> str:
    """A protobuf string field as text: a damaged file can hold bytes that are not UTF-8 there."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type (``float32``), else ONNX's own (``string``)."""
    try:
        return str(np.dtype(_onnx().helper.tensor_dtype_to_np_dtype(elem_type)).name)
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return str(_onnx().TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return "unknown"


def quantization_styles(model: onnx.ModelProto, ops: Counter[str]) -> tuple[str, ...]:
    """How a model is quantized: ``qdq``, ``qoperator``, ``dynamic``, ``weight-only``; empty if not."""
    names = {op.rsplit(".", 1)[-1] for op in ops}
    styles = []
    if names & {"QuantizeLinear", "DequantizeLinear"}:
        styles.append("qdq")
    if any(name.startswith("QLinear") for name in names) or names & _QOPERATOR:
        styles.append("qoperator")
    if names & _DYNAMIC:
        styles.append("dynamic")
    if names & _WEIGHT_ONLY:
        styles.append("weight-only")
    if not styles and any(t.data_type in INTEGER_TYPES for t in model.graph.initializer):
        styles.append("int8-tensors")
    return tuple(styles)


def io_quantization(model: onnx.ModelProto) -> dict[str, Quantization]:
    """Scale and zero point of each integer graph input or output, read from the node that uses it."""
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.type == _TENSOR:
                    constants[node.output[0]] = attr.t
    wanted = {
        value.name
        for value in [*graph.input, *graph.output]
        if value.type.tensor_type.elem_type in INTEGER_TYPES and value.name not in constants
    }
    found: dict[str, Quantization] = {}
    for node in graph.node:
        for data, scale, zero in _QUANTIZED_INPUTS.get(node.op_type, ()):
            name = node.input[data] if len(node.input) > data else ""
            if name in wanted and name not in found:
                _put(found, name, node, constants, scale_at=scale, zero_at=zero)
        positions = _QUANTIZED_OUTPUT.get(node.op_type)
        if positions and node.output and node.output[0] in wanted:
            _put(found, node.output[0], node, constants, scale_at=positions[0], zero_at=positions[1])
    return found


def _put(
    found: dict[str, Quantization],
    name: str,
    node: onnx.NodeProto,
    constants: dict[str, onnx.TensorProto],
    *,
    scale_at: int,
    zero_at: int,
) -> None:
    scale_name = node.input[scale_at] if len(node.input) > scale_at else ""
    zero_name = node.input[zero_at] if len(node.input) > zero_at else ""
    if scale_name not in constants:
        return
    numpy_helper = _onnx().numpy_helper
    try:
        scale = numpy_helper.to_array(constants[scale_name]).astype(np.float64).ravel()
        zero = (
            numpy_helper.to_array(constants[zero_name]).astype(np.int64).ravel()
            if zero_name in constants
            else np.zeros_like(scale, dtype=np.int64)
        )
    except (ValueError, TypeError, RuntimeError):
        return
    if scale.size == 0 or zero.size not in (1, scale.size):
        return
    axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 1) if scale.size > 1 else None
    found[name] = Quantization(
        scale=tuple(float(s) for s in scale), zero_point=tuple(int(z) for z in zero), axis=axis
    )
