"""inspect_model on ONNX (float, float16, QDQ, QOperator, dynamic) and TFLite (float, int8, custom op)
files, the registry that picks a runtime for a file, and bad files."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekernel.device.models.inspect import ModelReport, inspect_model
from edgekernel.device.models.litert_runtime import LiteRtRuntime
from edgekernel.device.models.onnx_runtime import OnnxRuntime
from edgekernel.device.models.quantize import quantize_onnx
from edgekernel.device.models.registry import available_devices, runtime_for, runtime_for_file
from edgekernel.device.models.runtime import ModelFileError, RuntimeUnavailableError
from tests.unit import model_factory as mf

MODELS = Path(__file__).resolve().parents[2] / "models"
needs_litert = pytest.mark.skipif(
    not LiteRtRuntime().available(), reason="LiteRT (ai-edge-litert) is not installed"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect")


def test_float_onnx_model(folder: Path) -> None:
    path = mf.mlp_onnx(folder / "mlp.onnx")
    report = inspect_model(path)
    assert report.format == "onnx"
    assert report.size == path.stat().st_size
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(t.name, t.shape, t.dtype) for t in report.inputs] == [("x", (None, 16), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in report.outputs] == [("y", (None, 8), "float32")]
    assert report.ops == (("MatMul", 2), ("Add", 1), ("Relu", 1))
    assert report.parameters == 16 * 64 + 64 + 64 * 8
    assert report.parameter_dtypes == (("float32", report.parameters),)
    assert (report.quantized, report.quantization) == (False, ())
    assert report.producer == "model_factory"
    assert report.opsets == (("ai.onnx", 17),)
    assert report.ir_version == 9
    assert report.subgraphs == 1


def test_float16_onnx_model(folder: Path) -> None:
    report = inspect_model(mf.mlp_onnx(folder / "half.onnx", float16=True))
    assert report.inputs[0].dtype == "float16"
    assert report.parameter_dtypes == (("float16", 16 * 64 + 64 + 64 * 8),)


@pytest.mark.parametrize(("mode", "fmt", "style"), [("static", "qdq", "qdq"), ("dynamic", "qdq", "dynamic")])
def test_quantized_onnx_models_say_how(folder: Path, mode: str, fmt: str, style: str) -> None:
    src = mf.mlp_onnx(folder / f"src-{mode}.onnx")
    calibration = folder / "cal.npy"
    np.save(calibration, np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32))
    out = quantize_onnx(src, folder / f"{mode}.onnx", mode=mode, calibration=calibration, format=fmt).output  # type: ignore[arg-type]
    report = inspect_model(out)
    assert report.quantized
    assert style in report.quantization
    assert dict(report.parameter_dtypes).get("int8", 0) >= 16 * 64
    assert report.quantized_tensors > 0
    assert report.inputs[0].dtype == "float32"  # QDQ and dynamic models take floats


def test_qoperator_model_with_uint8_io(folder: Path) -> None:
    path, params = mf.qlinear_onnx(folder / "qlinear.onnx")
    report = inspect_model(path)
    assert report.quantization == ("qoperator",)
    q = report.inputs[0].quantization
    assert q is not None
    assert q.scale == pytest.approx((params["x_scale"],))
    assert q.zero_point == (params["x_zero"],)
    out = report.outputs[0].quantization
    assert out is not None
    assert out.zero_point == (params["y_zero"],)


def test_report_is_json_serializable(folder: Path) -> None:
    path, _ = mf.qlinear_onnx(folder / "qlinear-json.onnx")
    data = json.loads(json.dumps(inspect_model(path).to_json()))
    assert data["format"] == "onnx"
    assert data["quantized"] is True
    assert data["inputs"][0]["quantization"]["zero_point"] == [128]
    assert data["ops"] == {"QLinearMatMul": 1}


@needs_litert
def test_tflite_int8_model(folder: Path) -> None:
    report = inspect_model(mf.dense_tflite(folder / "int8.tflite", int8=True))
    assert report.format == "tflite"
    assert "full-integer" in report.quantization
    assert "integer-io" in report.quantization
    (x,) = report.inputs
    assert (x.name, x.shape, x.dtype) == ("x", (None, 4), "int8")
    assert x.quantization is not None
    assert x.quantization.scale == pytest.approx((0.05,))
    assert report.ops == (("FULLY_CONNECTED", 1),)
    assert report.parameters == 3 * 4 + 3
    assert dict(report.parameter_dtypes) == {"int8": 12, "int32": 3}
    assert report.quantized_tensors == 4
    assert report.subgraphs == 1
    json.dumps(report.to_json())


@needs_litert
def test_tflite_float_model(folder: Path) -> None:
    report = inspect_model(mf.dense_tflite(folder / "float.tflite", dynamic_batch=False))
    assert not report.quantized
    assert report.inputs[0].shape == (1, 4)
    assert report.parameter_dtypes == (("float32", 15),)


@needs_litert
def test_tflite_model_with_a_custom_op_can_be_inspected(folder: Path) -> None:
    report = inspect_model(mf.dense_tflite(folder / "edgetpu.tflite", custom_op="edgetpu-custom-op"))
    assert report.ops == (("edgetpu-custom-op", 1),)


# --- which runtime for which file ---------------------------------------------------------------


def test_runtime_for_names() -> None:
    assert isinstance(runtime_for("onnx"), OnnxRuntime)
    assert isinstance(runtime_for("ONNXRuntime"), OnnxRuntime)
    assert isinstance(runtime_for("litert"), LiteRtRuntime)
    assert isinstance(runtime_for("tflite"), LiteRtRuntime)
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'tensorflow'; known: onnx, litert"):
        runtime_for("tensorflow")


def test_runtime_for_file_by_bytes_then_extension(folder: Path) -> None:
    onnx_bytes = mf.mlp_onnx(folder / "r.onnx").read_bytes()
    tflite_bytes = b"\x1c\x00\x00\x00TFL3" + bytes(40)
    cases = {"a.onnx": onnx_bytes, "b.model": onnx_bytes, "c.tflite": tflite_bytes, "d.bin": tflite_bytes}
    for name, content in cases.items():
        (folder / name).write_bytes(content)
    assert runtime_for_file(folder / "a.onnx").name == "onnx"
    assert runtime_for_file(folder / "b.model").name == "onnx"  # protobuf field 1 (ir_version) first
    assert runtime_for_file(folder / "c.tflite").name == "litert"
    assert runtime_for_file(folder / "d.bin").name == "litert"  # TFL3 at offset 4
    (folder / "e.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="neither an ONNX nor a TFLite model"):
        runtime_for_file(folder / "e.txt")
    with pytest.raises(ModelFileError, match="no such file"):
        runtime_for_file(folder / "nope.onnx")


def test_available_devices() -> None:
    devices = available_devices()
    assert devices["onnx"][-1] == "cpu"
    if LiteRtRuntime().available():
        assert devices["litert"][-1] == "cpu"


# --- bad files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.onnx", b""),
        ("garbage.onnx", b"\xff\xfe not protobuf" * 10),
        ("nograph.onnx", b"\x08\x09"),  # ir_version 9 and nothing else
        ("garbage.tflite", b"\x00\x00\x00\x00TFL3" + b"\xff" * 40),
        ("text.bin", b"hello"),
    ],
)
def test_bad_files_raise_model_file_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as caught:
        inspect_model(path)
    assert caught.value.model == str(path)


def inspect_error(path: Path) -> ModelFileError | None:
    """Only ModelFileError may escape (or a report): anything else fails the test."""
    try:
        report = inspect_model(path)
    except ModelFileError as err:
        return err
    assert isinstance(report, ModelReport)
    json.dumps(report.to_json())
    return None


def _valid_files() -> list[bytes]:
    with tempfile.TemporaryDirectory() as folder:
        files = [mf.mlp_onnx(Path(folder) / "a.onnx"), mf.qlinear_onnx(Path(folder) / "b.onnx")[0]]
        if LiteRtRuntime().available():
            files.append(mf.dense_tflite(Path(folder) / "c.tflite", int8=True))
        return [path.read_bytes() for path in files]


VALID = _valid_files()


def damage(content: bytes, cut: int, flips: bytes) -> bytes:
    damaged = bytearray(content[: max(8, cut % (len(content) + 1))])
    for i, byte in enumerate(flips):
        damaged[(cut + i * 61) % len(damaged)] = byte
    return bytes(damaged)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=300),
    prefix=st.sampled_from([b"", b"\x08", b"\x00\x00\x00\x00TFL3"]),
    cut=st.integers(0, 10_000),
    flips=st.binary(max_size=6),
)
def test_arbitrary_bytes_give_a_report_or_model_file_error(
    data: bytes, prefix: bytes, cut: int, flips: bytes
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        contents = [prefix + data] + [damage(valid, cut, flips) for valid in VALID]
        for index, content in enumerate(contents):
            path = Path(folder) / f"model{index}.bin"
            path.write_bytes(content)
            error = inspect_error(path)
            assert error is None or error.model == str(path)


# --- the project's own models (tools/build_models.py) -------------------------------------------


def test_project_models_show_their_quantization() -> None:
    manifest = MODELS / "manifest.json"
    if not manifest.exists():
        pytest.skip("models/manifest.json does not exist yet (tools/build_models.py writes it)")
    for entry in json.loads(manifest.read_text())["models"]:
        if entry["format"] == "litert" and not LiteRtRuntime().available():
            continue
        report = inspect_model(MODELS / entry["file"])
        assert report.sha256 == entry["sha256"], entry["file"]
        assert [t.name for t in report.inputs] == [t["name"] for t in entry["inputs"]], entry["file"]
        if entry["precision"] == "fp32":
            assert not report.quantized, entry["file"]
        elif entry["format"] == "onnx":
            assert "qdq" in report.quantization, entry["file"]
        else:
            assert {"full-integer", "integer-io"} <= set(report.quantization), entry["file"]
            assert report.inputs[0].dtype == "int8", entry["file"]
            assert "int8" in dict(report.parameter_dtypes), entry["file"]
