"""Errors of the inference scheduler.

    EdgeKernelError
    └── SchedulerError          the scheduler refused or dropped a request
        ├── OverloadError       queue full, or shed by the SLO controller (.depth, .limit, .shed)
        ├── DeadlineError       cannot meet its deadline: at admission, or expired in the queue (.stage)
        ├── QuotaError          the agent already has max_concurrent requests queued or running
        └── SchedulerClosedError  stopped (or never started and now stopped): no more requests

Admission errors are raised by `Scheduler.submit`; everything after admission (an expired request, a
stop without drain, the executor's own error) arrives through the request's future.
"""

from __future__ import annotations

from typing import Literal

from edgekernel.errors import EdgeKernelError


class SchedulerError(EdgeKernelError):
    """The scheduler refused or dropped a request."""


class OverloadError(SchedulerError):
    """The queue is full, or the SLO controller shed this request to hold the latency target."""

    def __init__(self, *, depth: int, limit: int, shed: bool = False, model: str | None = None) -> None:
        self.depth = depth
        self.limit = limit
        self.shed = shed
        self.model = model
        why = "shed by the SLO controller" if shed else "queue full"
        super().__init__(f"scheduler overloaded ({why}): {depth} queued, limit {limit}")


class DeadlineError(SchedulerError):
    """The request cannot meet its deadline.

    `stage` is ``admission`` (rejected at submit: `estimate_s` is the estimated time to completion) or
    ``queue`` (expired while waiting: `estimate_s` is how long it waited). `deadline_s` is the budget the
    caller gave, in seconds from submission.
    """

    def __init__(
        self,
        *,
        stage: Literal["admission", "queue"],
        deadline_s: float,
        estimate_s: float,
        agent: str,
        model: str,
    ) -> None:
        self.stage = stage
        self.deadline_s = deadline_s
        self.estimate_s = estimate_s
        self.agent = agent
        self.model = model
        budget = f"{deadline_s * 1e3:.1f} ms deadline"
        if stage == "admission":
            detail = f"cannot meet its {budget}: estimated completion in {estimate_s * 1e3:.1f} ms"
        else:
            detail = f"expired after {estimate_s * 1e3:.1f} ms in the queue ({budget})"
        super().__init__(f"request of agent {agent!r} for model {model!r} {detail}")


class QuotaError(SchedulerError):
    """The agent already has its `max_concurrent` requests queued or running."""

    def __init__(self, *, agent: str, limit: int) -> None:
        self.agent = agent
        self.limit = limit
        super().__init__(f"agent {agent!r} is at its limit of {limit} concurrent requests")


class SchedulerClosedError(SchedulerError):
    """The scheduler is stopped (or stopping) and takes no more requests; queued ones were dropped."""
