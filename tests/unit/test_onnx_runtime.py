"""OnnxRuntime on real model files built here: CPU fallback, thread options, the graph cache, float16,
uint8 QOperator inputs, and every bad file or bad input ending in the package's own errors."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgekernel.device.models.onnx_runtime import CPU, OnnxRuntime, OnnxSession, resolve_providers
from edgekernel.device.models.quantize import quantize_onnx
from edgekernel.device.models.runtime import InferenceError, ModelFileError, Quantization
from tests.unit import model_factory as mf

RT = OnnxRuntime()
RNG = np.random.default_rng(7)


def _mlp_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return mf.mlp_onnx(Path(folder) / "mlp.onnx").read_bytes()


MLP_BYTES = _mlp_bytes()


def x(n: int, width: int = 16) -> np.ndarray:
    return RNG.normal(size=(n, width)).astype(np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def mlp_file(folder: Path) -> Path:
    return mf.mlp_onnx(folder / "mlp.onnx")


def open_cpu(path: Path, **kwargs: object) -> OnnxSession:
    return RT.open(path, **kwargs)  # type: ignore[arg-type]


# --- running ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
def test_runs_the_model_with_a_dynamic_batch(mlp_file: Path, batch: int) -> None:
    session = open_cpu(mlp_file)
    assert session.runtime == "onnx"
    assert session.batch_capable
    assert [(i.name, i.shape, i.dtype) for i in session.inputs] == [("x", (None, 16), "float32")]
    assert [(o.name, o.shape) for o in session.outputs] == [("y", (None, 8))]
    data = x(batch)
    (out,) = session.run([data])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mf.mlp()(data), rtol=1e-5, atol=1e-5)


def test_fixed_batch_model_is_not_batch_capable(folder: Path) -> None:
    session = open_cpu(mf.mlp_onnx(folder / "fixed.onnx", batch=2))
    assert not session.batch_capable
    assert session.inputs[0].shape == (2, 16)
    with pytest.raises(InferenceError, match=r"input 'x': dimension 0 must be 2, got 3"):
        session.run([x(3)])


def test_float16_model_takes_and_gives_float32(folder: Path) -> None:
    session = open_cpu(mf.mlp_onnx(folder / "half.onnx", float16=True))
    assert session.inputs[0].dtype == "float16"
    data = x(4)
    (out,) = session.run([data])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mf.mlp()(data), atol=2e-2, rtol=2e-2)
    (huge,) = session.run([np.full((1, 16), 1e6, np.float32)])  # float16 overflow: inf, not an error
    assert not np.isfinite(huge).all()


def test_uint8_qoperator_inputs_are_quantized_from_the_graph(folder: Path) -> None:
    path, p = mf.qlinear_onnx(folder / "qlinear.onnx")
    session = open_cpu(path)
    q = session.inputs[0].quantization
    assert isinstance(q, Quantization)
    assert q.scale == pytest.approx((0.02,))
    assert (q.zero_point, q.axis) == ((128,), None)
    assert session.outputs[0].dtype == "uint8"
    data = RNG.uniform(-1, 1, size=(6, 4)).astype(np.float32)
    (out,) = session.run([data])
    xq = np.clip(np.round(data / p["x_scale"]) + p["x_zero"], 0, 255)
    real = ((xq - p["x_zero"]) * p["x_scale"]) @ ((p["w"].astype(np.float32) - p["w_zero"]) * p["w_scale"])
    np.testing.assert_allclose(out, real, atol=p["y_scale"] / 2 + 1e-6)
    with pytest.raises(InferenceError, match="input 'x': NaN or infinity"):
        session.run([np.full((1, 4), np.nan, np.float32)])


# --- providers and options ----------------------------------------------------------------------


def test_unavailable_accelerators_fall_back_to_cpu(mlp_file: Path) -> None:
    session = open_cpu(mlp_file, preferred=("tensorrt", "cuda", "NoSuchExecutionProvider", "edgetpu"))
    assert session.device == CPU
    assert session.run([x(1)])[0].shape == (1, 8)


def test_provider_resolution() -> None:
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider", CPU]
    assert resolve_providers(["cuda", "tensorrt"], offered) == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        CPU,
    ]
    assert resolve_providers(["DML", "CUDAExecutionProvider"], offered) == [
        "DmlExecutionProvider",
        "CUDAExecutionProvider",
        CPU,
    ]
    assert resolve_providers(["cpu", "cuda"], offered) == [CPU]  # nothing after the CPU is reached
    assert resolve_providers(["openvino", "edgetpu", "cuda", "cuda"], offered) == [
        "CUDAExecutionProvider",
        CPU,
    ]
    assert resolve_providers([], offered) == [CPU]


def test_devices_end_with_cpu() -> None:
    assert RT.available()
    assert RT.devices()[-1] == "cpu"


def test_thread_budget_and_no_spinning(mlp_file: Path) -> None:
    options = open_cpu(mlp_file, threads=2).options
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- optimized-graph cache ----------------------------------------------------------------------


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.onnx"))


def test_graph_cache_is_written_then_reused(mlp_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = open_cpu(mlp_file, cache_dir=cache)
    (entry,) = entries(cache)
    meta = json.loads(entry.with_suffix(".json").read_text())
    assert meta["providers"] == [CPU]
    assert meta["onnxruntime"] == ort.__version__
    written = entry.stat().st_mtime_ns
    second = open_cpu(mlp_file, cache_dir=cache, threads=2)
    assert (
        second.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )  # loaded as is
    assert entry.stat().st_mtime_ns == written
    assert not list(cache.glob("*.tmp"))
    data = x(3)
    np.testing.assert_allclose(second.run([data])[0], first.run([data])[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "meta"])
def test_corrupt_cache_entry_is_rebuilt(
    mlp_file: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    open_cpu(mlp_file, cache_dir=cache)
    (entry,) = entries(cache)
    if damage == "garbage":
        entry.write_bytes(b"\x00not a model" * 10)
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    else:
        entry.with_suffix(".json").write_text("{")
    with caplog.at_level(logging.WARNING):
        session = open_cpu(mlp_file, cache_dir=cache)
    assert "rebuilding it" in caplog.text
    assert session.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    np.testing.assert_allclose(session.run([x(2)])[0].shape, (2, 8))
    reopened = open_cpu(mlp_file, cache_dir=cache)  # the rebuilt entry is good again
    assert reopened.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_cached_quantized_graph_gives_the_same_outputs(folder: Path, tmp_path: Path) -> None:
    src = mf.mlp_onnx(folder / "mlp-for-dynamic.onnx")
    quantized = quantize_onnx(src, folder / "mlp-dynamic.onnx", mode="dynamic").output
    data = x(4)
    (plain,) = open_cpu(quantized).run([data])
    open_cpu(quantized, cache_dir=tmp_path)
    cached = open_cpu(quantized, cache_dir=tmp_path)
    assert cached.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_allclose(cached.run([data])[0], plain, rtol=1e-6, atol=1e-6)


def test_unusable_cache_dir_is_skipped(mlp_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert open_cpu(mlp_file, cache_dir=blocker / "cache").run([x(1)])[0].shape == (1, 8)


# --- bad files and bad inputs -------------------------------------------------------------------


def bad_file(tmp_path: Path, kind: str, mlp_file: Path) -> Path:
    path = tmp_path / f"{kind}.onnx"
    match kind:
        case "missing":
            pass
        case "empty":
            path.write_bytes(b"")
        case "garbage":
            path.write_bytes(b"\xff\xfe this is not protobuf" * 20)
        case "truncated":
            path.write_bytes(mlp_file.read_bytes()[:200])
        case "tflite":
            path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(100))
        case "folder":
            path.mkdir()
        case "text":
            path.write_text("ir_version: 9\n")
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated", "tflite", "folder", "text"])
def test_bad_files_raise_model_file_error_naming_the_file(tmp_path: Path, mlp_file: Path, kind: str) -> None:
    path = bad_file(tmp_path, kind, mlp_file)
    with pytest.raises(ModelFileError) as caught:
        open_cpu(path, preferred=("cuda", "cpu"))
    assert str(path) in str(caught.value)
    assert caught.value.model == str(path)


def test_wrong_inputs_raise_inference_error_naming_the_input(mlp_file: Path) -> None:
    session = open_cpu(mlp_file)
    with pytest.raises(InferenceError, match=r"expected 1 input\(s\) \('x'\), got 2"):
        session.run([x(1), x(1)])
    with pytest.raises(InferenceError, match=r"input 'x': expected rank 2 \(\?, 16\), got shape \(16,\)"):
        session.run([x(1)[0]])
    with pytest.raises(InferenceError, match=r"input 'x': dimension 1 must be 16, got 3"):
        session.run([x(2, width=3)])
    with pytest.raises(InferenceError, match="input 'x': expected a numpy array, got list"):
        session.run([[[0.0] * 16]])  # type: ignore[list-item]
    with pytest.raises(InferenceError, match="input 'x': expected float32, got <U1"):
        session.run([np.full((1, 16), "a")])
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run([x(1)])


def test_non_tensor_outputs_are_left_out_and_non_tensor_inputs_refused(tmp_path: Path) -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    seq = helper.make_node("SequenceConstruct", ["y"], ["s"])
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    s_info = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)

    def save(name: str, outputs: list[onnx.ValueInfoProto], inputs: list[onnx.ValueInfoProto]) -> Path:
        graph = helper.make_graph([relu, seq], name, inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        return tmp_path / f"{name}.onnx"

    session = open_cpu(save("both", [y_info, s_info], [x_info]))
    assert [o.name for o in session.outputs] == ["y"]
    assert session.run([np.array([[-1.0, 2.0]], np.float32)])[0].tolist() == [[0.0, 2.0]]
    with pytest.raises(ModelFileError, match="no output edgekernel can pass"):
        open_cpu(save("onlyseq", [s_info], [x_info]))
    text = helper.make_tensor_value_info("t", TensorProto.STRING, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["t"], ["u"])],
        "text",
        [text],
        [helper.make_tensor_value_info("u", TensorProto.STRING, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "text.onnx"))
    with pytest.raises(ModelFileError, match=r"input 't' has type tensor\(string\)"):
        open_cpu(tmp_path / "text.onnx")


def test_float64_input_is_cast(mlp_file: Path) -> None:
    data = x(2)
    out = open_cpu(mlp_file).run([data.astype(np.float64)])[0]
    np.testing.assert_allclose(out, mf.mlp()(data), rtol=1e-5, atol=1e-5)


def open_error(path: Path) -> ModelFileError | None:
    """Only ModelFileError may escape: anything else fails the test."""
    try:
        RT.open(path).close()
    except ModelFileError as err:
        return err
    return None


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=10_000), flips=st.binary(max_size=8)
)
def test_arbitrary_bytes_only_ever_raise_model_file_error(data: bytes, cut: int, flips: bytes) -> None:
    valid = MLP_BYTES[: cut % len(MLP_BYTES)]
    damaged = bytearray(MLP_BYTES)
    for i, byte in enumerate(flips):
        damaged[(cut + i * 97) % len(damaged)] = byte
    with tempfile.TemporaryDirectory() as folder:
        for content in (data, valid, bytes(damaged)):
            path = Path(folder) / "model.onnx"
            path.write_bytes(content)
            error = open_error(path)
            assert error is None or error.model == str(path)
