"""The scheduler drives a real ONNX Runtime model: concurrent submitters, batched runs, exact results."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekernel.config.kernel import BatchingConfig, SchedulerConfig
from edgekernel.device.scheduler import FloatArray, Scheduler

pytestmark = pytest.mark.integration

FEATURES, CLASSES = 16, 8
SUBMITTERS, PER_SUBMITTER = 32, 8


def _model_bytes() -> bytes:
    """y = relu(x @ w), x: [batch, 16] with a dynamic batch dimension."""
    weights = np.random.default_rng(7).standard_normal((FEATURES, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "matmul_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


class OnnxExecutor:
    """Concatenates each input along the batch dimension, runs once, splits the outputs back."""

    def __init__(self, session: ort.InferenceSession, max_batch: int) -> None:
        self.session = session
        self._max_batch = max_batch
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def max_batch(self, model: str) -> int:
        return self._max_batch

    def run_batch(self, model: str, batch: Sequence[Sequence[FloatArray]]) -> list[list[FloatArray]]:
        with self._lock:
            self.sizes.append(len(batch))
        rows = [len(inputs[0]) for inputs in batch]
        stacked = np.concatenate([inputs[0] for inputs in batch], axis=0)
        (outputs,) = self.session.run(None, {"x": stacked})
        split = np.split(outputs, np.cumsum(rows)[:-1], axis=0)
        return [[part] for part in split]


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # two workers on two cores: never oversubscribe
    options.inter_op_num_threads = 1
    return ort.InferenceSession(_model_bytes(), options, providers=["CPUExecutionProvider"])


def test_concurrent_submitters_get_exactly_what_the_model_gives_alone(session: ort.InferenceSession) -> None:
    executor = OnnxExecutor(session, max_batch=8)
    cfg = SchedulerConfig(batching=BatchingConfig(max_wait_ms=2.0), max_queue=4096)
    rng = np.random.default_rng(11)
    inputs = rng.standard_normal((SUBMITTERS, PER_SUBMITTER, 1, FEATURES)).astype(np.float32)
    results: dict[tuple[int, int], Future[list[FloatArray]]] = {}
    lock = threading.Lock()
    start = threading.Barrier(SUBMITTERS)

    def submit_all(index: int) -> None:
        start.wait()
        for j in range(PER_SUBMITTER):
            future = scheduler.submit(f"agent-{index % 4}", "matmul", [inputs[index, j]], priority=j % 3)
            with lock:
                results[index, j] = future

    with Scheduler(cfg, executor, workers=2) as scheduler:
        threads = [threading.Thread(target=submit_all, args=(i,)) for i in range(SUBMITTERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outputs = {key: future.result(timeout=20) for key, future in results.items()}
        stats = scheduler.stats()

    total = SUBMITTERS * PER_SUBMITTER
    assert len(outputs) == total
    for (i, j), (got,) in outputs.items():
        (alone,) = session.run(None, {"x": inputs[i, j]})
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)
        assert got.shape == (1, CLASSES)
    assert stats.total.submitted == stats.total.completed == total
    assert stats.total.pending == 0
    assert sum(stats.total.failed.values()) == sum(stats.total.rejected.values()) == 0
    assert sum(group.completed for group in stats.agents.values()) == total
    assert stats.models["matmul"].completed == total
    assert sum(executor.sizes) == total
    assert stats.batches == len(executor.sizes)
    assert max(executor.sizes) <= 8
    assert stats.mean_batch == pytest.approx(total / len(executor.sizes))
    timing = stats.total.timing
    assert timing.turnaround.samples == total
    assert 0 <= timing.wait.p50 <= timing.wait.p95 <= timing.wait.p99
    assert timing.turnaround.p99 >= timing.service.p50
    assert 0 < stats.utilisation <= 1
