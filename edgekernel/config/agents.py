"""Config of the agents a device runs: which one (its entry point name), how it is isolated and
restarted, its quotas, and its own settings (checked against the agent's Config model when it loads).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, JsonValue, model_validator

from edgekernel.config.base import Id, Model

Rate = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]


class AgentQuotas(Model):
    max_concurrent_infer: Annotated[int, Field(ge=1, le=100_000)] = Field(
        8, description="inferences of this agent in the scheduler at once"
    )
    infer_rate: Rate | None = Field(None, description="inferences a second, on average [default: no limit]")
    publish_rate: Rate | None = Field(
        100.0, description="publish and event calls a second, on average (bursts up to 2 s of it)"
    )
    memory_mb: Annotated[float, Field(ge=16, le=1_000_000, allow_inf_nan=False)] | None = Field(
        None,
        description="isolation: process only. cgroup v2 memory.max when the device may write it, else "
        "RLIMIT_AS [default: no limit]",
    )
    cpu_weight: Annotated[int, Field(ge=1, le=10_000)] | None = Field(
        None, description="isolation: process only. cgroup v2 cpu.weight, else a nice value [default: 100]"
    )
    weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = Field(
        1.0, description="the agent's share of the inference workers when they are busy"
    )


class AgentSpec(Model):
    name: Id = Field(description="this agent's name on the device (its stream and state key)")
    agent: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")] = Field(
        description="the agent's kind: an entry point name in the group edgekernel.agents"
    )
    isolation: Literal["inline", "process"] = Field(
        "inline", description="inline: an asyncio task in the kernel; process: a child process"
    )
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    max_failures: Annotated[int, Field(ge=1, le=1000)] = Field(
        5, description="failures within failure_window_s that mark the agent broken"
    )
    failure_window_s: Annotated[float, Field(ge=1, le=86_400, allow_inf_nan=False)] = 300.0
    backoff_first_s: Annotated[float, Field(ge=0.01, le=3600, allow_inf_nan=False)] = 0.5
    backoff_cap_s: Annotated[float, Field(ge=0.01, le=86_400, allow_inf_nan=False)] = 60.0
    stop_timeout_s: Annotated[float, Field(ge=0.1, le=600, allow_inf_nan=False)] = Field(
        5.0, description="a stop not finished in this time kills the agent (and is counted)"
    )
    heartbeat_timeout_s: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = Field(
        15.0, description="isolation: process only. a child silent this long is killed as hung"
    )
    quotas: AgentQuotas = AgentQuotas()
    config: Annotated[dict[str, JsonValue], Field(max_length=1024)] = Field(
        default_factory=dict, description="the agent's own settings, checked by its Config model"
    )

    @model_validator(mode="after")
    def _backoff_ordered(self) -> AgentSpec:
        if self.backoff_cap_s < self.backoff_first_s:
            raise ValueError("backoff_cap_s must be at least backoff_first_s")
        return self
