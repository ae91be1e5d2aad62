"""Each policy's dispatch order on deterministic workloads: one worker, requests queued behind a gate."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import wait

import pytest

from edgekernel.device.scheduler import Edf, Fcfs, PriorityAging, Scheduler, Sjf, policy_for

from .scheduler_helpers import GATE, ManualClock, TestExecutor, config, tagged


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def executor(clock: ManualClock) -> TestExecutor:
    return TestExecutor(clock=clock, cost={"fast": 0.01, "mid": 0.02, "slow": 0.03, "m": 0.001})


def _scheduler(executor: TestExecutor, clock: ManualClock, policy: str, **fields: object) -> Scheduler:
    return Scheduler(config(policy=policy, **fields), executor, workers=1, clock=clock)


@pytest.fixture
def gated(executor: TestExecutor) -> Iterator[None]:
    yield
    executor.gate.set()


def _hold(scheduler: Scheduler, executor: TestExecutor) -> None:
    """Occupy the only worker until the gate opens."""
    scheduler.submit("g", GATE, tagged(-1))
    scheduler.start()
    assert executor.gated.wait(5)


def test_policy_for_maps_the_config() -> None:
    assert isinstance(policy_for(config(policy="fcfs")), Fcfs)
    assert isinstance(policy_for(config(policy="sjf")), Sjf)
    aging = policy_for(config(policy="priority", aging_ms=250))
    assert isinstance(aging, PriorityAging)
    assert aging.aging_s == pytest.approx(0.25)
    assert isinstance(policy_for(config(policy="edf")), Edf)


@pytest.mark.usefixtures("gated")
def test_fcfs_runs_in_arrival_order(executor: TestExecutor, clock: ManualClock) -> None:
    with _scheduler(executor, clock, "fcfs") as scheduler:
        _hold(scheduler, executor)
        futures = [scheduler.submit("a", "m", tagged(tag), priority=-tag) for tag in (3, 1, 4, 2, 5)]
        executor.gate.set()
        wait(futures, timeout=5)
    assert executor.order() == [3, 1, 4, 2, 5]
    assert [future.result()[0].item() for future in futures] == [6, 2, 8, 4, 10]


@pytest.mark.usefixtures("gated")
def test_sjf_runs_the_cheapest_measured_model_first(executor: TestExecutor, clock: ManualClock) -> None:
    with _scheduler(executor, clock, "sjf") as scheduler:
        for model in ("slow", "mid", "fast"):  # measure each model once
            scheduler.infer_sync("a", model, tagged(0), timeout=5)
        _hold(scheduler, executor)
        plan = [("slow", 1), ("mid", 2), ("fast", 3), ("slow", 4), ("fast", 5), ("unknown", 6)]
        futures = [scheduler.submit("a", model, tagged(tag)) for model, tag in plan]
        executor.gate.set()
        wait(futures, timeout=5)
    # a model never measured counts as free; equal costs keep arrival order
    assert executor.order()[3:] == [6, 3, 5, 2, 1, 4]


@pytest.mark.usefixtures("gated")
def test_priority_runs_higher_first_ties_in_arrival_order(executor: TestExecutor, clock: ManualClock) -> None:
    with _scheduler(executor, clock, "priority", aging_ms=600_000) as scheduler:
        _hold(scheduler, executor)
        plan = [(0, 1), (5, 2), (1, 3), (5, 4), (3, 5), (-2, 6)]
        futures = [scheduler.submit("a", "m", tagged(tag), priority=p) for p, tag in plan]
        executor.gate.set()
        wait(futures, timeout=5)
    assert executor.order() == [2, 4, 5, 3, 1, 6]


@pytest.mark.usefixtures("gated")
def test_priority_ages_while_waiting(executor: TestExecutor, clock: ManualClock) -> None:
    with _scheduler(executor, clock, "priority", aging_ms=100) as scheduler:
        _hold(scheduler, executor)
        old = scheduler.submit("a", "m", tagged(1), priority=0)
        clock.advance(0.25)  # the old request has gained 2.5 levels
        futures = [
            scheduler.submit("a", "m", tagged(2), priority=2),
            scheduler.submit("a", "m", tagged(3), priority=3),
            old,
        ]
        executor.gate.set()
        wait(futures, timeout=5)
    assert executor.order() == [3, 1, 2]


@pytest.mark.usefixtures("gated")
def test_edf_runs_earliest_deadline_first_then_the_rest_in_order(
    executor: TestExecutor, clock: ManualClock
) -> None:
    with _scheduler(executor, clock, "edf") as scheduler:
        _hold(scheduler, executor)
        plan = [(0.5, 1), (0.1, 2), (None, 3), (0.3, 4), (None, 5), (0.2, 6)]
        futures = [scheduler.submit("a", "m", tagged(tag), deadline_s=d) for d, tag in plan]
        executor.gate.set()
        wait(futures, timeout=5)
    assert executor.order() == [2, 6, 4, 1, 3, 5]
    assert all(future.exception() is None for future in futures)


@pytest.mark.usefixtures("gated")
def test_policy_order_holds_within_one_agent_among_several(
    executor: TestExecutor, clock: ManualClock
) -> None:
    """Whatever fairness interleaves between agents, each agent's own requests keep the policy's order."""
    with _scheduler(executor, clock, "priority", aging_ms=600_000) as scheduler:
        _hold(scheduler, executor)
        futures = [scheduler.submit("a", "m", tagged(10 + p), priority=p) for p in (1, 3, 2)]
        futures += [scheduler.submit("b", "m", tagged(20 + p), priority=p) for p in (2, 1, 3)]
        executor.gate.set()
        wait(futures, timeout=5)
    order = executor.order()
    assert [tag for tag in order if tag < 20] == [13, 12, 11]
    assert [tag for tag in order if tag >= 20] == [23, 22, 21]
