"""What the scheduler measures: per-request times, counts by outcome, and the cost of each model.

Every completed request records its wait (queued → its batch starts), service (its batch's run time)
and turnaround (wait + service). Percentiles are nearest-rank over a sliding window of the most recent
completions. Not thread-safe: the scheduler calls all of this under its lock.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edgekernel.device.scheduler.controller import ControllerState

REJECT_REASONS = ("overload", "deadline", "quota", "closed")
FAIL_REASONS = ("error", "expired", "closed", "cancelled")


class CostModel:
    """EWMA of the measured service time per (model, batch size).

    A batch size never measured is estimated from the nearest measured one: a larger measured batch
    is taken as is (an upper bound), a smaller one scaled linearly. A model never measured costs 0:
    SJF runs it early, and admission cannot reject for it, until its first batch is timed.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._cost: dict[str, dict[int, float]] = {}

    def observe(self, model: str, batch: int, seconds: float) -> None:
        sizes = self._cost.setdefault(model, {})
        old = sizes.get(batch)
        sizes[batch] = seconds if old is None else old + self.alpha * (seconds - old)

    def known(self, model: str) -> bool:
        return model in self._cost

    def estimate(self, model: str, batch: int = 1) -> float:
        sizes = self._cost.get(model)
        if not sizes:
            return 0.0
        exact = sizes.get(batch)
        if exact is not None:
            return exact
        nearest = min(sizes, key=lambda size: (abs(size - batch), -size))
        return sizes[nearest] * max(1.0, batch / nearest)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Seconds; all 0 when `samples` is 0."""

    p50: float
    p95: float
    p99: float
    samples: int


@dataclass(frozen=True, slots=True)
class Timing:
    wait: Percentiles
    service: Percentiles
    turnaround: Percentiles


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Counts and times of one model, one agent, or everything.

    submitted = completed + sum(rejected) + sum(failed) + pending. `mean_batch` is the mean size of the
    batches this group's completed requests ran in.
    """

    submitted: int
    completed: int
    rejected: Mapping[str, int]  # overload, deadline, quota, closed
    failed: Mapping[str, int]  # error (the executor's), expired (in the queue), closed, cancelled
    pending: int  # queued or running
    mean_batch: float
    timing: Timing


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    policy: str
    workers: int
    uptime_s: float
    queue_depth: int
    queue_limit: int  # the effective limit (the controller may cap it below max_queue)
    running: int  # requests taken by workers: in a batch being formed or run
    batches: int
    mean_batch: float  # requests per batch, over every batch run
    utilisation: float  # busy worker time / (workers * uptime)
    max_wait_s: float  # the batching wait in force
    admission: float  # the fraction of low-priority requests being shed
    controller: ControllerState | None
    total: GroupStats
    models: Mapping[str, GroupStats]
    agents: Mapping[str, GroupStats]


def percentiles(samples: deque[float]) -> Percentiles:
    if not samples:
        return Percentiles(0.0, 0.0, 0.0, 0)
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return Percentiles(rank(0.50), rank(0.95), rank(0.99), n)


class _Group:
    __slots__ = ("batch_sum", "completed", "failed", "rejected", "service", "submitted", "turnaround", "wait")

    def __init__(self, window: int) -> None:
        self.submitted = 0
        self.completed = 0
        self.batch_sum = 0
        self.rejected: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.wait: deque[float] = deque(maxlen=window)
        self.service: deque[float] = deque(maxlen=window)
        self.turnaround: deque[float] = deque(maxlen=window)

    def snapshot(self) -> GroupStats:
        done = self.completed + sum(self.rejected.values()) + sum(self.failed.values())
        return GroupStats(
            submitted=self.submitted,
            completed=self.completed,
            rejected=MappingProxyType({reason: self.rejected[reason] for reason in REJECT_REASONS}),
            failed=MappingProxyType({reason: self.failed[reason] for reason in FAIL_REASONS}),
            pending=self.submitted - done,
            mean_batch=self.batch_sum / self.completed if self.completed else 0.0,
            timing=Timing(percentiles(self.wait), percentiles(self.service), percentiles(self.turnaround)),
        )


class Recorder:
    """Counts and latency windows for everything, per model and per agent."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.total = _Group(window)
        self._models: dict[str, _Group] = {}
        self._agents: dict[str, _Group] = {}
        self.batches = 0
        self.batched_requests = 0
        self.busy_s = 0.0

    def _groups(self, agent: str, model: str) -> tuple[_Group, _Group, _Group]:
        by_model = self._models.get(model) or self._models.setdefault(model, _Group(self.window))
        by_agent = self._agents.get(agent) or self._agents.setdefault(agent, _Group(self.window))
        return self.total, by_model, by_agent

    def submitted(self, agent: str, model: str) -> None:
        for group in self._groups(agent, model):
            group.submitted += 1

    def rejected(self, agent: str, model: str, reason: str) -> None:
        for group in self._groups(agent, model):
            group.rejected[reason] += 1

    def failed(self, agent: str, model: str, reason: str) -> None:
        for group in self._groups(agent, model):
            group.failed[reason] += 1

    def completed(self, agent: str, model: str, *, wait: float, service: float, batch: int) -> None:
        for group in self._groups(agent, model):
            group.completed += 1
            group.batch_sum += batch
            group.wait.append(wait)
            group.service.append(service)
            group.turnaround.append(wait + service)

    def batch_ran(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.batched_requests += size
        self.busy_s += seconds

    def p95_turnaround(self) -> float | None:
        samples = self.total.turnaround
        return percentiles(samples).p95 if samples else None

    def models(self) -> Mapping[str, GroupStats]:
        return MappingProxyType({name: group.snapshot() for name, group in sorted(self._models.items())})

    def agents(self) -> Mapping[str, GroupStats]:
        return MappingProxyType({name: group.snapshot() for name, group in sorted(self._agents.items())})
