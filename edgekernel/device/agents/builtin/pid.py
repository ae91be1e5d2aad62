"""`pid`: holds a measured stream at a setpoint (e.g. a temperature, by a fan's duty), with output
limits and anti-windup; its command and its error are telemetry streams.

    agents:
      - name: cooling
        agent: pid
        config: {source: temperature, setpoint: 45, kp: 8, ki: 0.5, direction: reverse,
                 output_min: 0, output_max: 100, output: fan-duty}

`direction: reverse` is for a plant whose measurement falls as the output rises (more fan, less
heat). The derivative acts on the measurement, not the error, so a setpoint change gives no kick.
Anti-windup is conditional integration: while the output is held at a limit, the integral does not
grow further that way, so the loop leaves saturation as soon as the error turns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekernel.config.base import Id
from edgekernel.device.agents.context import Agent, Context

Gain = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
Level = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]
MAX_DT_S = 60.0  # a gap longer than this (a stalled sensor) is not integrated as one step


class PidConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Id = Field(description="the measured stream")
    setpoint: Level
    kp: Gain = 1.0
    ki: Gain = 0.0
    kd: Gain = 0.0
    direction: Literal["direct", "reverse"] = Field(
        "direct", description="reverse: the measurement falls as the output rises"
    )
    output_min: Level = 0.0
    output_max: Level = 100.0
    output: Id = Field("pid-output", description="the stream the command goes to")
    error_stream: Id = Field("pid-error", description="the stream the error (setpoint - measurement) goes to")
    actuate: Id | None = Field(
        None,
        description="a sensor stream whose input the command drives through ctx.actuate (the sim plant's "
        "fan: output_max 1); unset, the command is only published",
    )

    @model_validator(mode="after")
    def _limits(self) -> PidConfig:
        if self.output_min >= self.output_max:
            raise ValueError("output_min must be below output_max")
        return self


@dataclass(slots=True)
class Pid:
    """A discrete PID controller; `step` takes a measurement and the seconds since the last one."""

    kp: float
    ki: float
    kd: float
    setpoint: float
    output_min: float
    output_max: float
    reverse: bool = False
    integral: float = 0.0
    last_measurement: float | None = None

    def error(self, measurement: float) -> float:
        return self.setpoint - measurement

    def step(self, measurement: float, dt: float) -> float:
        if not math.isfinite(measurement):
            raise ValueError(f"measurement must be finite, got {measurement!r}")
        sign = -1.0 if self.reverse else 1.0
        error = sign * self.error(measurement)
        dt = min(dt, MAX_DT_S) if math.isfinite(dt) and dt > 0 else 0.0
        derivative = 0.0
        if self.last_measurement is not None and dt > 0:
            derivative = -sign * self.kd * (measurement - self.last_measurement) / dt
        self.last_measurement = measurement
        proportional = self.kp * error
        integral = self.integral + self.ki * error * dt
        unclamped = proportional + integral + derivative
        pushing_past = (unclamped > self.output_max and error > 0) or (
            unclamped < self.output_min and error < 0
        )
        if not pushing_past:
            self.integral = self._clamp(integral)
        return self._clamp(proportional + self.integral + derivative)

    def _clamp(self, value: float) -> float:
        if not math.isfinite(value):  # gains times a huge error: the limit it points at
            return self.output_max if value > 0 else self.output_min
        return min(self.output_max, max(self.output_min, value))


class PidAgent(Agent):
    Config = PidConfig

    async def run(self, ctx: Context) -> None:
        config: PidConfig = ctx.config
        pid = Pid(
            config.kp,
            config.ki,
            config.kd,
            config.setpoint,
            config.output_min,
            config.output_max,
            reverse=config.direction == "reverse",
        )
        last_ts: float | None = None
        async for sample in ctx.subscribe(config.source):
            if not isinstance(sample.value, float):
                continue
            dt = 0.0 if last_ts is None else sample.ts - last_ts
            last_ts = sample.ts
            command = pid.step(sample.value, dt)
            if config.actuate is not None:
                await ctx.actuate(config.actuate, command)
            await ctx.publish(config.output, command, ts=sample.ts)
            await ctx.publish(config.error_stream, pid.error(sample.value), ts=sample.ts)
