"""Priority with aging: a low-priority request is not starved by a steady high-priority stream."""

from __future__ import annotations

import threading

import pytest

from edgekernel.device.scheduler import Scheduler

from .scheduler_helpers import ManualClock, TestExecutor, config, tagged

HIGH, LOW = 5, 0
RUN_S = 0.001  # each request takes 1 ms of (manual) time
STREAM = 300  # high-priority requests in all (the first 5 queued before the low one)
LOW_TAG = -7.0


def _position_of_low(aging_ms: float, low_agent: str = "hi") -> int:
    """Index at which the low request ran, under a closed-loop stream: each run submits one more high.

    By default one agent submits both, so fairness between agents plays no part.
    """
    clock = ManualClock()
    executor = TestExecutor(cost={"m": RUN_S}, clock=clock)
    scheduler = Scheduler(
        config(policy="priority", aging_ms=aging_ms, default_quota={"max_concurrent": 1_000}),
        executor,
        workers=1,
        clock=clock,
    )
    submitted = 0
    finished = threading.Event()

    def keep_streaming(model: str, tags: list[float]) -> None:
        nonlocal submitted
        if submitted < STREAM:
            submitted += 1
            scheduler.submit("hi", "m", tagged(submitted), priority=HIGH)
        elif not scheduler.stats().queue_depth:
            finished.set()

    executor.on_run = keep_streaming
    for _ in range(5):  # a backlog of highs, then the low one
        submitted += 1
        scheduler.submit("hi", "m", tagged(submitted), priority=HIGH)
    low = scheduler.submit(low_agent, "m", tagged(LOW_TAG), priority=LOW)
    with scheduler:
        assert low.result(10)[0].item() == 2 * LOW_TAG
        assert finished.wait(10)
    return executor.order().index(LOW_TAG)


def test_low_priority_runs_within_the_aging_bound() -> None:
    # It gains one level per 10 ms, so highs that arrive more than (5 - 0) * 10 ms after it queue
    # behind it: it runs after at most the 5 queued before it and the ~50 that arrive in those 50 ms.
    position = _position_of_low(aging_ms=10)
    assert position <= 5 + 50 / (RUN_S * 1e3) + 5


def test_without_aging_the_stream_would_starve_it() -> None:
    position = _position_of_low(aging_ms=600_000)
    assert position == STREAM  # only after the stream ends


@pytest.mark.parametrize("aging_ms", [2.0, 20.0])
def test_the_bound_scales_with_aging(aging_ms: float) -> None:
    expected = 5 + (HIGH - LOW) * aging_ms / (RUN_S * 1e3)
    assert _position_of_low(aging_ms) == pytest.approx(expected, abs=3)


def test_between_agents_fairness_bounds_the_wait_even_without_aging() -> None:
    # another agent's request waits only until the streaming agent is a fairness lag (20 ms) ahead
    position = _position_of_low(aging_ms=600_000, low_agent="lo")
    assert position <= 5 + 20 / (RUN_S * 1e3) + 3
