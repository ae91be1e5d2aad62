"""Weighted fairness: under saturation each agent's share of service time follows its weight."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import wait

import pytest

from edgekernel.device.scheduler import Scheduler

from .scheduler_helpers import ManualClock, TestExecutor, config, tagged, wait_until

WEIGHTS = {"a": {"weight": 3.0, "max_concurrent": 10_000}, "b": {"weight": 1.0, "max_concurrent": 10_000}}


def _shares(order: list[float], first: int) -> Counter[str]:
    """Tags 1xxxx belong to agent a, 2xxxx to agent b."""
    return Counter("a" if tag < 20_000 else "b" for tag in order[:first])


@pytest.mark.parametrize(("lag", "low", "high"), [(0.0, 0.74, 0.76), (0.02, 0.70, 0.80)])
def test_weights_3_to_1_give_a_3_to_1_share_under_saturation(lag: float, low: float, high: float) -> None:
    clock = ManualClock()
    executor = TestExecutor(cost={"m": 0.005}, clock=clock)
    scheduler = Scheduler(
        config(agents=WEIGHTS, max_queue=10_000), executor, workers=1, clock=clock, fairness_lag_s=lag
    )
    futures = []
    for i in range(200):  # both agents keep 200 requests queued: saturation; FCFS would alternate 1:1
        futures.append(scheduler.submit("a", "m", tagged(10_000 + i)))
        futures.append(scheduler.submit("b", "m", tagged(20_000 + i)))
    with scheduler:
        wait(futures, timeout=10)
        stats = scheduler.stats()
    shares = _shares(executor.order(), 200)  # both agents still backlogged throughout
    assert low <= shares["a"] / 200 <= high, shares
    assert stats.agents["a"].completed == stats.agents["b"].completed == 200


def test_an_unlimited_lag_leaves_the_policy_order_alone() -> None:
    clock = ManualClock()
    executor = TestExecutor(cost={"m": 0.005}, clock=clock)
    scheduler = Scheduler(
        config(agents=WEIGHTS, max_queue=10_000), executor, workers=1, clock=clock, fairness_lag_s=1e9
    )
    futures = []
    for i in range(50):
        futures.append(scheduler.submit("a", "m", tagged(10_000 + i)))
        futures.append(scheduler.submit("b", "m", tagged(20_000 + i)))
    with scheduler:
        wait(futures, timeout=10)
    assert _shares(executor.order(), 50) == {"a": 25, "b": 25}


def test_an_agent_back_from_idle_gets_no_credit_for_its_pause() -> None:
    clock = ManualClock()
    executor = TestExecutor(cost={"m": 0.005}, clock=clock)
    unlimited = {"max_concurrent": 10_000}
    scheduler = Scheduler(
        config(max_queue=10_000, default_quota=unlimited),
        executor,
        workers=1,
        clock=clock,
        fairness_lag_s=0.0,
    )
    first = [scheduler.submit("a", "m", tagged(10_000 + i)) for i in range(100)]
    with scheduler:
        wait(first, timeout=10)  # a ran alone for 0.5 s of service
        more = []
        for i in range(40):
            more.append(scheduler.submit("a", "m", tagged(10_100 + i)))
            more.append(scheduler.submit("b", "m", tagged(20_000 + i)))
        wait(more, timeout=10)
    # equal weights: b does not get the next 100 requests to itself
    assert _shares(executor.order()[100:], 40) == {"a": 20, "b": 20}


def test_shares_follow_weights_with_real_threads() -> None:
    """Two workers and a sleeping executor on the real clock: tolerant bounds."""
    executor = TestExecutor(cost={"m": 0.002})
    scheduler = Scheduler(config(agents=WEIGHTS, max_queue=10_000), executor, workers=2)
    for i in range(600):  # more than either agent can finish in the run: both stay backlogged
        scheduler.submit("a", "m", tagged(10_000 + i))
        scheduler.submit("b", "m", tagged(20_000 + i))
    with scheduler:
        # enough served to compare the shares, and neither backlog finished (a machine's speed varies)
        wait_until(
            lambda: sum(agent.completed for agent in scheduler.stats().agents.values()) >= 200,
            "200 requests served",
        )
        stats = scheduler.stats()
        scheduler.stop(drain=False)
    assert stats.agents["b"].completed > 0
    assert stats.agents["a"].completed < 600
    service = {"a": 0.0, "b": 0.0}
    for tags, seconds in executor.durations:
        service["a" if tags[0] < 20_000 else "b"] += seconds
    # a share of service time, so a request stretched by a busy machine counts for what it took
    assert 2.0 <= service["a"] / service["b"] <= 4.5, service
