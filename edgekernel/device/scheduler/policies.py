"""Queueing policies: which queued request runs next. Smaller keys run first.

A policy gives two keys. `queue_key` orders the requests of one (agent, model) queue and must not change
while a request waits. `head_key` compares the heads of different queues and may read the cost model.
Every key ends with the arrival sequence number, so ties are first come, first served.

* FCFS — arrival order.
* SJF — the estimated service time of the request's model at batch size 1 (an EWMA the scheduler
  measures); a model never measured counts as free until its first batch is timed.
* Priority with aging — effective priority = priority + waited / aging, higher first. Ordering by it
  at any instant equals ordering by priority - arrival / aging, which does not change with time, so
  the heap stays valid: a request of priority p is overtaken only by requests that arrive less than
  (p' - p) * aging after it — no starvation.
* EDF — earliest absolute deadline first; requests without a deadline after them, first come first served.
"""

from __future__ import annotations

import math
from typing import ClassVar

from edgekernel.config.kernel import SchedulerConfig
from edgekernel.device.scheduler.request import Request
from edgekernel.device.scheduler.stats import CostModel

Key = tuple[float, ...]


class Policy:
    """Base: first come, first served."""

    name: ClassVar[str] = "fcfs"

    def queue_key(self, request: Request) -> Key:
        return (request.seq,)

    def head_key(self, request: Request, costs: CostModel) -> Key:
        return self.queue_key(request)


class Fcfs(Policy):
    name = "fcfs"


class Sjf(Policy):
    name = "sjf"

    def head_key(self, request: Request, costs: CostModel) -> Key:
        return (costs.estimate(request.model, 1), request.seq)


class PriorityAging(Policy):
    name = "priority"

    def __init__(self, aging_s: float) -> None:
        if not aging_s > 0:
            raise ValueError(f"aging_s must be > 0, not {aging_s}")
        self.aging_s = aging_s

    def queue_key(self, request: Request) -> Key:
        return (request.arrival / self.aging_s - request.priority, request.seq)


class Edf(Policy):
    name = "edf"

    def queue_key(self, request: Request) -> Key:
        if request.deadline is None:
            return (1.0, math.inf, request.seq)
        return (0.0, request.deadline, request.seq)


def policy_for(config: SchedulerConfig) -> Policy:
    """The policy a kernel's config names."""
    match config.policy:
        case "fcfs":
            return Fcfs()
        case "sjf":
            return Sjf()
        case "priority":
            return PriorityAging(config.aging_ms / 1e3)
        case "edf":
            return Edf()
