"""Dynamic micro-batching: a worker's batch grows with queued requests of the same model.

A worker takes the best request by policy, then more queued requests of that model (in policy order,
fairness permitting) up to the model's max batch. If the batch is not full and another batch is running,
it waits for more, until the oldest request of the batch has waited `max_wait` — or until waiting longer
would make a member miss its deadline. When no other batch is running the box is idle and the batch goes
at once. A model has at most one batch in flight (forming or running): a runtime session is used by one
thread at a time, and requests that queue meanwhile make the next batch bigger. Everything here runs
under the scheduler's lock (`Condition.wait` releases it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from edgekernel.device.scheduler.queue import RunQueue
from edgekernel.device.scheduler.request import Request
from edgekernel.device.scheduler.stats import CostModel


@dataclass(eq=False, slots=True)
class Batch:
    model: str
    max_batch: int
    requests: list[Request] = field(default_factory=list)
    started: float | None = None  # when it began to run; None while forming

    @property
    def full(self) -> bool:
        return len(self.requests) >= self.max_batch

    def remaining(self, now: float, costs: CostModel) -> float:
        """Estimated seconds until it completes."""
        estimate = costs.estimate(self.model, len(self.requests))
        return estimate if self.started is None else max(0.0, estimate - (now - self.started))


def formation_deadline(batch: Batch, max_wait_s: float, costs: CostModel) -> float:
    """The latest time a forming batch may start."""
    until = min(request.arrival for request in batch.requests) + max_wait_s
    service = costs.estimate(batch.model, len(batch.requests) + 1)
    for request in batch.requests:
        if request.deadline is not None:
            until = min(until, request.deadline - service)
    return until


class Batcher:
    def __init__(self, queue: RunQueue, claim: Callable[[Request], bool]) -> None:
        self._queue = queue
        self._claim = claim  # False when the request's future was cancelled

    def open(self, head: Request) -> Batch:
        batch = Batch(head.model, max(1, head.max_batch), [head])
        self.fill(batch)
        return batch

    def fill(self, batch: Batch) -> None:
        while not batch.full:
            request = self._queue.pick(model=batch.model)
            if request is None:
                return
            if self._claim(request):
                batch.requests.append(request)

    def form(
        self,
        batch: Batch,
        condition: threading.Condition,
        *,
        max_wait: Callable[[], float],
        keep_waiting: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        """Wait for more requests while the batch has room and `keep_waiting()` (others are running)."""
        while not batch.full and keep_waiting():
            remaining = formation_deadline(batch, max_wait(), self._queue.costs) - clock()
            if remaining <= 0:
                return
            condition.wait(remaining)
            self.fill(batch)
