"""Admission: bounded queue, deadlines (at submit and in the queue), quotas, a closed scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import wait
from inspect import ismodule

import pytest

from edgekernel.device.scheduler import (
    DeadlineError,
    OverloadError,
    QuotaError,
    Scheduler,
    SchedulerClosedError,
    SchedulerError,
)
from edgekernel.errors import EdgeKernelError

from .scheduler_helpers import GATE, ManualClock, TestExecutor, config, tagged, wait_until


@pytest.fixture
def executor() -> Iterator[TestExecutor]:
    executor = TestExecutor(cost={"m": 0.05})
    yield executor
    executor.gate.set()


def _hold(scheduler: Scheduler, executor: TestExecutor) -> None:
    scheduler.submit("g", GATE, tagged(-1))
    scheduler.start()
    assert executor.gated.wait(5)


def test_the_public_api_is_exported() -> None:
    import edgekernel.device.scheduler as package

    public = {
        name for name, value in vars(package).items() if not name.startswith("_") and not ismodule(value)
    }
    assert public <= set(package.__all__)
    assert all(hasattr(package, name) for name in package.__all__)


def test_the_error_tree_has_one_root() -> None:
    for kind in (OverloadError, DeadlineError, QuotaError, SchedulerClosedError):
        assert issubclass(kind, SchedulerError)
    assert issubclass(SchedulerError, EdgeKernelError)


def test_a_full_queue_refuses_with_an_overload_error(executor: TestExecutor) -> None:
    scheduler = Scheduler(config(max_queue=3), executor, workers=1)
    with scheduler:
        _hold(scheduler, executor)
        futures = [scheduler.submit("a", "x", tagged(tag)) for tag in range(3)]
        with pytest.raises(OverloadError, match="queue full") as caught:
            scheduler.submit("a", "x", tagged(3))
        assert (caught.value.depth, caught.value.limit, caught.value.shed) == (3, 3, False)
        stats = scheduler.stats()
        assert stats.queue_depth == 3
        assert stats.total.rejected["overload"] == 1
        executor.gate.set()
        wait(futures, timeout=5)
        scheduler.infer_sync("a", "x", tagged(4), timeout=5)  # room again


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once() -> None:
    clock = ManualClock()
    executor = TestExecutor(cost={"m": 0.05}, clock=clock)
    with Scheduler(config(), executor, workers=1, clock=clock) as scheduler:
        scheduler.infer_sync("a", "m", tagged(0), timeout=5)  # measures m: 50 ms
        scheduler.submit("g", GATE, tagged(-1))
        assert executor.gated.wait(5)
        queued = [scheduler.submit("a", "m", tagged(tag)) for tag in range(4)]
        with pytest.raises(DeadlineError) as caught:
            scheduler.submit("a", "m", tagged(9), deadline_s=0.1)
        error = caught.value
        assert error.stage == "admission"
        assert error.estimate_s == pytest.approx(4 * 0.05 + 0.05)
        assert error.deadline_s == 0.1
        assert "cannot meet its 100.0 ms deadline: estimated completion in 250.0 ms" in str(error)
        ok = scheduler.submit("a", "m", tagged(10), deadline_s=0.3)  # fits
        with pytest.raises(DeadlineError):
            scheduler.submit("a", "m", tagged(11), deadline_s=0)
        executor.gate.set()
        wait([*queued, ok], timeout=5)
        assert ok.result()[0].item() == 20
        assert scheduler.stats().agents["a"].rejected["deadline"] == 2


def test_edf_admits_an_urgent_request_that_goes_ahead_of_the_queue() -> None:
    clock = ManualClock()
    executor = TestExecutor(cost={"m": 0.05}, clock=clock)
    with Scheduler(config(policy="edf"), executor, workers=1, clock=clock) as scheduler:
        scheduler.infer_sync("a", "m", tagged(0), timeout=5)
        scheduler.submit("g", GATE, tagged(-1))
        assert executor.gated.wait(5)
        queued = [scheduler.submit("a", "m", tagged(tag)) for tag in range(4)]
        urgent = scheduler.submit("a", "m", tagged(9), deadline_s=0.1)
        executor.gate.set()
        wait([*queued, urgent], timeout=5)
    assert urgent.result()[0].item() == 18
    assert executor.order("m")[1] == 9


def test_a_request_that_expires_in_the_queue_fails_without_running(executor: TestExecutor) -> None:
    with Scheduler(config(), executor, workers=1) as scheduler:
        _hold(scheduler, executor)
        doomed = scheduler.submit("a", "x", tagged(1), deadline_s=0.05)
        wait_until(doomed.done)  # while the worker is still held
        error = doomed.exception()
        assert isinstance(error, DeadlineError)
        assert error.stage == "queue"
        assert error.estimate_s >= 0.05
        assert "expired after" in str(error)
        executor.gate.set()
        scheduler.infer_sync("a", "x", tagged(2), timeout=5)
        stats = scheduler.stats()
    assert 1 not in executor.order()
    assert stats.total.failed["expired"] == 1
    assert stats.total.pending == 0


def test_an_agent_over_its_quota_is_refused(executor: TestExecutor) -> None:
    quotas = {"a": {"max_concurrent": 2}}
    with Scheduler(config(agents=quotas, default_quota={"max_concurrent": 1}), executor, workers=1) as s:
        _hold(s, executor)
        futures = [s.submit("a", "x", tagged(tag)) for tag in (1, 2)]
        with pytest.raises(QuotaError, match="agent 'a' is at its limit of 2") as caught:
            s.submit("a", "x", tagged(3))
        assert (caught.value.agent, caught.value.limit) == ("a", 2)
        futures.append(s.submit("b", "x", tagged(4)))  # the default quota: 1
        with pytest.raises(QuotaError):
            s.submit("b", "x", tagged(5))
        executor.gate.set()
        wait(futures, timeout=5)
        s.infer_sync("a", "x", tagged(6), timeout=5)  # slots freed
        assert s.stats().total.rejected["quota"] == 2


def test_a_cancelled_request_frees_its_slot_and_never_runs(executor: TestExecutor) -> None:
    with Scheduler(config(default_quota={"max_concurrent": 1}), executor, workers=1) as scheduler:
        _hold(scheduler, executor)
        future = scheduler.submit("a", "x", tagged(1))
        assert future.cancel()
        again = scheduler.submit("a", "x", tagged(2))
        executor.gate.set()
        assert again.result(5)[0].item() == 4
        stats = scheduler.stats()
    assert executor.order() == [2]
    assert stats.total.failed["cancelled"] == 1


def test_cancelling_the_awaiting_task_cancels_the_queued_request(executor: TestExecutor) -> None:
    async def main(scheduler: Scheduler) -> None:
        task = asyncio.create_task(scheduler.infer("a", "x", tagged(1)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        executor.gate.set()
        assert (await scheduler.infer("a", "x", tagged(2)))[0].item() == 4

    with Scheduler(config(), executor, workers=1) as scheduler:
        _hold(scheduler, executor)
        asyncio.run(main(scheduler))
        wait_until(lambda: scheduler.stats().total.pending == 0)
        assert scheduler.stats().total.failed["cancelled"] == 1
    assert 1 not in executor.order()


def test_an_unknown_model_propagates_the_executor_error(executor: TestExecutor) -> None:
    with Scheduler(config(), executor, workers=1) as scheduler, pytest.raises(KeyError):
        scheduler.submit("a", "missing", tagged(1))


def test_a_stopped_scheduler_refuses_and_cannot_restart(executor: TestExecutor) -> None:
    scheduler = Scheduler(config(), executor, workers=1)
    scheduler.start()
    assert scheduler.stop()
    with pytest.raises(SchedulerClosedError):
        scheduler.submit("a", "x", tagged(1))
    with pytest.raises(SchedulerClosedError):
        scheduler.start()
    assert scheduler.stats().total.rejected["closed"] == 1


def test_stop_with_drain_finishes_the_queue(executor: TestExecutor) -> None:
    scheduler = Scheduler(config(), executor, workers=1)
    _hold(scheduler, executor)
    futures = [scheduler.submit("a", "x", tagged(tag)) for tag in range(5)]
    executor.gate.set()
    assert scheduler.stop(drain=True, timeout=5)
    assert [future.result(0)[0].item() for future in futures] == [0, 2, 4, 6, 8]


def test_stop_without_drain_fails_the_queue(executor: TestExecutor) -> None:
    scheduler = Scheduler(config(), executor, workers=1)
    _hold(scheduler, executor)
    futures = [scheduler.submit("a", "x", tagged(tag)) for tag in range(5)]
    executor.gate.set()
    scheduler.stop(drain=False, timeout=5)
    for future in futures:
        with pytest.raises(SchedulerClosedError, match="without draining"):
            future.result(0)
    stats = scheduler.stats()
    assert stats.total.failed["closed"] == 5
    assert stats.total.completed == 1  # the gate, already running
    assert stats.total.pending == 0


def test_a_drain_that_times_out_fails_what_is_left(executor: TestExecutor) -> None:
    scheduler = Scheduler(config(), executor, workers=1)
    _hold(scheduler, executor)
    future = scheduler.submit("a", "x", tagged(1))
    assert not scheduler.stop(drain=True, timeout=0.05)  # the gate is still closed
    with pytest.raises(SchedulerClosedError, match="did not drain"):
        future.result(0)


def test_requests_submitted_before_start_wait_for_it(executor: TestExecutor) -> None:
    scheduler = Scheduler(config(), executor, workers=1)
    future = scheduler.submit("a", "x", tagged(1))
    assert not future.done()
    with scheduler:
        assert future.result(5)[0].item() == 2


def test_many_cancellations_and_deadlines_keep_the_queue_consistent(executor: TestExecutor) -> None:
    cfg = config(default_quota={"max_concurrent": 10_000}, max_queue=10_000)
    with Scheduler(cfg, executor, workers=1) as scheduler:
        _hold(scheduler, executor)
        futures = [scheduler.submit("a", "x", tagged(tag), deadline_s=60.0) for tag in range(500)]
        for future in futures[:490]:  # dead entries pile up, then get compacted away
            assert future.cancel()
        assert scheduler.stats().queue_depth == 10
        doomed = scheduler.submit("a", "x", tagged(999), deadline_s=0.05)
        wait_until(doomed.done)
        assert isinstance(doomed.exception(), DeadlineError)
        executor.gate.set()
        wait(futures[490:], timeout=5)
        for _ in range(3):  # deadlines of requests already run are pruned as new ones arrive
            batch = [scheduler.submit("a", "x", tagged(tag), deadline_s=60.0) for tag in range(100)]
            wait(batch, timeout=5)
        stats = scheduler.stats()
    assert executor.order()[:10] == list(range(490, 500))
    assert stats.total.failed["cancelled"] == 490
    assert stats.total.completed == 1 + 10 + 300
    assert stats.total.pending == 0
