"""Config of the device kernel: model specs, memory and thread budgets, the inference scheduler."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from edgekernel.config.base import FilePath, Id, Model

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the model file")]
Version = Annotated[str, Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,31}$")]
Accelerator = Annotated[str, Field(min_length=1, max_length=64)]
DType = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]


class TensorSpec(Model):
    """An input or output as the caller sees it; checked against the model file when it loads."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    shape: Annotated[list[Annotated[int, Field(ge=1, le=2**31 - 1)] | None], Field(max_length=16)] = Field(
        description="None for a dynamic dimension"
    )
    dtype: DType = "float32"


class ModelSpec(Model):
    name: Id
    version: Version = "1"
    file: FilePath
    sha256: Sha256
    runtime: Literal["onnx", "litert"]
    inputs: Annotated[list[TensorSpec], Field(max_length=256)] = []
    outputs: Annotated[list[TensorSpec], Field(max_length=256)] = []
    accelerators: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=16)
    ] = Field(
        default_factory=lambda: ["cpu"],
        description="preferred execution providers / delegates, best first; cpu is always the fallback",
    )
    memory_mb: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)] = Field(
        description="estimate of what the loaded model holds in memory"
    )
    pinned: bool = Field(False, description="never evicted to make room for another model")
    max_batch: Annotated[int, Field(ge=1, le=4096)] = Field(
        8, description="largest micro-batch for a model whose first input dimension is dynamic"
    )


class AgentQuota(Model):
    weight: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] = 64


class BatchingConfig(Model):
    enabled: bool = True
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)] = 2.0


class SloConfig(Model):
    """A PID controller holds the p95 turnaround time at this target by adjusting batch wait and admission."""

    p95_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)]
    window: Annotated[int, Field(ge=10, le=100_000)] = 200
    kp: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = 0.6
    ki: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = 0.2
    kd: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)] = 0.05
    interval_ms: Annotated[float, Field(gt=0, le=60_000, allow_inf_nan=False)] = 100.0


class SchedulerConfig(Model):
    policy: Literal["fcfs", "sjf", "priority", "edf"] = "fcfs"
    workers: Annotated[int, Field(ge=1, le=256)] | None = Field(
        None, description="inference worker threads [default: one per core]"
    )
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    aging_ms: Annotated[float, Field(gt=0, le=600_000, allow_inf_nan=False)] = Field(
        500.0, description="priority policy: a waiting request gains one priority level per aging_ms"
    )
    batching: BatchingConfig = BatchingConfig()
    fairness_lag_ms: Annotated[float, Field(ge=0, le=60_000, allow_inf_nan=False)] = Field(
        20.0,
        description="how far an agent may run ahead of its weighted share before others go first; "
        "0 is strict weighted fair queueing",
    )
    agents: Annotated[dict[Id, AgentQuota], Field(max_length=1024)] = {}
    default_quota: AgentQuota = AgentQuota()
    slo: SloConfig | None = None
    loop_inline_ms: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = Field(
        5.0,
        description="a request from the event loop (an inline agent, CoAP) whose model takes at most this "
        "long at batch 1 (as measured) runs on the loop itself when a worker would take it at once, "
        "saving two thread hand-offs; 0 always hands it to a worker",
    )


class KernelConfig(Model):
    memory_budget_mb: Annotated[float, Field(gt=0, le=10_000_000, allow_inf_nan=False)] = 512.0
    threads: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        None, description="thread budget shared by every model session [default: the number of cores]"
    )
    cache_dir: FilePath | None = Field(
        None, description="optimized-graph cache [default: data_dir/model-cache]"
    )
    scheduler: SchedulerConfig = SchedulerConfig()
    models: Annotated[list[ModelSpec], Field(max_length=256)] = []

    @model_validator(mode="after")
    def _unique_models(self) -> KernelConfig:
        seen: set[str] = set()
        for spec in self.models:
            if spec.name in seen:
                raise ValueError(f"model {spec.name!r} is configured twice")
            seen.add(spec.name)
        pinned = sum(spec.memory_mb for spec in self.models if spec.pinned)
        if pinned > self.memory_budget_mb:
            raise ValueError(
                f"pinned models need {pinned:g} MB, over the {self.memory_budget_mb:g} MB budget"
            )
        return self
