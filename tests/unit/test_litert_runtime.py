"""LiteRtRuntime on real .tflite files built here (flatbuffers, no TensorFlow): int8 quantize and
dequantize, batch resizing, sample-by-sample fallback, Edge TPU fallback, bad files; plus the
project's own LiteRT models from models/manifest.json when they exist."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) is not installed")

from edgekernel.device.models import litert_runtime
from edgekernel.device.models.litert_runtime import LiteRtRuntime, LiteRtSession
from edgekernel.device.models.onnx_runtime import OnnxRuntime
from edgekernel.device.models.runtime import InferenceError, ModelFileError, RuntimeUnavailableError
from tests.unit import model_factory as mf

RT = LiteRtRuntime()
RNG = np.random.default_rng(11)
NET = mf.dense()
MODELS = Path(__file__).resolve().parents[2] / "models"


def x(n: int) -> np.ndarray:
    return RNG.normal(size=(n, 4)).astype(np.float32)


def build(tmp_path: Path, name: str = "dense.tflite", **kwargs: Any) -> Path:
    return mf.dense_tflite(tmp_path / name, NET, **kwargs)


def open_(path: Path, **kwargs: Any) -> LiteRtSession:
    return RT.open(path, **kwargs)


def test_float_model_matches_the_reference_at_any_batch(tmp_path: Path) -> None:
    session = open_(build(tmp_path))
    assert (session.runtime, session.device, session.batch_capable) == ("litert", "cpu", True)
    assert [(i.name, i.shape, i.dtype, i.quantization) for i in session.inputs] == [
        ("x", (None, 4), "float32", None)
    ]
    for n in (1, 5, 2, 5):
        data = x(n)
        (out,) = session.run([data])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, NET(data), rtol=1e-5, atol=1e-5)


def test_int8_model_quantizes_inputs_and_dequantizes_outputs(tmp_path: Path) -> None:
    session = open_(build(tmp_path, int8=True))
    (info,) = session.inputs
    assert info.dtype == "int8"
    assert info.quantization is not None
    assert info.quantization.scale == pytest.approx((0.05,))
    assert session.outputs[0].quantization is not None
    assert session.outputs[0].quantization.zero_point == (-100,)
    data = RNG.uniform(-3, 3, size=(8, 4)).astype(np.float32)
    (out,) = session.run([data])
    assert out.dtype == np.float32
    as_fed = info.quantization.dequantize(info.quantization.quantize(data, np.dtype(np.int8)))
    np.testing.assert_allclose(out, NET(as_fed), atol=0.05)  # output step 0.05, per-channel int8 weights
    with pytest.raises(InferenceError, match="input 'x': NaN or infinity"):
        session.run([np.full((1, 4), np.inf, np.float32)])


@pytest.mark.parametrize("int8", [False, True])
def test_batch_one_export_is_resized_when_the_graph_allows(tmp_path: Path, int8: bool) -> None:
    session = open_(build(tmp_path, int8=int8, dynamic_batch=False))
    assert session.batch_capable
    assert session.inputs[0].shape == (None, 4)
    data = x(6)
    tolerance = 0.1 if int8 else 1e-5
    np.testing.assert_allclose(session.run([data])[0], NET(data), atol=tolerance)
    np.testing.assert_allclose(session.run([data[:1]])[0], NET(data[:1]), atol=tolerance)


def test_graph_that_cannot_resize_runs_sample_by_sample(tmp_path: Path) -> None:
    session = open_(build(tmp_path, dynamic_batch=False, fixed_reshape=True))
    assert not session.batch_capable
    assert session.inputs[0].shape == (1, 4)
    data = x(3)
    out = session.run([data])[0]
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out, NET(data), rtol=1e-5, atol=1e-5)


def test_threads_go_to_the_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real: Any = litert_runtime.interpreter_module()
    seen: list[dict[str, Any]] = []

    def interpreter(**kwargs: Any) -> Any:
        seen.append(kwargs)
        return real.Interpreter(**kwargs)

    fake = SimpleNamespace(Interpreter=interpreter, load_delegate=real.load_delegate)
    monkeypatch.setattr(litert_runtime, "interpreter_module", lambda: fake)
    open_(build(tmp_path), threads=3)
    assert seen[0]["num_threads"] == 3
    assert seen[0]["experimental_delegates"] is None


def test_edgetpu_falls_back_to_cpu_when_its_library_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(litert_runtime, "edgetpu_library", lambda: None)
    with caplog.at_level(logging.INFO, logger=litert_runtime.__name__):
        session = open_(build(tmp_path), preferred=("edgetpu", "cpu"))
    assert session.device == "cpu"
    assert "libedgetpu" in caplog.text
    assert RT.devices() == ["cpu"]


def test_edgetpu_delegate_that_fails_to_load_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real: Any = litert_runtime.interpreter_module()

    def load_delegate(library: str) -> Any:
        raise ValueError(f"Failed to load delegate from {library}")

    monkeypatch.setattr(litert_runtime, "edgetpu_library", lambda: "libedgetpu.so.1")
    monkeypatch.setattr(
        litert_runtime,
        "interpreter_module",
        lambda: SimpleNamespace(Interpreter=real.Interpreter, load_delegate=load_delegate),
    )
    with caplog.at_level(logging.INFO, logger=litert_runtime.__name__):
        session = open_(build(tmp_path), preferred=("edgetpu",))
    assert session.device == "cpu"
    assert "did not load" in caplog.text
    assert RT.devices() == ["edgetpu", "cpu"]


def test_missing_litert_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litert_runtime, "interpreter_module", lambda: None)
    assert not RT.available()
    assert RT.devices() == []
    with pytest.raises(RuntimeUnavailableError, match="ai-edge-litert"):
        open_(build(tmp_path))


def test_custom_op_model_without_its_delegate_is_a_model_file_error(tmp_path: Path) -> None:
    path = build(tmp_path, custom_op="edgetpu-custom-op")
    with pytest.raises(ModelFileError, match="edgetpu-custom-op") as caught:
        open_(path)
    assert caught.value.model == str(path)


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated", "onnx", "header-only"])
def test_bad_files_raise_model_file_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    good = build(tmp_path, "good.tflite").read_bytes()
    path = tmp_path / f"{kind}.tflite"
    contents = {
        "empty": b"",
        "garbage": b"\x00" * 4 + b"TFL3" + b"\xff" * 64,
        "truncated": good[: len(good) // 2],
        "onnx": mf.mlp_onnx(tmp_path / "m.onnx").read_bytes(),
        "header-only": good[:8],
    }
    if kind in contents:
        path.write_bytes(contents[kind])
    with pytest.raises(ModelFileError) as caught:
        open_(path)
    assert str(path) in str(caught.value)


def test_wrong_inputs_raise_inference_error_naming_the_input(tmp_path: Path) -> None:
    session = open_(build(tmp_path))
    with pytest.raises(InferenceError, match=r"input 'x': dimension 1 must be 4, got 5"):
        session.run([RNG.normal(size=(2, 5)).astype(np.float32)])
    with pytest.raises(InferenceError, match=r"expected 1 input\(s\) \('x'\), got 0"):
        session.run([])
    with pytest.raises(InferenceError, match="input 'x': expected rank 2"):
        session.run([x(1)[0]])
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run([x(1)])


def _good_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return mf.dense_tflite(Path(folder) / "m.tflite", int8=True).read_bytes()


GOOD = _good_bytes()


def open_error(path: Path) -> ModelFileError | None:
    """Only ModelFileError may escape: anything else fails the test."""
    try:
        RT.open(path).close()
    except ModelFileError as err:
        return err
    return None


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), cut=st.integers(0, 10_000), flips=st.binary(min_size=1, max_size=6))
def test_arbitrary_bytes_only_ever_raise_model_file_error(data: bytes, cut: int, flips: bytes) -> None:
    damaged = bytearray(GOOD)
    for i, byte in enumerate(flips):
        damaged[(cut + i * 89) % len(damaged)] = byte
    with tempfile.TemporaryDirectory() as folder:
        for content in (data, b"\x00\x00\x00\x00TFL3" + data, GOOD[: cut % len(GOOD)], bytes(damaged)):
            path = Path(folder) / "model.tflite"
            path.write_bytes(content)
            error = open_error(path)
            assert error is None or error.model == str(path)


# --- the project's own models (tools/build_models.py) -------------------------------------------


def project_families() -> dict[str, dict[str, dict[str, Any]]]:
    """Manifest entries by family, then by "onnx-fp32" / "onnx-int8" / "litert-int8"."""
    manifest = MODELS / "manifest.json"
    if not manifest.exists():
        pytest.skip("models/manifest.json does not exist yet (tools/build_models.py writes it)")
    families: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in json.loads(manifest.read_text())["models"]:
        families.setdefault(entry["family"], {})[f"{entry['format']}-{entry['precision']}"] = entry
    return families


def test_project_litert_models_agree_with_their_onnx_twins() -> None:
    """Same inputs (the held-out test split), same family: the int8 LiteRT model's probabilities stay
    within quantization error of the fp32 ONNX model's, and the predictions agree."""
    from tools import datasets

    for family, files in project_families().items():
        lite_entry, fp32_entry = files["litert-int8"], files["onnx-fp32"]
        x, _ = datasets.split(lite_entry["dataset"]["name"], "test", n=128)
        lite = RT.open(MODELS / lite_entry["file"])
        assert lite.batch_capable, family
        (info,) = lite.inputs
        assert info.dtype == "int8", family
        assert info.quantization is not None
        assert list(info.quantization.scale) == pytest.approx(
            lite_entry["inputs"][0]["quantization"]["scale"]
        )
        (ours,) = lite.run([x])
        (reference,) = OnnxRuntime().open(MODELS / fp32_entry["file"]).run([x])
        assert ours.shape == reference.shape == (128, len(lite_entry["dataset"]["classes"]))
        out_scale = max(lite.outputs[0].quantization.scale) if lite.outputs[0].quantization else 0.0
        assert np.abs(ours - reference).mean() <= max(8 * out_scale, 0.05), family
        agreement = (ours.argmax(axis=1) == reference.argmax(axis=1)).mean()
        assert agreement >= min(0.9, lite_entry["agreement_with_fp32"] - 0.05), family
