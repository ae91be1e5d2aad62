"""Admission: refuse at submit what the scheduler cannot serve, in this order.

1. closed — the scheduler is stopping or stopped (`SchedulerClosedError`);
2. quota — the agent already has `max_concurrent` requests queued or running (`QuotaError`);
3. overload — the queue is at its limit: `max_queue`, or lower while the SLO controller's admission
   level a > 0 caps it at ``max(workers, ceil(max_queue * (1 - a)))`` (`OverloadError`);
4. shed — with an SLO, a request of priority <= 0 whose estimated completion (below) is past the
   budget ``target * (0.8 - 0.7 a)`` is shed at once rather than queued to miss its p95 target; the
   controller's admission level a grows when the estimates prove optimistic
   (`OverloadError` with ``shed=True``);
5. deadline — the estimated completion is past the deadline (`DeadlineError`). The estimate is the
   larger of (queued work + remaining work of batches in flight) / workers and the work of the same
   model alone (a model runs one batch at a time), plus the request's own service time, from the
   measured cost model, with queued work counted in full batches. It first counts all queued work;
   only when that misses the deadline does it count just the work the policy runs first (EDF lets an
   urgent request skip ahead), which costs a scan of the queue. Models never measured count as free.

All under the scheduler's lock.
"""

from __future__ import annotations

import math

from edgekernel.config.kernel import AgentQuota, SchedulerConfig
from edgekernel.device.scheduler.errors import (
    DeadlineError,
    OverloadError,
    QuotaError,
    SchedulerClosedError,
    SchedulerError,
)
from edgekernel.device.scheduler.pool import Phase, WorkerPool
from edgekernel.device.scheduler.request import Request

# an estimate is a mean, the target a p95: admit what is estimated to finish within 80% of the target,
# and down to 10% of it at full admission pressure
SLO_BUDGET_BASE = 0.8
SLO_BUDGET_SQUEEZE = 0.7


class Admission:
    def __init__(self, config: SchedulerConfig, pool: WorkerPool, *, workers: int) -> None:
        self.config = config
        self.workers = workers
        self._pool = pool

    def quota(self, agent: str) -> AgentQuota:
        return self.config.agents.get(agent, self.config.default_quota)

    def queue_limit(self) -> int:
        level = self._pool.admission()
        maximum = self.config.max_queue
        if level <= 0:
            return maximum
        return max(min(self.workers, maximum), math.ceil(maximum * (1.0 - level)))

    def refuse(self, request: Request, now: float) -> tuple[str, SchedulerError] | None:
        """The reason (a stats label) and error to refuse `request` with, or None to accept it."""
        pool, agent, model = self._pool, request.agent, request.model
        if pool.phase not in (Phase.NEW, Phase.RUNNING):
            return "closed", SchedulerClosedError("the scheduler is stopped and takes no more requests")
        limit = self.quota(agent).max_concurrent
        if pool.active[agent] >= limit:
            return "quota", QuotaError(agent=agent, limit=limit)
        depth, queue_limit = len(pool.queue), self.queue_limit()
        if depth >= queue_limit:
            shed = queue_limit < self.config.max_queue
            return "overload", OverloadError(depth=depth, limit=queue_limit, shed=shed, model=model)
        controller = pool.controller
        if controller is not None and request.priority <= 0:
            budget = controller.target_s * (SLO_BUDGET_BASE - SLO_BUDGET_SQUEEZE * pool.admission())
            if self._estimate(request, pool.queue.work_ahead(), now) > budget:
                return "overload", OverloadError(depth=depth, limit=queue_limit, shed=True, model=model)
        if request.budget_s is not None:
            estimate = self.completion_estimate(request, now)
            if request.budget_s <= 0 or estimate > request.budget_s:
                error = DeadlineError(
                    stage="admission",
                    deadline_s=request.budget_s,
                    estimate_s=estimate,
                    agent=agent,
                    model=model,
                )
                return "deadline", error
        return None

    def completion_estimate(self, request: Request, now: float) -> float:
        """Seconds from `now` until `request` would complete if queued now."""
        estimate = self._estimate(request, self._pool.queue.work_ahead(), now)
        if request.budget_s is not None and estimate > request.budget_s:  # look closer
            estimate = self._estimate(request, self._pool.queue.work_ahead(request), now)
        return estimate

    def _estimate(self, request: Request, ahead: dict[str, float], now: float) -> float:
        costs = self._pool.queue.costs
        running = {batch.model: batch.remaining(now, costs) for batch in self._pool.inflight}
        spread = (sum(ahead.values()) + sum(running.values())) / self.workers
        serial = ahead.get(request.model, 0.0) + running.get(request.model, 0.0)  # one batch at a time
        return max(spread, serial) + costs.estimate(request.model, 1)
