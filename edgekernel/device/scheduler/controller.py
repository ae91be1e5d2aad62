"""A PID controller that holds the p95 turnaround time at the SLO target.

Its one output is a *pressure* u in [0, 2], spent in two stages:

* 0 → 1 shrinks the batching wait linearly from its ceiling (``batching.max_wait_ms``) to 0;
* 1 → 2 raises the admission level a = u - 1 from 0 to 1: the scheduler sheds that fraction of new
  requests with priority <= 0, and caps the queue at ``max_queue * (1 - a)`` for everyone.

The error is normalised on the target, e = (p95 - target) / target, so the gains are dimensionless
(kp per unit of error, ki per unit of error and second, kd per unit of error per second). The derivative
is smoothed by a first-order filter. Anti-windup: the integral stops growing while the output is saturated
high (conditional integration), and it is clamped to [0, 1 / ki]: the integral alone can hold the
batching wait at 0 but never sheds, so shedding stops as soon as the latency is back under target
(a larger clamp kept shedding for many seconds after a transient), and a long calm does not delay the
reaction to the next overload. With no fresh latency (the box is idle) the controller relaxes as if
p95 were well under target.

Deterministic: time comes only from the `now` passed to `update`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekernel.config.kernel import SloConfig

PRESSURE_MAX = 2.0
INTEGRAL_MAX = 1.0  # the integral term's share of the pressure: up to "no batching wait", not shedding
IDLE_ERROR = -1.0  # the error fed when there is no fresh measurement
_D_SMOOTHING = 0.5  # weight of the newest derivative sample


@dataclass(frozen=True, slots=True)
class ControllerState:
    target_s: float
    p95_s: float | None  # the last measurement, None when there was none
    error: float
    integral: float
    pressure: float  # in [0, PRESSURE_MAX]
    max_wait_s: float  # the batching wait it allows now
    admission: float  # in [0, 1]: the fraction of low-priority requests shed


class SloController:
    def __init__(self, slo: SloConfig, *, max_wait_s: float) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, not {max_wait_s}")
        self.slo = slo
        self.target_s = slo.p95_ms / 1e3
        self.interval_s = slo.interval_ms / 1e3
        self.ceiling_s = max_wait_s
        self._last_time: float | None = None
        self._last_error: float | None = None
        self._integral = 0.0
        self._derivative = 0.0
        self._state = ControllerState(self.target_s, None, 0.0, 0.0, 0.0, max_wait_s, 0.0)

    @property
    def state(self) -> ControllerState:
        return self._state

    @property
    def max_wait_s(self) -> float:
        return self._state.max_wait_s

    @property
    def admission(self) -> float:
        return self._state.admission

    def update(self, now: float, p95_s: float | None) -> ControllerState:
        """Feed one measurement taken at `now` (None: nothing fresh, the box is idle)."""
        dt = self.interval_s if self._last_time is None else now - self._last_time
        if dt <= 0:
            return self._state
        self._last_time = now
        error = IDLE_ERROR if p95_s is None else (p95_s - self.target_s) / self.target_s
        kp, ki, kd = self.slo.kp, self.slo.ki, self.slo.kd
        if p95_s is not None and self._last_error is not None:
            raw = (error - self._last_error) / dt
            self._derivative += _D_SMOOTHING * (raw - self._derivative)
        else:
            self._derivative = 0.0
        self._last_error = error if p95_s is not None else None
        proportional = kp * error
        derivative = kd * self._derivative
        candidate = self._integral + error * dt
        if not (error > 0 and proportional + ki * candidate + derivative > PRESSURE_MAX):
            self._integral = candidate  # conditional integration: not while saturated high
        # the integral alone may hold the batching wait at 0, but shedding needs a present error
        self._integral = min(max(self._integral, 0.0), INTEGRAL_MAX / ki) if ki > 0 else 0.0
        pressure = min(max(proportional + ki * self._integral + derivative, 0.0), PRESSURE_MAX)
        self._state = ControllerState(
            target_s=self.target_s,
            p95_s=p95_s,
            error=error,
            integral=self._integral,
            pressure=pressure,
            max_wait_s=self.ceiling_s * max(0.0, 1.0 - pressure),
            admission=min(max(pressure - 1.0, 0.0), 1.0),
        )
        return self._state
