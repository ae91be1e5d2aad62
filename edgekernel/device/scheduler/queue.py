"""The run queue: one heap per (model, agent), picked by policy among the agents fairness allows.

Removal of a cancelled or expired request is lazy in the heaps (it is skipped when it reaches the head)
and eager in the counts; the heaps are compacted when dead entries outnumber live ones. Not thread-safe:
the scheduler calls it under its lock.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterator

from edgekernel.device.scheduler.fairness import FairShare
from edgekernel.device.scheduler.policies import Key, Policy
from edgekernel.device.scheduler.request import Request, State
from edgekernel.device.scheduler.stats import CostModel

_Entry = tuple[Key, Request]
_SLACK = 64  # dead heap entries tolerated beyond the live count before compacting


class RunQueue:
    def __init__(self, policy: Policy, fairness: FairShare, costs: CostModel) -> None:
        self.policy = policy
        self.fairness = fairness
        self.costs = costs
        self._heaps: dict[str, dict[str, list[_Entry]]] = {}  # model -> agent -> heap
        self._deadlines: list[tuple[float, int, Request]] = []
        self._per_agent: Counter[str] = Counter()
        self._per_model: Counter[str] = Counter()
        self._max_batch: dict[str, int] = {}  # model -> the latest request's max_batch
        self._dead = 0  # entries of the (model, agent) heaps no longer queued
        self.depth = 0

    def __len__(self) -> int:
        return self.depth

    def queued(self, *, model: str | None = None, agent: str | None = None) -> int:
        if model is not None:
            return self._per_model[model]
        return self.depth if agent is None else self._per_agent[agent]

    def push(self, request: Request) -> None:
        if self._per_agent[request.agent] == 0:
            self.fairness.activate(request.agent)
        agents = self._heaps.setdefault(request.model, {})
        heapq.heappush(agents.setdefault(request.agent, []), (self.policy.queue_key(request), request))
        if request.deadline is not None:
            heapq.heappush(self._deadlines, (request.deadline, request.seq, request))
            if len(self._deadlines) > 2 * self.depth + _SLACK:  # taken requests keep their entries
                self._deadlines = [entry for entry in self._deadlines if entry[2].state is State.QUEUED]
                heapq.heapify(self._deadlines)
        self._count(request, +1)
        self._max_batch[request.model] = request.max_batch

    def remove(self, request: Request) -> None:
        """Take a queued request out (cancelled, expired, dropped); it is marked done."""
        if request.state is State.QUEUED:
            request.state = State.DONE
            self._count(request, -1)
            self._dead += 1
            if self._dead > self.depth + _SLACK:
                self._compact()

    def expired(self, now: float) -> list[Request]:
        """Remove and return the queued requests whose deadline has passed."""
        gone: list[Request] = []
        while self._deadlines and self._deadlines[0][0] < now:
            request = heapq.heappop(self._deadlines)[2]
            if request.state is State.QUEUED:
                self.remove(request)
                gone.append(request)
        return gone

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][2].state is not State.QUEUED:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def drain(self) -> list[Request]:
        """Remove and return every queued request."""
        gone = [request for _, request in self._entries() if request.state is State.QUEUED]
        for request in gone:
            self.remove(request)
        self._heaps.clear()
        self._deadlines.clear()
        self._dead = 0
        return gone

    def pick(self, *, exclude: frozenset[str] = frozenset(), model: str | None = None) -> Request | None:
        """Take the best request by policy among eligible agents (any agent if none is eligible).

        `model` restricts the choice to one model (to fill a batch); `exclude` skips models.
        """
        minimum = self.fairness.minimum(agent for agent, n in self._per_agent.items() if n > 0)
        best: tuple[Key, Request] | None = None
        fallback: tuple[Key, Request] | None = None
        models = [model] if model is not None else list(self._heaps)
        for name in models:
            if name in exclude:
                continue
            for agent, heap in list(self._heaps.get(name, {}).items()):
                head = self._head(name, agent, heap)
                if head is None:
                    continue
                key = self.policy.head_key(head, self.costs)
                if self.fairness.eligible(agent, minimum):
                    if best is None or key < best[0]:
                        best = (key, head)
                elif fallback is None or key < fallback[0]:
                    fallback = (key, head)
        chosen = best or fallback
        if chosen is None:
            return None
        request = chosen[1]
        heapq.heappop(self._heaps[request.model][request.agent])
        request.state = State.TAKEN
        self._count(request, -1)
        request.charge = self.costs.estimate(request.model, 1)
        self.fairness.charge(request.agent, request.charge)
        return request

    def work_ahead(self, request: Request | None = None) -> dict[str, float]:
        """Estimated service seconds, per model, of the queued work that runs before `request` (all of it
        for None).

        Requests of a batch-capable model are counted in full batches of their max_batch. Fairness is
        ignored: this is the policy's order.
        """
        counts: Counter[str]
        if request is None:
            counts = self._per_model
        else:
            mine = self.policy.head_key(request, self.costs)
            counts = Counter(
                queued.model
                for _, queued in self._entries()
                if queued.state is State.QUEUED and self.policy.head_key(queued, self.costs) < mine
            )
        work: dict[str, float] = {}
        for model, count in counts.items():
            if count > 0:
                size = self._max_batch.get(model, 1)
                work[model] = math.ceil(count / size) * self.costs.estimate(model, min(size, count))
        return work

    def _head(self, model: str, agent: str, heap: list[_Entry]) -> Request | None:
        while heap and heap[0][1].state is not State.QUEUED:
            heapq.heappop(heap)
            self._dead -= 1
        if heap:
            return heap[0][1]
        agents = self._heaps[model]
        del agents[agent]
        if not agents:
            del self._heaps[model]
        return None

    def _compact(self) -> None:
        for model, agents in list(self._heaps.items()):
            for agent, heap in list(agents.items()):
                live = [entry for entry in heap if entry[1].state is State.QUEUED]
                if live:
                    heapq.heapify(live)
                    agents[agent] = live
                else:
                    del agents[agent]
            if not agents:
                del self._heaps[model]
        self._dead = 0

    def _entries(self) -> Iterator[_Entry]:
        for agents in self._heaps.values():
            for heap in agents.values():
                yield from heap

    def _count(self, request: Request, delta: int) -> None:
        self.depth += delta
        self._per_agent[request.agent] += delta
        self._per_model[request.model] += delta
        if self._per_agent[request.agent] == 0:
            del self._per_agent[request.agent]
        if self._per_model[request.model] == 0:
            del self._per_model[request.model]
