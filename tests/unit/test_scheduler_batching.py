"""Dynamic micro-batching: batches up to max_batch, at once when idle, within max_wait otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import wait

import pytest

from edgekernel.device.scheduler import FloatArray, Scheduler

from .scheduler_helpers import GATE, ManualClock, TestExecutor, config, tagged, wait_until


def test_queued_requests_form_batches_up_to_max_batch() -> None:
    clock = ManualClock()
    executor = TestExecutor(max_batch={"b": 8}, clock=clock)
    with Scheduler(config(), executor, workers=1, clock=clock) as scheduler:
        scheduler.submit("g", GATE, tagged(-1))
        assert executor.gated.wait(5)
        futures = [scheduler.submit("a", "b", tagged(tag)) for tag in range(20)]
        executor.gate.set()
        wait(futures, timeout=5)
        stats = scheduler.stats()
    assert executor.batches("b") == [list(range(8)), list(range(8, 16)), list(range(16, 20))]
    assert [future.result()[0].item() for future in futures] == [2 * tag for tag in range(20)]
    assert stats.models["b"].mean_batch == pytest.approx((8 * 8 + 8 * 8 + 4 * 4) / 20)
    assert stats.batches == 4  # with the gate's
    assert stats.mean_batch == pytest.approx(21 / 4)


def test_a_model_without_a_batch_dimension_always_runs_alone() -> None:
    clock = ManualClock()
    executor = TestExecutor(max_batch={"b": 8}, clock=clock)
    with Scheduler(config(), executor, workers=1, clock=clock) as scheduler:
        scheduler.submit("g", GATE, tagged(-1))
        assert executor.gated.wait(5)
        futures = [scheduler.submit("a", "single", tagged(tag)) for tag in range(5)]
        executor.gate.set()
        wait(futures, timeout=5)
    assert executor.batches("single") == [[tag] for tag in range(5)]


def test_batching_disabled_runs_every_request_alone() -> None:
    executor = TestExecutor(max_batch={"b": 8}, clock=ManualClock())
    scheduler = Scheduler(config(batching={"enabled": False}), executor, workers=1)
    futures = [scheduler.submit("a", "b", tagged(tag)) for tag in range(4)]
    with scheduler:
        wait(futures, timeout=5)
    assert executor.batches("b") == [[0], [1], [2], [3]]


def test_an_idle_box_dispatches_at_once_despite_a_long_max_wait() -> None:
    executor = TestExecutor(max_batch={"b": 8})
    with Scheduler(config(batching={"max_wait_ms": 5_000}), executor, workers=2) as scheduler:
        started = time.monotonic()
        assert scheduler.infer_sync("a", "b", tagged(1), timeout=5)[0].item() == 2
        assert time.monotonic() - started < 2.0
        assert scheduler.stats().total.timing.wait.p50 < 2.0


def test_a_busy_box_waits_up_to_max_wait_to_fill_a_batch() -> None:
    executor = TestExecutor(max_batch={"b": 8})
    max_wait = 0.2
    with Scheduler(config(batching={"max_wait_ms": max_wait * 1e3}), executor, workers=2) as scheduler:
        scheduler.submit("g", GATE, tagged(-1))  # one worker busy: the box is not idle
        assert executor.gated.wait(5)
        started = time.monotonic()
        first = scheduler.submit("a", "b", tagged(1))
        time.sleep(0.02)
        second = scheduler.submit("a", "b", tagged(2))
        wait([first, second], timeout=5)
        elapsed = time.monotonic() - started
        executor.gate.set()
        stats = scheduler.stats()
    assert executor.batches("b") == [[1, 2]]  # the second joined the first's batch
    assert max_wait * 0.8 <= elapsed < max_wait + 1.5  # tolerant: a noisy 2-core machine
    waits = stats.models["b"].timing.wait
    assert max_wait * 0.8 <= waits.p99 < max_wait + 1.5


def test_a_full_batch_goes_without_waiting() -> None:
    executor = TestExecutor(max_batch={"b": 2})
    with Scheduler(config(batching={"max_wait_ms": 5_000}), executor, workers=2) as scheduler:
        scheduler.submit("g", GATE, tagged(-1))
        assert executor.gated.wait(5)
        started = time.monotonic()
        futures = [scheduler.submit("a", "b", tagged(tag)) for tag in (1, 2)]
        wait(futures, timeout=5)
        assert time.monotonic() - started < 2.0
        executor.gate.set()
    assert executor.batches("b") == [[1, 2]]


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    clock = ManualClock()
    executor = TestExecutor(max_batch={"b": 4}, clock=clock, fail_tags=[2])
    with Scheduler(config(), executor, workers=1, clock=clock) as scheduler:
        scheduler.submit("g", GATE, tagged(-1))
        assert executor.gated.wait(5)
        futures = [scheduler.submit("a", "b", tagged(tag)) for tag in range(1, 9)]
        executor.gate.set()
        wait(futures, timeout=5)
        # the worker survived
        assert scheduler.infer_sync("a", "b", tagged(9), timeout=5)[0].item() == 18
        stats = scheduler.stats()
    for future in futures[:4]:
        with pytest.raises(RuntimeError, match="poisoned batch"):
            future.result()
    assert [future.result()[0].item() for future in futures[4:]] == [10, 12, 14, 16]
    assert stats.total.failed["error"] == 4
    assert stats.total.completed == 1 + 4 + 1
    assert stats.total.pending == 0


def test_an_executor_returning_the_wrong_count_fails_the_batch() -> None:
    class Short(TestExecutor):
        def run_batch(self, model: str, batch: Sequence[Sequence[FloatArray]]) -> list[list[FloatArray]]:
            return []

    executor = Short()
    with Scheduler(config(), executor, workers=1) as scheduler:
        future = scheduler.submit("a", "m", tagged(1))
        wait_until(future.done)
    with pytest.raises(Exception, match="executor returned 0 results for a batch of 1"):
        future.result()


def test_a_model_runs_one_batch_at_a_time_and_different_models_in_parallel() -> None:
    """A runtime session is used by one thread at a time; requests queued meanwhile batch up."""
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()

    class Tracking(TestExecutor):
        def run_batch(self, model: str, batch: Sequence[Sequence[FloatArray]]) -> list[list[FloatArray]]:
            with lock:
                running[model] = running.get(model, 0) + 1
                peak[model] = max(peak.get(model, 0), running[model])
                peak["all"] = max(peak.get("all", 0), sum(running.values()))
            try:
                return super().run_batch(model, batch)
            finally:
                with lock:
                    running[model] -= 1

    executor = Tracking(max_batch={"b": 4, "c": 4}, cost={"b": 0.02, "c": 0.02})
    with Scheduler(config(batching={"max_wait_ms": 1.0}), executor, workers=3) as scheduler:
        futures = [scheduler.submit("a", model, tagged(tag)) for tag in range(24) for model in ("b", "c")]
        wait(futures, timeout=10)
    assert peak["b"] == peak["c"] == 1
    assert peak["all"] == 2
    assert sorted(tag for batch in executor.batches("b") for tag in batch) == list(range(24))
    assert max(len(batch) for batch in executor.batches("b")) == 4
