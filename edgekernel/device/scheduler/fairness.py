"""Weighted fairness between agents: virtual time with a bounded lag.

Each agent has a virtual time: the service time it has been charged divided by its weight. Among the
agents with queued requests ("backlogged"), only those within `lag_s` of the smallest virtual time are
*eligible*; the policy picks the best request among eligible agents. With lag 0 this is plain weighted
fair queueing (the policy orders each agent's own requests, and breaks ties between agents); with a
larger lag the policy's global order (a priority, an EDF deadline) wins across agents in the short term,
while in the long term every backlogged agent's virtual time stays within lag + one request of the
others — so under saturation each agent's share of service time is proportional to its weight.

An agent is charged its estimated cost when a request is taken, corrected to its share of the measured
batch time when the batch completes. An agent that becomes backlogged after a pause starts at the
current floor (the smallest virtual time seen while dispatching), so idle time earns no credit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class FairShare:
    def __init__(self, weight: Callable[[str], float], *, lag_s: float) -> None:
        if lag_s < 0:
            raise ValueError(f"lag_s must be >= 0, not {lag_s}")
        self._weight = weight
        self.lag_s = lag_s
        self._vtime: dict[str, float] = {}
        self._floor = 0.0

    def vtime(self, agent: str) -> float:
        return self._vtime.get(agent, self._floor)

    def activate(self, agent: str) -> None:
        """`agent` has a queued request again, after none."""
        self._vtime[agent] = max(self._vtime.get(agent, 0.0), self._floor)

    def minimum(self, backlogged: Iterable[str]) -> float:
        """The smallest virtual time of the backlogged agents; it also raises the floor."""
        times = [self.vtime(agent) for agent in backlogged]
        if times:
            self._floor = max(self._floor, min(times))
        return min(times, default=self._floor)

    def eligible(self, agent: str, minimum: float) -> bool:
        return self.vtime(agent) <= minimum + self.lag_s

    def charge(self, agent: str, seconds: float) -> None:
        """Add (or with a negative value, refund) service time."""
        self._vtime[agent] = self.vtime(agent) + seconds / self._weight(agent)
