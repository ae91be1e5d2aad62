"""The models the project builds itself (models/, from tools/build_models.py) and their datasets.

Every manifest entry is checked against its file (sha256, size, tensors) and re-measured on the
held-out test split with ONNX Runtime or the LiteRT interpreter: accuracy within half a point of the
manifest and above a floor, int8 predictions agreeing with fp32, ONNX batch sizes 1 and 32.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from tools import datasets
from tools.datasets import gesture_windows, split, vibration_windows

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
MANIFEST: dict[str, Any] = json.loads((MODELS / "manifest.json").read_text(encoding="utf-8"))
ENTRIES: list[dict[str, Any]] = MANIFEST["models"]
MAX_BYTES = 1_000_000
ACCURACY_FLOOR = 0.90
ACCURACY_TOLERANCE = 0.005
AGREEMENT_FLOOR = 0.97


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["file"] for e in entries]


ONNX = [e for e in ENTRIES if e["format"] == "onnx"]
LITERT = [e for e in ENTRIES if e["format"] == "litert"]
INT8 = [e for e in ENTRIES if e["precision"] == "int8"]


@functools.cache
def _test_split(dataset: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    return split(dataset, "test")


@functools.cache
def _onnx_session(file: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / file), options, providers=["CPUExecutionProvider"])


def _onnx_probs(file: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    session = _onnx_session(file)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(out)


def _litert_probs(file: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Run as the kernel does: quantize the float input, dequantize the int8 output."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(MODELS / file), num_threads=1)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    scale, zero = inp["quantization"]
    limits = np.iinfo(inp["dtype"])
    q = np.clip(np.round(x / scale) + zero, limits.min, limits.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    scale, zero = out["quantization"]
    return (interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * np.float32(scale)


@functools.cache
def _predictions(file: str) -> npt.NDArray[np.int64]:
    entry = next(e for e in ENTRIES if e["file"] == file)
    x, _ = _test_split(entry["dataset"]["name"])
    run = _onnx_probs if entry["format"] == "onnx" else _litert_probs
    return np.asarray(run(file, x).argmax(axis=1))


def _fp32_of(entry: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in ONNX if e["family"] == entry["family"] and e["precision"] == "fp32")


# ------------------------------------------------------------------------------------ manifest


def test_manifest_lists_every_model_file_and_three_per_family() -> None:
    on_disk = {p.name for p in MODELS.iterdir() if p.suffix in {".onnx", ".tflite"}}
    assert on_disk == {e["file"] for e in ENTRIES}
    families = {e["family"] for e in ENTRIES}
    assert families == {"vibration_cnn", "gesture_cnn"}
    for family in families:
        kinds = {(e["format"], e["precision"]) for e in ENTRIES if e["family"] == family}
        assert kinds == {("onnx", "fp32"), ("onnx", "int8"), ("litert", "int8")}


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_file_matches_manifest(entry: dict[str, Any]) -> None:
    path = MODELS / entry["file"]
    data = path.read_bytes()
    assert len(data) == entry["size_bytes"]
    assert len(data) < MAX_BYTES
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_dataset_in_manifest_is_the_one_the_package_generates(entry: dict[str, Any]) -> None:
    """A changed generator or split makes the recorded accuracies stale: rebuild the models."""
    recorded = entry["dataset"]
    info = datasets.DATASETS[recorded["name"]]
    assert recorded["seeds"] == datasets.SPLIT_SEEDS
    assert recorded["sizes"] == datasets.SPLIT_SIZES
    assert recorded["classes"] == list(info.classes)
    assert (recorded["window"], recorded["channels"]) == (info.window, info.channels)
    x, y = _test_split(info.name)
    checksum = recorded["test_checksum"]
    assert np.bincount(y).tolist() == checksum["label_counts"]
    assert float(np.abs(x.astype(np.float64)).sum()) == pytest.approx(checksum["sum_abs"], rel=1e-6)


# ------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids(ENTRIES))
def test_accuracy_on_held_out_split(entry: dict[str, Any]) -> None:
    _, y = _test_split(entry["dataset"]["name"])
    accuracy = float((_predictions(entry["file"]) == y).mean())
    assert entry["n"] == len(y)
    assert accuracy >= ACCURACY_FLOOR
    assert accuracy == pytest.approx(entry["accuracy"], abs=ACCURACY_TOLERANCE)


@pytest.mark.parametrize("entry", INT8, ids=_ids(INT8))
def test_int8_agrees_with_fp32(entry: dict[str, Any]) -> None:
    agreement = float((_predictions(entry["file"]) == _predictions(_fp32_of(entry)["file"])).mean())
    assert agreement >= AGREEMENT_FLOOR
    assert agreement == pytest.approx(entry["agreement_with_fp32"], abs=ACCURACY_TOLERANCE)


# ------------------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("entry", ONNX, ids=_ids(ONNX))
def test_onnx_tensors_opset_and_batch_axis(entry: dict[str, Any]) -> None:
    model = onnx.load(str(MODELS / entry["file"]))
    assert {o.domain: o.version for o in model.opset_import}[""] == entry["opset"] >= 13
    (graph_input,) = model.graph.input
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    session = _onnx_session(entry["file"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    (want_in,), (want_out,) = entry["inputs"], entry["outputs"]
    assert (inp.name, inp.type, want_in["dtype"]) == (want_in["name"], "tensor(float)", "float32")
    assert (out.name, out.type, want_out["dtype"]) == (want_out["name"], "tensor(float)", "float32")
    assert [None if isinstance(d, str) else d for d in inp.shape] == want_in["shape"]
    assert [None if isinstance(d, str) else d for d in out.shape] == want_out["shape"]


@pytest.mark.parametrize("entry", ONNX, ids=_ids(ONNX))
def test_onnx_accepts_batch_1_and_32(entry: dict[str, Any]) -> None:
    x, _ = _test_split(entry["dataset"]["name"])
    classes = len(entry["dataset"]["classes"])
    batch = _onnx_probs(entry["file"], x[:32])
    single = _onnx_probs(entry["file"], x[:1])
    assert batch.shape == (32, classes)
    assert single.shape == (1, classes)
    np.testing.assert_allclose(single[0], batch[0], atol=1e-5)
    # Softmax probabilities; the int8 graph quantizes them too (a step of 1/255).
    step = 1e-4 if entry["precision"] == "fp32" else 3 / 255
    np.testing.assert_allclose(batch.sum(axis=1), 1.0, atol=step)


@pytest.mark.parametrize("entry", LITERT, ids=_ids(LITERT))
def test_litert_is_full_integer_with_the_manifest_quantization(entry: dict[str, Any]) -> None:
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(MODELS / entry["file"]))
    details = (interpreter.get_input_details(), interpreter.get_output_details())
    for (actual,), (want,) in zip(details, (entry["inputs"], entry["outputs"]), strict=True):
        assert actual["name"] == want["name"]
        assert np.dtype(actual["dtype"]).name == want["dtype"] == "int8"
        assert [None if d < 0 else int(d) for d in actual["shape_signature"]] == want["shape"]
        scale, zero = actual["quantization"]
        assert [scale] == pytest.approx(want["quantization"]["scale"])
        assert [zero] == want["quantization"]["zero_point"]
    signature = interpreter.get_signature_list()["serving_default"]
    assert signature == {"inputs": ["signal"], "outputs": ["probs"]}
    x, _ = _test_split(entry["dataset"]["name"])
    assert _litert_probs(entry["file"], x[:32]).shape == (32, len(entry["dataset"]["classes"]))


# ------------------------------------------------------------------------------------ datasets


@pytest.mark.parametrize("make", [vibration_windows, gesture_windows])
def test_same_seed_same_arrays_other_seed_other_arrays(make: Any) -> None:
    x1, y1 = make(64, seed=5)
    x2, y2 = make(64, seed=5)
    x3, y3 = make(64, seed=6)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, y3)
    assert x1.dtype == np.float32
    assert y1.dtype == np.int64
    assert np.isfinite(x1).all()


def test_vibration_shapes_and_balanced_labels() -> None:
    x, y = vibration_windows(100, seed=1)
    assert x.shape == (100, 128, 1)
    assert np.bincount(y).tolist() == [50, 50]
    x, y = vibration_windows(40, seed=1, window=256, channels=3, anomaly_fraction=0.25)
    assert x.shape == (40, 256, 3)
    assert np.bincount(y).tolist() == [30, 10]
    assert not np.array_equal(x[:, :, 0], x[:, :, 1])  # each channel its own gain and noise


def test_gesture_shapes_and_balanced_labels() -> None:
    x, y = gesture_windows(103, seed=1)
    assert x.shape == (103, 64, 3)
    assert np.bincount(y).tolist() == [21, 21, 21, 20, 20]


def test_gesture_ground_truth_is_physical() -> None:
    """Gravity is about 1 g at rest; idle windows barely move, shakes move a lot."""
    x, y = gesture_windows(500, seed=3)
    magnitude = np.linalg.norm(x, axis=2)
    assert np.median(magnitude[y == 0]) == pytest.approx(1.0, abs=0.1)
    movement = x.std(axis=1).sum(axis=1)
    assert np.percentile(movement[y == 0], 95) < np.percentile(movement[y == 1], 5)


def test_splits_never_share_a_window() -> None:
    seen: dict[bytes, str] = {}
    for part in ("train", "calibration", "test"):
        x, _ = split("vibration", part, n=300)
        for row in x:
            assert seen.setdefault(row.tobytes(), part) == part


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: vibration_windows(-1, seed=0), "n must be"),
        (lambda: vibration_windows(4, seed=0, window=4), "window must be"),
        (lambda: vibration_windows(4, seed=0, channels=0), "channels must be"),
        (lambda: vibration_windows(4, seed=0, anomaly_fraction=1.5), "anomaly_fraction"),
        (lambda: gesture_windows(4, seed=0, window=2), "window must be"),
        (lambda: split("audio", "test"), "unknown dataset 'audio'"),
        (lambda: split("vibration", "validation"), "unknown split 'validation'"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_refused(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
