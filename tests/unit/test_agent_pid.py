"""The `pid` agent's controller: output limits, anti-windup, direction, and a closed loop on a simulated
first-order thermal plant (fan duty -> temperature)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgekernel.device.agents.builtin.pid import Pid, PidConfig


def controller(**kw: float | bool) -> Pid:
    settings: dict[str, float | bool] = {
        "kp": 2.0,
        "ki": 0.5,
        "kd": 0.0,
        "setpoint": 10.0,
        "output_min": 0.0,
        "output_max": 100.0,
    }
    settings.update(kw)
    return Pid(**settings)  # type: ignore[arg-type]


def test_output_is_held_within_its_limits() -> None:
    pid = controller(kp=1000.0)
    assert pid.step(-1e6, 0.1) == 100.0
    assert pid.step(1e6, 0.1) == 0.0


def test_anti_windup_leaves_saturation_as_soon_as_the_error_turns() -> None:
    pid = controller(kp=1.0, ki=1.0)
    for _ in range(1000):  # far below the setpoint for a long time: saturated high
        assert pid.step(-100.0, 1.0) == 100.0
    assert pid.integral <= 100.0
    # just above the setpoint: a wound-up integral would hold the output high for ~1000 s more
    out = pid.step(10.5, 1.0)
    assert out < 100.0
    for _ in range(200):
        out = pid.step(10.5, 1.0)
    assert out == 0.0


def test_reverse_acting_raises_the_output_when_the_measurement_is_too_high() -> None:
    fan = controller(reverse=True, ki=0.0)
    assert fan.step(20.0, 1.0) == pytest.approx(20.0)  # 10 over the setpoint, kp 2
    assert fan.step(5.0, 1.0) == 0.0


def test_derivative_acts_on_the_measurement_so_a_setpoint_change_gives_no_kick() -> None:
    pid = controller(kp=0.0, ki=0.0, kd=1.0, output_min=-100.0)
    pid.step(10.0, 1.0)
    pid.setpoint = 50.0
    assert pid.step(10.0, 1.0) == 0.0
    assert pid.step(12.0, 1.0) == pytest.approx(-2.0)


def test_a_bad_time_step_is_not_integrated() -> None:
    pid = controller(kp=0.0, ki=1.0)
    for dt in (0.0, -1.0, float("nan"), float("inf")):
        pid.step(0.0, dt)
    assert pid.integral == 0.0
    with pytest.raises(ValueError, match="finite"):
        pid.step(float("nan"), 1.0)


def test_holds_a_thermal_plant_at_its_setpoint() -> None:
    """A box heated by 60 degrees over ambient, cooled in proportion to the fan's duty."""
    ambient, heat, cooling, tau, dt = 25.0, 60.0, 0.6, 20.0, 0.5
    temperature = ambient + heat
    fan = controller(kp=4.0, ki=0.4, setpoint=55.0, reverse=True)
    history = []
    for _ in range(2000):
        duty = fan.step(temperature, dt)
        target = ambient + heat - cooling * duty
        temperature += (target - temperature) * dt / tau
        history.append(temperature)
    assert abs(history[-1] - 55.0) < 0.1
    assert max(history[-200:]) - min(history[-200:]) < 0.2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output_min": 100.0}, "below output_max"),
        ({"kp": -1.0}, "greater than or equal"),
        ({"direction": "sideways"}, "direct"),
        ({"setpoint": float("nan")}, "finite"),
    ],
)
def test_config_refuses_what_cannot_work(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PidConfig.model_validate({"source": "temperature", "setpoint": 45.0, **change})


finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@given(
    kp=st.floats(0, 1e6),
    ki=st.floats(0, 1e6),
    kd=st.floats(0, 1e6),
    low=st.floats(-1e6, 1e6),
    span=st.floats(1e-3, 1e6),
    reverse=st.booleans(),
    steps=st.lists(st.tuples(finite, st.floats(allow_nan=True, allow_infinity=True)), max_size=30),
)
def test_output_always_within_limits(
    kp: float,
    ki: float,
    kd: float,
    low: float,
    span: float,
    reverse: bool,
    steps: list[tuple[float, float]],
) -> None:
    pid = Pid(kp, ki, kd, 0.0, low, low + span, reverse=reverse)
    for measurement, dt in steps:
        out = pid.step(measurement, dt)
        assert low <= out <= low + span
