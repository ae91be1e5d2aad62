"""Small real model files built inside the tests: ONNX graphs with onnx.helper, TFLite flatbuffers
with the schema that ai-edge-litert ships (no TensorFlow needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Mlp:
    """x @ w1 + b1 → relu → @ w2: the reference the runtimes are checked against."""

    w1: F32
    b1: F32
    w2: F32

    def __call__(self, x: F32) -> F32:
        hidden: F32 = np.maximum(x @ self.w1 + self.b1, 0)
        return np.asarray(hidden @ self.w2, dtype=np.float32)


def mlp(seed: int = 0, sizes: tuple[int, int, int] = (16, 64, 8)) -> Mlp:
    rng = np.random.default_rng(seed)
    n_in, hidden, n_out = sizes
    return Mlp(
        (rng.normal(size=(n_in, hidden)) / np.sqrt(n_in)).astype(np.float32),
        rng.normal(scale=0.1, size=hidden).astype(np.float32),
        (rng.normal(size=(hidden, n_out)) / np.sqrt(hidden)).astype(np.float32),
    )


def mlp_onnx(
    path: Path,
    net: Mlp | None = None,
    *,
    batch: int | str = "batch",
    float16: bool = False,
    opset: int = 17,
) -> Path:
    """MatMul + Add + Relu + MatMul; `batch` is the first dimension (a name makes it dynamic)."""
    net = net or mlp()
    elem = TensorProto.FLOAT16 if float16 else TensorProto.FLOAT
    cast = np.float16 if float16 else np.float32
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, [batch, net.w1.shape[0]])],
        [helper.make_tensor_value_info("y", elem, [batch, net.w2.shape[1]])],
        [
            numpy_helper.from_array(net.w1.astype(cast), "w1"),
            numpy_helper.from_array(net.b1.astype(cast), "b1"),
            numpy_helper.from_array(net.w2.astype(cast), "w2"),
        ],
    )
    return _save(path, graph, opset)


def matmul_onnx(path: Path, shape: list[int | str], n_out: int = 3, seed: int = 1) -> tuple[Path, F32]:
    """y = x @ w for an input of any shape whose last dimension is fixed (e.g. [batch, "seq", 4])."""
    w = np.random.default_rng(seed).normal(size=(int(shape[-1]), n_out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*shape[:-1], n_out])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(path, graph, 17), w


def two_input_onnx(path: Path, n_in: int = 16, n_out: int = 32, seed: int = 2) -> tuple[Path, F32]:
    """y = (a + b) @ w, both inputs [batch, n_in]."""
    w = np.random.default_rng(seed).normal(size=(n_in, n_out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"])],
        "two",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n_in]) for name in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(path, graph, 17), w


def qlinear_onnx(path: Path) -> tuple[Path, dict[str, Any]]:
    """A QOperator model with uint8 input and output: y = QLinearMatMul(x, w) with known scales."""
    rng = np.random.default_rng(3)
    w = rng.integers(0, 255, size=(4, 3), dtype=np.uint8)
    params = {
        "x_scale": 0.02,
        "x_zero": 128,
        "w": w,
        "w_scale": 0.01,
        "w_zero": 127,
        "y_scale": 0.05,
        "y_zero": 100,
    }
    consts = [
        numpy_helper.from_array(np.array(params["x_scale"], np.float32), "xs"),
        numpy_helper.from_array(np.array(params["x_zero"], np.uint8), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(params["w_scale"], np.float32), "ws"),
        numpy_helper.from_array(np.array(params["w_zero"], np.uint8), "wz"),
        numpy_helper.from_array(np.array(params["y_scale"], np.float32), "ys"),
        numpy_helper.from_array(np.array(params["y_zero"], np.uint8), "yz"),
    ]
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    graph = helper.make_graph(
        [node],
        "qlinear",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["n", 3])],
        consts,
    )
    return _save(path, graph, 17), params


def _save(path: Path, graph: onnx.GraphProto, opset: int) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="model_factory"
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- TFLite -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dense:
    """relu(x @ w.T + b): what the TFLite FULLY_CONNECTED model computes."""

    w: F32
    b: F32

    def __call__(self, x: F32) -> F32:
        return np.asarray(np.maximum(x @ self.w.T + self.b, 0), dtype=np.float32)


def dense(seed: int = 0, n_in: int = 4, n_out: int = 3) -> Dense:
    rng = np.random.default_rng(seed)
    return Dense(rng.normal(size=(n_out, n_in)).astype(np.float32), rng.normal(size=n_out).astype(np.float32))


def dense_tflite(
    path: Path,
    net: Dense | None = None,
    *,
    int8: bool = False,
    batch: int = 1,
    dynamic_batch: bool = True,
    input_scale: float = 0.05,
    output_scale: float = 0.05,
    output_zero: int = -100,
    fixed_reshape: bool = False,
    custom_op: str | None = None,
) -> Path:
    """One FULLY_CONNECTED (+ fused relu) op; int8 uses per-channel weights and int8 input/output.

    `fixed_reshape` adds a RESHAPE to a constant [batch, n_out] shape, so the graph cannot take another
    batch size; `custom_op` replaces FULLY_CONNECTED with a custom op of that name (as Edge TPU models
    have), which the interpreter can describe but not run.
    """
    from ai_edge_litert import schema_py_generated as tfl  # type: ignore[import-untyped]
    from flatbuffers import Builder  # type: ignore[import-untyped]

    net = net or dense()
    n_out, n_in = net.w.shape
    buffers = [tfl.BufferT()]
    tensors: list[Any] = []

    def buffer(array: npt.NDArray[Any]) -> int:
        entry = tfl.BufferT()
        entry.data = list(np.ascontiguousarray(array).tobytes())
        buffers.append(entry)
        return len(buffers) - 1

    def quant(scale: Any, zero: Any, axis: int = 0) -> Any:
        params = tfl.QuantizationParametersT()
        params.scale, params.zeroPoint, params.quantizedDimension = list(scale), list(zero), axis
        return params

    def tensor(name: str, shape: list[int], kind: int, data: int = 0, q: Any = None, io: bool = False) -> int:
        entry = tfl.TensorT()
        entry.name, entry.shape, entry.type, entry.buffer, entry.quantization = name, shape, kind, data, q
        if io and dynamic_batch:
            entry.shapeSignature = [-1, *shape[1:]]
        tensors.append(entry)
        return len(tensors) - 1

    if int8:
        w_scale = np.abs(net.w).max(axis=1) / 127
        w_q = np.round(net.w / w_scale[:, None]).astype(np.int8)
        b_q = np.round(net.b / (input_scale * w_scale)).astype(np.int32)
        x = tensor("x", [batch, n_in], tfl.TensorType.INT8, q=quant([input_scale], [0]), io=True)
        w = tensor("w", [n_out, n_in], tfl.TensorType.INT8, buffer(w_q), quant(w_scale, [0] * n_out))
        b = tensor("b", [n_out], tfl.TensorType.INT32, buffer(b_q), quant(input_scale * w_scale, [0] * n_out))
        y = tensor("y", [batch, n_out], tfl.TensorType.INT8, q=quant([output_scale], [output_zero]), io=True)
    else:
        x = tensor("x", [batch, n_in], tfl.TensorType.FLOAT32, io=True)
        w = tensor("w", [n_out, n_in], tfl.TensorType.FLOAT32, buffer(net.w))
        b = tensor("b", [n_out], tfl.TensorType.FLOAT32, buffer(net.b))
        y = tensor("y", [batch, n_out], tfl.TensorType.FLOAT32, io=True)
    options = tfl.FullyConnectedOptionsT()
    options.fusedActivationFunction = tfl.ActivationFunctionType.RELU
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [x, w, b], [y]
    code = tfl.OperatorCodeT()
    if custom_op:
        code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.CUSTOM
        code.customCode = custom_op
    else:
        op.builtinOptionsType, op.builtinOptions = tfl.BuiltinOptions.FullyConnectedOptions, options
        code.builtinCode = code.deprecatedBuiltinCode = tfl.BuiltinOperator.FULLY_CONNECTED
        code.version = 4 if int8 else 1
    codes, operators, output = [code], [op], y
    if fixed_reshape:
        tensors[y].name, tensors[y].shapeSignature = "fc", None
        new_shape = tensor("new_shape", [2], tfl.TensorType.INT32, buffer(np.array([batch, n_out], np.int32)))
        output = tensor("y", [batch, n_out], tensors[y].type, q=tensors[y].quantization)
        reshape = tfl.OperatorT()
        reshape.opcodeIndex, reshape.inputs, reshape.outputs = 1, [y, new_shape], [output]
        reshape_code = tfl.OperatorCodeT()
        reshape_code.builtinCode = reshape_code.deprecatedBuiltinCode = tfl.BuiltinOperator.RESHAPE
        codes.append(reshape_code)
        operators.append(reshape)
    subgraph = tfl.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = (
        tensors,
        [x],
        [output],
        operators,
    )
    subgraph.name = "main"
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [subgraph], buffers
    model.description = "model_factory"
    builder = Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path
