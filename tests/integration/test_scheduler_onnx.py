"""The scheduler drives a real ONNX Runtime model: concurrent submitters, batched runs, exact results."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekernel.config.kernel import BatchingConfig, ModelSpec, SchedulerConfig
from edgekernel.device.inference import ManagerExecutor
from edgekernel.device.models import InferenceError, ModelManager, file_sha256, runtime_for
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


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "matmul.onnx"
    path.write_bytes(_model_bytes())
    return path


@pytest.fixture
def session(model_file: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def manager_for(model_file: Path) -> ModelManager:
    spec = ModelSpec(
        name="matmul",
        file=model_file,
        sha256=file_sha256(model_file),
        runtime="onnx",
        memory_mb=1,
        max_batch=8,
    )
    return ModelManager([spec], runtime_for, budget_mb=16, threads_per_session=1)


def test_concurrent_submitters_get_exactly_what_the_model_gives_alone(
    model_file: Path, session: ort.InferenceSession
) -> None:
    """32 threads through the kernel's real executor: batched, split back, each answer exact; the
    few malformed requests mixed in fail alone."""
    manager = manager_for(model_file)
    manager.load("matmul")  # as the kernel does at start: its batch dimension is then known at submit
    executor = ManagerExecutor(manager)
    cfg = SchedulerConfig(batching=BatchingConfig(max_wait_ms=2.0), max_queue=4096)
    rng = np.random.default_rng(11)
    inputs = rng.standard_normal((SUBMITTERS, PER_SUBMITTER, 1, FEATURES)).astype(np.float32)
    bad = {(3, 1), (17, 5)}  # these send a wrong width
    results: dict[tuple[int, int], Future[list[FloatArray]]] = {}
    lock = threading.Lock()
    start = threading.Barrier(SUBMITTERS)

    def submit_all(index: int) -> None:
        start.wait()
        for j in range(PER_SUBMITTER):
            x = inputs[index, j][:, :5] if (index, j) in bad else inputs[index, j]
            future = scheduler.submit(f"agent-{index % 4}", "matmul", [x], priority=j % 3)
            with lock:
                results[index, j] = future

    with Scheduler(cfg, executor, workers=2) as scheduler:
        threads = [threading.Thread(target=submit_all, args=(i,)) for i in range(SUBMITTERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for key in bad:
            with pytest.raises(InferenceError, match="'x'"):
                results.pop(key).result(timeout=20)
        outputs = {key: future.result(timeout=20) for key, future in results.items()}
        stats = scheduler.stats()
    manager.close()

    total = SUBMITTERS * PER_SUBMITTER
    assert len(outputs) == total - len(bad)
    for (i, j), (got,) in outputs.items():
        (alone,) = session.run(None, {"x": inputs[i, j]})
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)
        assert got.shape == (1, CLASSES)
    assert stats.total.submitted == total
    assert stats.total.completed == total - len(bad)
    assert stats.total.failed["error"] == len(bad)
    assert stats.total.pending == 0
    assert sum(stats.total.rejected.values()) == 0
    assert stats.models["matmul"].completed == total - len(bad)
    assert 1 < stats.mean_batch <= 8
    timing = stats.total.timing
    assert timing.turnaround.samples == total - len(bad)
    assert 0 <= timing.wait.p50 <= timing.wait.p95 <= timing.wait.p99
    assert timing.turnaround.p99 >= timing.service.p50
    assert 0 < stats.utilisation <= 1
