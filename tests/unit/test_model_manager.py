"""The model manager on real ONNX Runtime sessions: verify, load, lease, evict, hot-swap."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekernel.config.kernel import ModelSpec, TensorSpec
from edgekernel.device.models.manager import BudgetError, ModelManager, UnknownModelError, file_sha256
from edgekernel.device.models.registry import runtime_for
from edgekernel.device.models.runtime import ModelError, ModelFileError
from tests.waiting import wait_until


def scale_model(path: Path, factor: float) -> Path:
    """y = relu(x * factor), x: [batch, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "scale",
        [x],
        [y],
        [k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def spec(path: Path, name: str = "scale", **extra: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": name,
        "file": path,
        "sha256": file_sha256(path),
        "runtime": "onnx",
        "memory_mb": 10,
        **extra,
    }
    return ModelSpec.model_validate(fields)


def manager(*specs: ModelSpec, budget_mb: float = 100) -> ModelManager:
    return ModelManager(specs, runtime_for, budget_mb=budget_mb)


def run(mgr: ModelManager, name: str, value: float = 1.0) -> float:
    with mgr.lease(name) as session:
        [out] = session.run([np.full((1, 4), value, dtype=np.float32)])
        return float(out[0, 0])


def test_lease_loads_verifies_and_warms_up(tmp_path: Path) -> None:
    mgr = manager(spec(scale_model(tmp_path / "m.onnx", 2.0)))
    assert run(mgr, "scale", 3.0) == 6.0
    [info] = mgr.stats().loaded
    assert info.device == "CPUExecutionProvider"
    assert info.batch_capable
    assert info.warmup_ms > 0
    assert mgr.stats().misses == 1
    run(mgr, "scale")
    assert mgr.stats().hits == 1


def test_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="configured: none"), manager().lease("nope"):
        pass


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_file_is_refused_and_other_models_keep_serving(tmp_path: Path, damage: str) -> None:
    good = spec(scale_model(tmp_path / "good.onnx", 2.0), "good")
    bad_path = scale_model(tmp_path / "bad.onnx", 3.0)
    bad = spec(bad_path, "bad")
    data = bad_path.read_bytes()
    if damage == "truncate":
        bad_path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        bad_path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        bad_path.unlink()
    mgr = manager(good, bad)
    with pytest.raises(ModelFileError, match="bad"):
        run(mgr, "bad")
    assert run(mgr, "good", 1.0) == 2.0
    assert mgr.stats().load_failures == 1


def test_spec_tensors_must_match_the_file(tmp_path: Path) -> None:
    path = scale_model(tmp_path / "m.onnx", 2.0)
    wrong = spec(path, inputs=[TensorSpec(name="x", shape=[None, 8])])
    with pytest.raises(ModelFileError, match=r"shape \[None, 4\]"):
        run(manager(wrong), "scale")
    renamed = spec(path, outputs=[TensorSpec(name="out", shape=[None, 4])])
    with pytest.raises(ModelFileError, match="'out' in the spec is 'y'"):
        run(manager(renamed), "scale")


def test_eviction_spares_pinned_and_leased_models(tmp_path: Path) -> None:
    specs = [
        spec(scale_model(tmp_path / f"m{i}.onnx", float(i)), f"m{i}", memory_mb=40, pinned=(i == 0))
        for i in range(3)
    ]
    mgr = manager(*specs, budget_mb=100)
    run(mgr, "m0")
    with mgr.lease("m1"), pytest.raises(BudgetError, match=r"m0 \(40 MB, pinned\), m1 \(40 MB, 1 leases\)"):
        run(mgr, "m2")
    assert run(mgr, "m2", 1.0) == 2.0
    assert sorted(i.name for i in mgr.stats().loaded) == ["m0", "m2"]


def test_a_model_over_the_whole_budget_is_refused(tmp_path: Path) -> None:
    mgr = manager(spec(scale_model(tmp_path / "m.onnx", 1.0), memory_mb=500), budget_mb=100)
    with pytest.raises(BudgetError, match="over the whole 100 MB budget"):
        run(mgr, "scale")


def test_lru_eviction_order(tmp_path: Path) -> None:
    specs = [spec(scale_model(tmp_path / f"m{i}.onnx", float(i)), f"m{i}", memory_mb=40) for i in range(3)]
    mgr = manager(*specs, budget_mb=100)
    run(mgr, "m0")
    run(mgr, "m1")
    run(mgr, "m0")  # m1 is now the least recently used
    run(mgr, "m2")
    assert sorted(i.name for i in mgr.stats().loaded) == ["m0", "m2"]
    assert mgr.stats().evictions == 1


def test_hot_swap_under_load_fails_no_request(tmp_path: Path) -> None:
    """Calls in flight during a swap finish on the version they leased; each caller, once it has seen
    version 2, never sees version 1 again, and a call begun after the swap returns gets version 2."""
    v1 = spec(scale_model(tmp_path / "v1.onnx", 1.0), version="1")
    v2 = spec(scale_model(tmp_path / "v2.onnx", 2.0), version="2")
    mgr = manager(v1)
    per_caller: list[list[float]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller(results: list[float]) -> None:
        while not stop.is_set():
            try:
                results.append(run(mgr, "scale", 1.0))
            except BaseException as err:
                errors.append(err)

    threads = [threading.Thread(target=caller, args=(results,)) for results in per_caller]
    for thread in threads:
        thread.start()
    wait_until(lambda: all(1.0 in results for results in per_caller), "calls to version 1")
    info = mgr.swap(v2)
    assert run(mgr, "scale", 1.0) == 2.0
    wait_until(lambda: all(2.0 in results for results in per_caller), "calls to version 2")
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert info.version == "2"
    for results in per_caller:
        switched = results.index(2.0)
        assert set(results[:switched]) == {1.0}
        assert set(results[switched:]) == {2.0}
    assert [i.version for i in mgr.stats().loaded] == ["2"]
    assert mgr.stats().swaps == 1


def test_failed_swap_keeps_the_old_version(tmp_path: Path) -> None:
    v1 = spec(scale_model(tmp_path / "v1.onnx", 1.0))
    broken_path = tmp_path / "v2.onnx"
    broken_path.write_bytes(b"not a model")
    v2 = spec(broken_path, version="2")
    mgr = manager(v1)
    run(mgr, "scale")
    with pytest.raises(ModelFileError):
        mgr.swap(v2)
    assert run(mgr, "scale", 5.0) == 5.0


def test_unload_waits_for_leases(tmp_path: Path) -> None:
    mgr = manager(spec(scale_model(tmp_path / "m.onnx", 1.0)))
    with mgr.lease("scale"), pytest.raises(ModelError, match="still leased"):
        mgr.unload("scale", wait_s=0.1)
    mgr.unload("scale")
    assert mgr.stats().loaded == ()


def test_a_load_that_dies_does_not_hang_later_leases(tmp_path: Path) -> None:
    calls = 0

    def flaky(name: str) -> object:
        runtime = runtime_for(name)

        class Dying:
            def open(self, *args: object, **kwargs: object) -> object:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise MemoryError("simulated")
                return runtime.open(*args, **kwargs)  # type: ignore[arg-type]

        return Dying()

    mgr = ModelManager([spec(scale_model(tmp_path / "m.onnx", 2.0))], flaky, budget_mb=100)  # type: ignore[arg-type]
    with pytest.raises(MemoryError):
        run(mgr, "scale")
    assert mgr.stats().used_mb == 0
    assert run(mgr, "scale", 1.0) == 2.0
