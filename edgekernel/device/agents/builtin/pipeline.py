"""`pipeline`: a stream → windows (size, hop) → preprocess → model → score → threshold with hysteresis
→ an output stream of scores and `anomaly` events when the score crosses into and out of the alarm.

    agents:
      - name: vibration-watch
        agent: pipeline
        config: {source: vibration, model: vibration-anomaly, window: 128, hop: 64}
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekernel.config.base import Id
from edgekernel.device.agents.context import Agent, Context
from edgekernel.errors import EdgeKernelError

if TYPE_CHECKING:
    import numpy as np


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Id = Field(description="the stream to watch (a sensor's or another agent's)")
    model: Id = Field(description="the model that scores a window")
    window: Annotated[int, Field(ge=1, le=65_536)] = 128
    hop: Annotated[int, Field(ge=1, le=65_536)] = 64
    offset: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    features: Literal["raw", "fft"] = Field(
        "raw", description="raw: the scaled window; fft: its magnitude spectrum (window // 2 + 1 values)"
    )
    score_index: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        1, description="which of the model's outputs is the score (vibration-anomaly: 1 = P(anomaly))"
    )
    on: Annotated[float, Field(allow_inf_nan=False)] = Field(0.8, description="a score at or above raises")
    off: Annotated[float, Field(allow_inf_nan=False)] = Field(0.5, description="a score at or below clears")
    output: Id = Field("anomaly-score", description="the stream the scores go to")
    event: Id = "anomaly"
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    deadline_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)] | None = 1000.0

    @model_validator(mode="after")
    def _sane(self) -> PipelineConfig:
        if self.hop > self.window:
            raise ValueError("hop must be at most window")
        if self.off > self.on:
            raise ValueError("off must be at most on (hysteresis)")
        return self


def features(window: np.ndarray, config: PipelineConfig) -> np.ndarray:
    """The model's input for one window: [1, n, 1] float32."""
    import numpy as np  # noqa: PLC0415 (checking the settings of a pipeline needs no NumPy)

    values = (window - config.offset) * config.scale
    if config.features == "fft":
        values = np.abs(np.fft.rfft(values)) / len(values)
    return values.astype(np.float32).reshape(1, -1, 1)


class Pipeline(Agent):
    Config = PipelineConfig

    async def run(self, ctx: Context) -> None:
        import numpy as np  # noqa: PLC0415 (checking the settings of a pipeline needs no NumPy)

        config: PipelineConfig = ctx.config
        values: deque[float] = deque(maxlen=config.window)
        times: deque[float] = deque(maxlen=config.window)
        alarm = bool(ctx.state.get("alarm", False))
        fresh = 0
        skipped = 0
        async for sample in ctx.subscribe(config.source, depth=max(4 * config.window, 1024)):
            if not isinstance(sample.value, float):
                continue  # a multi-field sample: not this pipeline's shape
            values.append(sample.value)
            times.append(sample.ts)
            fresh += 1
            if len(values) < config.window or fresh < config.hop:
                continue
            fresh = 0
            try:
                outputs = await ctx.infer(
                    config.model,
                    features(np.fromiter(values, dtype=np.float64), config),
                    priority=config.priority,
                    deadline_ms=config.deadline_ms,
                )
            except EdgeKernelError as err:  # overloaded or late: this window is skipped, the next is not
                skipped += 1
                if skipped % 100 == 1:
                    ctx.log.warning("%s: window skipped (%d so far): %s", ctx.agent, skipped, err)
                continue
            score = float(np.asarray(outputs[0]).reshape(-1)[config.score_index])
            await ctx.publish(config.output, score, ts=times[-1])
            if (not alarm and score >= config.on) or (alarm and score <= config.off):
                alarm = not alarm
                await ctx.state.set("alarm", alarm)
                await ctx.event(
                    config.event,
                    {
                        "state": "raised" if alarm else "cleared",
                        "stream": config.source,
                        "score": round(score, 6),
                        "from_ts": times[0],
                        "to_ts": times[-1],
                    },
                )
