"""The SLO controller: a PID on p95 that shrinks the batching wait, then sheds; anti-windup."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from edgekernel.config.kernel import SloConfig
from edgekernel.device.scheduler import ControllerState, OverloadError, Scheduler, SloController
from edgekernel.device.scheduler.controller import PRESSURE_MAX

from .scheduler_helpers import ManualClock, TestExecutor, config, tagged, wait_until

TARGET_MS = 100.0
CEILING_S = 0.01


def _controller(**gains: float) -> SloController:
    return SloController(SloConfig(p95_ms=TARGET_MS, interval_ms=100, **gains), max_wait_s=CEILING_S)


def _feed(
    controller: SloController, p95s: Iterable[float | None], start: float = 0.0
) -> list[ControllerState]:
    """One sample per 100 ms interval; p95 in ms (None: idle)."""
    return [
        controller.update(start + 0.1 * (i + 1), None if p95 is None else p95 / 1e3)
        for i, p95 in enumerate(p95s)
    ]


def test_over_target_shrinks_the_wait_then_sheds() -> None:
    states = _feed(_controller(), [600.0] * 100)  # p95 six times the target for 10 s
    pressures = [state.pressure for state in states]
    assert pressures == sorted(pressures)  # the integral only pushes one way
    assert states[0].max_wait_s < CEILING_S
    first_zero_wait = next(i for i, state in enumerate(states) if state.max_wait_s == 0)
    first_shed = next(i for i, state in enumerate(states) if state.admission > 0)
    assert first_zero_wait <= first_shed
    assert states[-1].admission == pytest.approx(1.0)
    assert states[-1].pressure == PRESSURE_MAX


def test_under_target_relaxes_back_to_full_wait_and_no_shedding() -> None:
    controller = _controller()
    _feed(controller, [200.0] * 30)
    assert controller.admission > 0 or controller.max_wait_s < CEILING_S
    states = _feed(controller, [50.0] * 100, start=3.0)
    assert states[-1].pressure == 0.0
    assert states[-1].max_wait_s == CEILING_S
    assert states[-1].admission == 0.0


def test_on_target_holds_steady() -> None:
    states = _feed(_controller(), [TARGET_MS] * 50)
    assert all(state.pressure == 0.0 for state in states)
    assert all(state.max_wait_s == CEILING_S for state in states)


def test_idle_relaxes() -> None:
    controller = _controller()
    _feed(controller, [300.0] * 30)
    states = _feed(controller, [None] * 100, start=3.0)
    assert states[-1].pressure == 0.0
    assert states[-1].p95_s is None


def test_anti_windup_lets_a_long_overload_relax_quickly() -> None:
    controller = _controller()
    long_overload = _feed(controller, [200.0] * 1000)  # 100 s saturated
    assert max(state.integral for state in long_overload) <= PRESSURE_MAX / controller.slo.ki
    after = _feed(controller, [50.0] * 100, start=100.0)
    # a wound-up integral (~100 error-seconds) would hold the output high for minutes; here it takes
    # about as long to unwind as it took to saturate (~7 s at this error)
    back_to_batching = next(i for i, state in enumerate(after) if state.max_wait_s > 0)
    no_more_shedding = next(i for i, state in enumerate(after) if state.admission == 0)
    assert no_more_shedding <= back_to_batching <= 30


def test_a_sudden_spike_saturates_without_winding_up() -> None:
    controller = _controller()
    states = _feed(controller, [2_000.0] * 50)  # 20x the target: P alone saturates
    assert states[-1].pressure == PRESSURE_MAX
    assert states[-1].integral < 0.5  # conditional integration kept it from growing
    assert _feed(controller, [80.0], start=5.0)[0].admission == 0.0


def test_it_is_deterministic_and_ignores_time_going_backwards() -> None:
    samples = [120.0, 90.0, 300.0, None, 150.0, 60.0] * 5
    first, second = _controller(), _controller()
    assert _feed(first, samples) == _feed(second, samples)
    state = first.state
    assert first.update(0.0, 1.0) == state


def test_gains_shape_the_response() -> None:
    proportional = _feed(_controller(kp=0.5, ki=0.0, kd=0.0), [150.0] * 20)
    assert {round(state.pressure, 9) for state in proportional} == {0.25}  # P only: 0.5 * 0.5
    assert all(state.integral == 0.0 for state in proportional)


def test_the_scheduler_sheds_low_priority_to_hold_the_slo() -> None:
    """p95 target far below the model's run time: the controller soon sheds priority <= 0 requests."""
    executor = TestExecutor(cost={"m": 0.01})
    slo = {"p95_ms": 1.0, "interval_ms": 10.0, "window": 10}
    cfg = config(slo=slo, batching={"max_wait_ms": 5.0}, default_quota={"max_concurrent": 10_000})
    with Scheduler(cfg, executor, workers=1) as scheduler:
        assert scheduler.stats().max_wait_s == pytest.approx(0.005)
        for _ in range(12):  # priority 1: never shed by the controller
            scheduler.infer_sync("a", "m", tagged(1), priority=1, timeout=5)
        wait_until(lambda: scheduler.stats().admission >= 0.5, "the controller to shed")
        stats = scheduler.stats()
        assert stats.controller is not None
        assert stats.controller.p95_s is not None
        assert stats.controller.p95_s > 0.001
        assert stats.max_wait_s == 0.0
        assert stats.admission >= 0.5
        assert stats.queue_limit < 1024
        errors: list[OverloadError] = []
        for _ in range(10):
            try:
                scheduler.submit("a", "m", tagged(2), priority=0)
            except OverloadError as error:
                errors.append(error)
        shed = len(errors)
        assert shed >= 4
        assert all(error.shed for error in errors)
        assert scheduler.stats().total.rejected["overload"] == shed


def test_without_slo_the_wait_is_the_configured_one() -> None:
    cfg = config(batching={"max_wait_ms": 3.0})
    scheduler = Scheduler(cfg, TestExecutor(), workers=1, clock=ManualClock())
    stats = scheduler.stats()
    assert stats.controller is None
    assert stats.max_wait_s == pytest.approx(0.003)
    assert stats.admission == 0.0
