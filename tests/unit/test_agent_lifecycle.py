"""The agent lifecycle state machine and its backoff, on a fake clock."""

from __future__ import annotations

import random

import pytest

from edgekernel.device.agents.lifecycle import (
    AgentState,
    Backoff,
    Change,
    Lifecycle,
    RestartPolicy,
    TransitionError,
)


def _lifecycle(
    policy: RestartPolicy = RestartPolicy.ON_FAILURE, **kwargs: object
) -> tuple[Lifecycle, list[Change]]:
    changes: list[Change] = []
    backoff = Backoff(jitter=0.0, rng=random.Random(1))
    lc = Lifecycle("a", policy=policy, backoff=backoff, on_change=changes.append, **kwargs)  # type: ignore[arg-type]
    return lc, changes


def test_backoff_doubles_to_its_cap_and_resets_after_a_healthy_run() -> None:
    backoff = Backoff(first_s=0.5, cap_s=60.0, reset_after_s=60.0, jitter=0.0)
    delays = [backoff.next_delay(ran_for_s=1.0) for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff.next_delay(ran_for_s=61.0) == 0.5
    assert backoff.next_delay(ran_for_s=1.0) == 1.0


def test_jitter_only_shortens_and_spreads() -> None:
    backoff = Backoff(first_s=10.0, cap_s=10.0, jitter=0.2, rng=random.Random(7))
    delays = {backoff.next_delay(1.0) for _ in range(50)}
    assert all(8.0 <= d <= 10.0 for d in delays)
    assert len(delays) > 40


def test_a_failure_backs_off_and_restarts() -> None:
    lc, changes = _lifecycle()
    lc.starting(0.0)
    lc.running(0.1)
    delay = lc.ended(5.0, "ValueError: boom")
    assert delay == 0.5
    assert lc.state is AgentState.BACKOFF
    assert lc.last_error == "ValueError: boom"
    lc.starting(5.5)
    assert lc.restarts == 1
    assert [c.new for c in changes] == [
        AgentState.STARTING,
        AgentState.RUNNING,
        AgentState.FAILED,
        AgentState.BACKOFF,
        AgentState.STARTING,
    ]


@pytest.mark.parametrize(
    ("policy", "error", "restarts"),
    [
        (RestartPolicy.ALWAYS, None, True),
        (RestartPolicy.ALWAYS, "boom", True),
        (RestartPolicy.ON_FAILURE, None, False),
        (RestartPolicy.ON_FAILURE, "boom", True),
        (RestartPolicy.NEVER, None, False),
        (RestartPolicy.NEVER, "boom", False),
    ],
)
def test_restart_policies(policy: RestartPolicy, error: str | None, restarts: bool) -> None:
    lc, _ = _lifecycle(policy)
    lc.starting(0.0)
    lc.running(0.0)
    assert (lc.ended(1.0, error) is not None) is restarts


def test_too_many_failures_in_the_window_is_broken_until_cleared() -> None:
    lc, changes = _lifecycle(max_failures=3, failure_window_s=100.0)
    now = 0.0
    for _ in range(2):
        lc.starting(now)
        lc.running(now)
        now += 1
        assert lc.ended(now, "boom") is not None
    lc.starting(now)
    lc.running(now)
    assert lc.ended(now + 1, "boom again") is None
    assert lc.state is AgentState.BROKEN
    assert "3 failures within 100 s; last: boom again" in changes[-1].reason
    lc.clear(now + 2)
    lc.starting(now + 2)
    lc.running(now + 2)
    assert lc.ended(now + 3, "once more") == 0.5  # fresh backoff, failures forgotten


def test_failures_outside_the_window_do_not_break() -> None:
    lc, _ = _lifecycle(max_failures=2, failure_window_s=10.0)
    for now in (0.0, 20.0, 40.0):
        lc.starting(now)
        lc.running(now)
        assert lc.ended(now + 1, "boom") is not None
    assert lc.state is AgentState.BACKOFF


def test_transitions_not_in_the_machine_are_refused() -> None:
    lc, _ = _lifecycle()
    with pytest.raises(TransitionError):
        lc.running(0.0)
    lc.starting(0.0)
    with pytest.raises(TransitionError):
        lc.stopped(0.0)
