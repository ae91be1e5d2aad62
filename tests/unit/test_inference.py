"""The kernel's inference subsystem on the project's real models: manager + scheduler + executor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from edgekernel.config.kernel import KernelConfig, ModelSpec, SchedulerConfig
from edgekernel.device.datasets import split
from edgekernel.device.inference import Inference, ManagerExecutor, thread_budget
from edgekernel.device.models import runtime_for
from edgekernel.device.models.runtime import ModelFileError

MODELS = Path(__file__).resolve().parents[2] / "models"
MANIFEST = {m["file"]: m for m in json.loads((MODELS / "manifest.json").read_text())["models"]}


def spec(file: str, name: str, **extra: object) -> ModelSpec:
    entry = MANIFEST[file]
    runtime = "litert" if entry["format"] == "litert" else "onnx"
    fields: dict[str, object] = {
        "name": name,
        "file": MODELS / file,
        "sha256": entry["sha256"],
        "runtime": runtime,
        "memory_mb": 8,
        "max_batch": 16,
        **extra,
    }
    return ModelSpec.model_validate(fields)


def config(*specs: ModelSpec, **scheduler: object) -> KernelConfig:
    return KernelConfig(models=list(specs), scheduler=SchedulerConfig.model_validate(scheduler), threads=2)


def test_infer_gives_the_same_answers_as_the_runtime_alone() -> None:
    x, y = split("vibration", "test", n=64)
    inference = Inference(config(spec("vibration_cnn.int8.onnx", "vib")))
    inference.start()
    try:

        async def all_at_once() -> list[np.ndarray]:
            results = await asyncio.gather(
                *(inference.scheduler.infer("a", "vib", [x[i : i + 1]]) for i in range(len(x)))
            )
            return [r[0] for r in results]

        probs = np.concatenate(asyncio.run(all_at_once()))
    finally:
        inference.stop()
    alone = runtime_for("onnx").open(MODELS / "vibration_cnn.int8.onnx")
    [expected] = alone.run([x])
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert np.mean(np.argmax(probs, axis=1) == y) > 0.9
    stats = inference.scheduler.stats()
    assert stats.total.completed == 64
    assert stats.mean_batch > 1.0  # 64 concurrent requests were micro-batched


def test_litert_and_onnx_int8_agree_through_the_kernel() -> None:
    x, _ = split("gesture", "test", n=32)
    inference = Inference(
        config(spec("gesture_cnn.int8.onnx", "onnx-g"), spec("gesture_cnn.int8.tflite", "tflite-g"))
    )
    inference.start()
    try:

        async def both() -> tuple[np.ndarray, np.ndarray]:
            [a], [b] = await asyncio.gather(
                inference.scheduler.infer("a", "onnx-g", [x]), inference.scheduler.infer("a", "tflite-g", [x])
            )
            return a, b

        onnx_probs, tflite_probs = asyncio.run(both())
    finally:
        inference.stop()
    assert np.mean(np.argmax(onnx_probs, 1) == np.argmax(tflite_probs, 1)) >= 0.95
    assert np.max(np.abs(onnx_probs - tflite_probs)) < 0.1  # within int8 quantization error


def test_thread_budget_is_shared_so_sessions_never_oversubscribe() -> None:
    two = config(spec("vibration_cnn.fp32.onnx", "a"), spec("gesture_cnn.fp32.onnx", "b"), workers=2)
    budget = thread_budget(two)
    assert (budget.total, budget.workers, budget.per_session) == (2, 2, 1)
    one = config(spec("vibration_cnn.fp32.onnx", "a"), workers=2)
    assert thread_budget(one).per_session == 2
    four = KernelConfig(models=two.models, threads=8, scheduler=SchedulerConfig(workers=4))
    assert thread_budget(four).per_session == 4  # two models: at most two sessions run at once

    inference = Inference(two)
    inference.start()
    try:
        for name in ("a", "b"):
            with inference.manager.lease(name) as session:
                assert session.options.intra_op_num_threads == budget.per_session  # type: ignore[attr-defined]
                assert session.options.inter_op_num_threads == 1  # type: ignore[attr-defined]
    finally:
        inference.stop()


def test_a_corrupt_model_fails_its_requests_and_the_others_keep_serving(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    data = (MODELS / "vibration_cnn.fp32.onnx").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    bad = spec("vibration_cnn.fp32.onnx", "bad").model_copy(update={"file": broken})
    inference = Inference(config(bad, spec("vibration_cnn.fp32.onnx", "good")))
    inference.start()
    x, _ = split("vibration", "test", n=1)
    try:
        with pytest.raises(ModelFileError, match="sha256"):
            asyncio.run(inference.scheduler.infer("a", "bad", [x]))
        [probs] = asyncio.run(inference.scheduler.infer("a", "good", [x]))
        assert probs.shape == (1, 2)
    finally:
        inference.stop()


def test_executor_batches_only_batch_capable_models() -> None:
    inference = Inference(config(spec("vibration_cnn.fp32.onnx", "vib", max_batch=12)))
    executor = ManagerExecutor(inference.manager)
    assert executor.max_batch("vib") == 1  # no tensor spec and not loaded: unknown, so no batching
    x, _ = split("vibration", "test", n=3)
    outputs = executor.run_batch("vib", [[x[0:1]], [x[1:3]]])
    assert [o[0].shape for o in outputs] == [(1, 2), (2, 2)]
    assert executor.max_batch("vib") == 12
    inference.manager.close()
