"""quantize_onnx: static (npy, npz, callable; QDQ and QOperator) and dynamic quantization make smaller
models whose outputs stay close; every way of asking wrongly gets a clear QuantizationError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekernel.device.models import quantize as quantize_module
from edgekernel.device.models.inspect import inspect_model
from edgekernel.device.models.onnx_runtime import OnnxRuntime
from edgekernel.device.models.quantize import QuantizationError, quantize_onnx
from edgekernel.device.models.runtime import ModelFileError
from tests.unit import model_factory as mf

SIZES = (32, 256, 16)
NET = mf.mlp(sizes=SIZES)
RNG = np.random.default_rng(5)
SAMPLES = RNG.normal(size=(256, 32)).astype(np.float32)  # the distribution inputs come from


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def model(folder: Path) -> Path:
    return mf.mlp_onnx(folder / "mlp.onnx", NET)


@pytest.fixture(scope="module")
def npy(folder: Path) -> Path:
    np.save(folder / "cal.npy", SAMPLES)
    return folder / "cal.npy"


def assert_close(path: Path) -> None:
    """Outputs within a few percent of the float model's range, on inputs like the calibration set."""
    data = SAMPLES[:20]
    (out,) = OnnxRuntime().open(path).run([data])
    expected = NET(data)
    assert np.abs(out - expected).max() <= 0.05 * np.ptp(expected)


@pytest.mark.parametrize(("fmt", "per_channel"), [("qdq", True), ("qdq", False), ("qoperator", True)])
def test_static_quantization_from_npy(
    folder: Path, model: Path, npy: Path, fmt: str, per_channel: bool
) -> None:
    out = folder / f"static-{fmt}-{per_channel}.onnx"
    report = quantize_onnx(model, out, calibration=npy, format=fmt, per_channel=per_channel)  # type: ignore[arg-type]
    assert report.output == out
    assert (report.mode, report.format, report.per_channel) == ("static", fmt, per_channel)
    assert report.calibration_batches == 256 // 16
    assert report.output_bytes == out.stat().st_size
    assert report.ratio < 0.5
    assert report.preprocessed
    assert_close(out)
    assert inspect_model(out).quantized


def test_static_quantization_from_npz_and_stacked_batches(folder: Path) -> None:
    path, w = mf.two_input_onnx(folder / "two.onnx")
    a, b = RNG.normal(size=(2, 10, 4, 16)).astype(np.float32)  # 10 runs of 4 samples per input
    np.savez(folder / "two.npz", a=a, b=b)
    out = quantize_onnx(path, folder / "two-q.onnx", calibration=folder / "two.npz")
    assert out.calibration_batches == 10
    feeds = [a[0], b[0]]
    (got,) = OnnxRuntime().open(out.output).run(feeds)
    expected = (feeds[0] + feeds[1]) @ w
    assert np.abs(got - expected).max() <= 0.05 * np.ptp(expected)


def test_static_quantization_from_a_callable(folder: Path, model: Path) -> None:
    def batches() -> Iterator[dict[str, Any]]:
        for start in range(0, 256, 32):
            yield {"x": SAMPLES[start : start + 32]}

    report = quantize_onnx(model, folder / "callable.onnx", calibration=batches)
    assert report.calibration_batches == 8
    assert_close(report.output)


def test_dynamic_quantization_needs_no_data(folder: Path, model: Path) -> None:
    report = quantize_onnx(model, folder / "dynamic.onnx", mode="dynamic", format="qdq")
    assert (report.mode, report.format, report.calibration_batches) == ("dynamic", "qoperator", 0)
    assert any("QOperator" in note for note in report.notes)
    assert report.ratio < 0.5
    assert_close(report.output)
    assert inspect_model(report.output).quantization == ("dynamic",)


def test_failed_preprocessing_quantizes_the_model_as_it_is(
    folder: Path, model: Path, npy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = quantize_module._import

    def broken(name: str) -> Any:
        module = real(name)
        if name == "onnxruntime.quantization":

            def fail(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError("shape inference exploded")

            monkeypatch.setattr(module.shape_inference, "quant_pre_process", fail)
        return module

    monkeypatch.setattr(quantize_module, "_import", broken)
    report = quantize_onnx(model, folder / "nopre.onnx", calibration=npy)
    assert not report.preprocessed
    assert "shape inference exploded" in report.notes[0]
    assert_close(report.output)


# --- asked wrongly ------------------------------------------------------------------------------


def test_static_without_calibration_says_a_calibration_set_is_needed(folder: Path, model: Path) -> None:
    with pytest.raises(QuantizationError, match=r"needs a calibration set: pass --calibration FILE\.npy"):
        quantize_onnx(model, folder / "x.onnx")
    assert not (folder / "x.onnx").exists()


def test_tflite_files_are_refused_with_the_converter_named(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(40))
    with pytest.raises(QuantizationError, match=r"quantized when they are converted.*TFLiteConverter"):
        quantize_onnx(path, tmp_path / "out.tflite", mode="dynamic")


def test_already_quantized_models_are_refused(folder: Path) -> None:
    path, _ = mf.qlinear_onnx(folder / "q.onnx")
    with pytest.raises(QuantizationError, match=r"already quantized \(qoperator\)"):
        quantize_onnx(path, folder / "qq.onnx", mode="dynamic")


def test_calibration_problems_name_the_input(folder: Path, model: Path) -> None:
    two, _ = mf.two_input_onnx(folder / "two-bad.onnx")
    np.save(folder / "one.npy", SAMPLES[:, :16])
    with pytest.raises(QuantizationError, match=r"one array but the model has 2 inputs \(a, b\)"):
        quantize_onnx(two, folder / "o.onnx", calibration=folder / "one.npy")
    np.savez(folder / "only-a.npz", a=SAMPLES[:, :16])
    with pytest.raises(QuantizationError, match=r"no array for input\(s\) b \(it has a\)"):
        quantize_onnx(two, folder / "o.onnx", calibration=folder / "only-a.npz")
    np.save(folder / "wide.npy", SAMPLES[:, :20])
    with pytest.raises(QuantizationError, match="calibration input 'x' has shape"):
        quantize_onnx(model, folder / "o.onnx", calibration=folder / "wide.npy")
    np.save(folder / "flat.npy", SAMPLES[0])
    with pytest.raises(QuantizationError, match=r"calibration array 'x'.*has shape"):
        quantize_onnx(model, folder / "o.onnx", calibration=folder / "flat.npy")
    (folder / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(QuantizationError, match="cannot read calibration file"):
        quantize_onnx(model, folder / "o.onnx", calibration=folder / "broken.npy")
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        quantize_onnx(model, folder / "o.onnx", calibration=lambda: iter([]))


def test_bad_model_file_is_a_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\xff" * 50)
    with pytest.raises(ModelFileError) as caught:
        quantize_onnx(path, tmp_path / "out.onnx", mode="dynamic")
    assert caught.value.model == str(path)
