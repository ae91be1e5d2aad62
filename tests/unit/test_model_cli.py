"""`edgekernel model inspect|quantize|bench` through typer's CliRunner, and bench_model itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from edgekernel.cli.model_cmd import app
from edgekernel.device.models import litert_runtime
from edgekernel.device.models.benchmark import BenchRow, bench_model, parse_shape
from edgekernel.device.models.runtime import InferenceError, ModelFileError
from tests.unit import model_factory as mf

FAST = ("--iterations", "3", "--warmup", "1")


def run(*args: str | Path) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def model(folder: Path) -> Path:
    return mf.mlp_onnx(folder / "mlp.onnx", mf.mlp(sizes=(32, 128, 8)))


@pytest.fixture(scope="module")
def tflite(folder: Path) -> Path:
    pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) is not installed")
    return mf.dense_tflite(folder / "dense.tflite", int8=True)


# --- inspect ------------------------------------------------------------------------------------


def test_inspect_prints_tables(model: Path) -> None:
    result = run("inspect", model)
    assert result.exit_code == 0, result.output
    for text in ("format", "onnx", "(?, 32)", "float32", "MatMul", "ai.onnx 17", "model_factory"):
        assert text in result.stdout


def test_inspect_json(tflite: Path) -> None:
    result = run("inspect", tflite, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == "tflite"
    assert data["inputs"][0]["dtype"] == "int8"
    assert data["quantization"] == ["full-integer", "integer-io"]


def test_inspect_bad_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 30)
    result = run("inspect", bad)
    assert result.exit_code == 1
    assert "error:" in result.stderr
    assert "not an ONNX model" in result.stderr
    assert run("inspect", tmp_path / "missing.onnx").exit_code == 2


def test_inspect_tflite_without_litert_exits_4(tflite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgekernel.device.models.inspect.interpreter_module", lambda: None)
    result = run("inspect", tflite)
    assert result.exit_code == 4
    assert "ai-edge-litert" in result.stderr


# --- quantize -----------------------------------------------------------------------------------


def test_quantize_static_and_dynamic(folder: Path, model: Path) -> None:
    calibration = folder / "cal.npz"
    np.savez(calibration, x=np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32))
    out = folder / "static.onnx"
    result = run(
        "quantize", model, "-o", out, "--calibration", calibration, "--per-tensor", "--format", "qoperator"
    )
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "static, qoperator, per-tensor, 4 calibration batches" in result.stdout
    result = run("quantize", model, "-o", folder / "dynamic.onnx", "--mode", "dynamic", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["mode"], data["format"]) == ("dynamic", "qoperator")
    assert data["output_bytes"] < data["source_bytes"]


def test_quantize_refusals(folder: Path, model: Path, tflite: Path) -> None:
    result = run("quantize", model, "-o", folder / "x.onnx")
    assert result.exit_code == 1
    assert "needs a calibration set" in result.stderr
    result = run("quantize", tflite, "-o", folder / "x.tflite", "--mode", "dynamic")
    assert result.exit_code == 1
    assert "quantized when they are converted" in result.stderr
    assert run("quantize", model, "-o", folder / "x.onnx", "--mode", "fast").exit_code == 2
    assert run("quantize", model).exit_code == 2  # -o is required


# --- bench --------------------------------------------------------------------------------------


def test_bench_json_has_a_row_per_device_and_batch(model: Path) -> None:
    result = run(
        "bench", model, "--device", "cpu", "--device", "cuda", "--batch", "1", "--batch", "4", *FAST, "--json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["requested"], r["batch"]) for r in rows] == [("cpu", 1), ("cpu", 4), ("cuda", 1), ("cuda", 4)]
    for row in rows:
        assert row["device"] == "CPUExecutionProvider"
        assert row["runtime"] == "onnx"
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"]
        assert row["throughput"] == pytest.approx(row["batch"] * 1000 / row["mean_ms"], rel=0.01)


def test_bench_table_marks_fallbacks(model: Path) -> None:
    result = run("bench", model, "--device", "cuda", *FAST)
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider (fallback)" in result.stdout
    assert "samples/s" in result.stdout


def test_bench_litert_all_devices(tflite: Path) -> None:
    result = run("bench", tflite, "--device", "all", "--batch", "2", *FAST, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["runtime"], row["device"], row["batch"]) == ("litert", "cpu", 2)


def test_bench_dynamic_dimensions_need_a_shape(folder: Path) -> None:
    path, _ = mf.matmul_onnx(folder / "seq.onnx", ["batch", "seq", 4])
    result = run("bench", path, *FAST)
    assert result.exit_code == 1
    assert "--shape x=1,1,4" in result.stderr
    result = run("bench", path, "--shape", "x=1,10,4", "--batch", "2", *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["batch"] == 2
    assert run("bench", path, "--shape", "x=1,ten,4").exit_code == 2
    assert run("bench", path, "--shape", "1,10,4").exit_code == 2


def test_bench_fixed_batch_model_refuses_other_batches(folder: Path) -> None:
    path = mf.mlp_onnx(folder / "fixed.onnx", batch=2)
    result = run("bench", path, "--batch", "8", *FAST)
    assert result.exit_code == 1
    assert "fixed batch of 2" in result.stderr
    result = run("bench", path, *FAST, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)[0]["batch"] == 2


def test_bench_without_litert_exits_4(tflite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litert_runtime, "interpreter_module", lambda: None)
    result = run("bench", tflite, *FAST)
    assert result.exit_code == 4


# --- bench_model --------------------------------------------------------------------------------


def test_bench_model_rows_are_json_ready(model: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    rows = bench_model(
        model,
        batch_sizes=[1, 2, 2, 8],
        warmup=2,
        iterations=4,
        threads=2,
        cache_dir=tmp_path,
        progress=seen.append,
    )
    assert [row.batch for row in rows] == [1, 2, 8]
    assert sum(seen) == 3 * (2 + 4)
    assert all(isinstance(row, BenchRow) and row.threads == 2 for row in rows)
    assert json.loads(json.dumps([row.to_json() for row in rows]))[2]["batch"] == 8
    assert list(tmp_path.glob("*.onnx"))  # the graph cache was used


def test_bench_model_errors(model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="iterations"):
        bench_model(model, iterations=0)
    with pytest.raises(InferenceError, match="rank 3 given"):
        bench_model(model, shapes={"x": (1, 2, 3)}, iterations=1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(ModelFileError):
        bench_model(bad, iterations=1)


def test_parse_shape() -> None:
    assert parse_shape("input=1,128,1") == ("input", (1, 128, 1))
    assert parse_shape("a=b=4") == ("a=b", (4,))
    for text in ("x", "=1", "x=", "x=1,,2", "x=0,1"):
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            parse_shape(text)
