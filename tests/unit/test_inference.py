"""The kernel's inference subsystem on the project's real models: manager + scheduler + executor."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekernel.config.kernel import KernelConfig, ModelSpec, SchedulerConfig
from edgekernel.device.inference import Inference, ManagerExecutor, thread_budget
from edgekernel.device.models import file_sha256, runtime_for
from edgekernel.device.models.runtime import ModelError, ModelFileError
from tests.waiting import wait_until_async
from tools.datasets import split

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
    inference.start(preload=False)  # corrupted after start: found when first used
    x, _ = split("vibration", "test", n=1)
    try:
        with pytest.raises(ModelFileError, match="sha256"):
            asyncio.run(inference.scheduler.infer("a", "bad", [x]))
        [probs] = asyncio.run(inference.scheduler.infer("a", "good", [x]))
        assert probs.shape == (1, 2)
    finally:
        inference.stop()


@pytest.mark.parametrize("pinned", [True, False])
def test_start_refuses_a_model_file_that_can_never_serve(tmp_path: Path, pinned: bool) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not the model")
    bad = spec("vibration_cnn.fp32.onnx", "bad", pinned=pinned).model_copy(update={"file": broken})
    inference = Inference(config(bad, spec("vibration_cnn.fp32.onnx", "good")))
    with pytest.raises(ModelFileError, match="sha256"):
        inference.start()
    assert inference.manager.stats().loaded == ()  # stopped again: nothing left loaded


def test_executor_batches_only_batch_capable_models() -> None:
    inference = Inference(config(spec("vibration_cnn.fp32.onnx", "vib", max_batch=12)))
    executor = ManagerExecutor(inference.manager)
    assert executor.max_batch("vib") == 1  # no tensor spec and not loaded: unknown, so no batching
    x, _ = split("vibration", "test", n=3)
    outputs = executor.run_batch("vib", [[x[0:1]], [x[1:3]]])
    assert [o[0].shape for o in outputs] == [(1, 2), (2, 2)]
    assert executor.max_batch("vib") == 12
    inference.manager.close()


def test_a_bad_request_fails_alone_and_its_batch_mates_are_served() -> None:
    x, _ = split("vibration", "test", n=8)
    inference = Inference(config(spec("vibration_cnn.fp32.onnx", "vib"), batching={"max_wait_ms": 20}))
    executor = inference.executor
    inference.manager.load("vib")
    batch: list[list[np.ndarray]] = [[x[i : i + 1]] for i in range(8)]
    batch[2] = [x[2:3, :100]]  # wrong length
    batch[5] = [x[5:6].astype(np.float64).reshape(1, 1, 128)]  # wrong layout
    results = executor.run_batch("vib", batch)
    assert isinstance(results[2], ModelError)
    assert "'signal'" in str(results[2])
    assert isinstance(results[5], ModelError)
    alone = runtime_for("onnx").open(MODELS / "vibration_cnn.fp32.onnx")
    for i in (0, 1, 3, 4, 6, 7):
        got = results[i]
        assert not isinstance(got, BaseException)
        np.testing.assert_allclose(got[0], alone.run([x[i : i + 1]])[0], atol=1e-6)
    inference.manager.close()


def test_outputs_that_do_not_follow_the_batch_fall_back_to_one_request_at_a_time(tmp_path: Path) -> None:
    """A model whose first dimension is dynamic but is not a batch: y = reshape(x, [-1, 2])."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 2])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 2])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "r", [x_info], [y_info], [shape]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "reshape.onnx"
    onnx.save(model, path)
    reshape = ModelSpec(name="r", file=path, sha256=file_sha256(path), runtime="onnx", memory_mb=1)
    inference = Inference(config(reshape))
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.arange(8, 16, dtype=np.float32).reshape(2, 4)
    results = inference.executor.run_batch("r", [[a], [b]])
    assert [r[0].tolist() for r in results] == [[[0, 1], [2, 3]], [[8, 9], [10, 11], [12, 13], [14, 15]]]  # type: ignore[index]
    inference.manager.close()


def test_hot_swap_through_the_scheduler_under_load_fails_no_request() -> None:
    x, _ = split("vibration", "test", n=4)
    v1 = spec("vibration_cnn.fp32.onnx", "vib", version="1")
    v2 = spec("vibration_cnn.int8.onnx", "vib", version="2")
    inference = Inference(config(v1))
    inference.start()
    errors: list[BaseException] = []
    done = 0

    async def load(stop: asyncio.Event) -> None:
        nonlocal done
        while not stop.is_set():
            results = await asyncio.gather(
                *(inference.scheduler.infer("a", "vib", [x[i : i + 1]]) for i in range(4)),
                return_exceptions=True,
            )
            errors.extend(r for r in results if isinstance(r, BaseException))
            done += len(results)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop))
        await wait_until_async(lambda: done >= 40, "40 requests before the swap")
        await asyncio.to_thread(inference.swap, v2)
        before = done
        await wait_until_async(lambda: done >= before + 40, "40 requests after the swap")
        stop.set()
        await task

    asyncio.run(scenario())
    inference.stop()
    assert errors == []
    assert done > 50
    assert [(m.name, m.version) for m in inference.manager.stats().loaded] == []  # closed at stop
    assert inference.manager.stats().swaps == 1


def test_workers_are_capped_at_the_thread_budget() -> None:
    many = KernelConfig(
        models=[spec("vibration_cnn.fp32.onnx", f"m{i}") for i in range(8)],
        threads=2,
        scheduler=SchedulerConfig(workers=8),
    )
    budget = thread_budget(many)
    assert budget.workers * budget.per_session <= budget.total
