"""The device kernel's inference scheduler, independent of how models are loaded.

Agents submit requests (agent, model, inputs, priority, optional deadline) and get a future. A pool of
worker threads runs them on an `Executor` the kernel provides, in the order of a policy (FCFS, SJF,
priority with aging, EDF) with weighted fairness between agents, in dynamic micro-batches for models
with a batch dimension. Admission refuses early what cannot be served: a full queue, an agent over its
quota, a deadline that cannot be met; an optional PID controller holds a p95 latency SLO by shrinking
the batching wait and then shedding low-priority load. `Scheduler.stats()` reports it all.

A request's inputs are what the model takes to run it alone (with its batch dimension, if the model has
one); the executor concatenates a batch along axis 0 and splits the outputs back (see request.py). A
model has at most one batch in flight, since a runtime session is used by one thread at a time.

    with Scheduler(config.scheduler, executor) as scheduler:
        outputs = await scheduler.infer("camera", "detector", [frame], deadline_s=0.05)
"""

from edgekernel.device.scheduler.controller import ControllerState, SloController
from edgekernel.device.scheduler.errors import (
    DeadlineError,
    OverloadError,
    QuotaError,
    SchedulerClosedError,
    SchedulerError,
)
from edgekernel.device.scheduler.policies import Edf, Fcfs, Policy, PriorityAging, Sjf, policy_for
from edgekernel.device.scheduler.request import Executor, FloatArray
from edgekernel.device.scheduler.scheduler import Scheduler
from edgekernel.device.scheduler.stats import CostModel, GroupStats, Percentiles, SchedulerStats, Timing

__all__ = [
    "ControllerState",
    "CostModel",
    "DeadlineError",
    "Edf",
    "Executor",
    "Fcfs",
    "FloatArray",
    "GroupStats",
    "OverloadError",
    "Percentiles",
    "Policy",
    "PriorityAging",
    "QuotaError",
    "Scheduler",
    "SchedulerClosedError",
    "SchedulerError",
    "SchedulerStats",
    "Sjf",
    "SloController",
    "Timing",
    "policy_for",
]
