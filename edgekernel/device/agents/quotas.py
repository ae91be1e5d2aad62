"""Rate quotas of an agent's kernel calls: a token bucket per call kind, refilled continuously.

A call over its rate is refused at once with `AgentQuotaError` (the agent sees it; the kernel and the
other agents do not): waiting would only hide a runaway loop, and a caller that wants to pace itself
has `ctx.every`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgekernel.device.agents.errors import AgentQuotaError


@dataclass(slots=True)
class RateLimit:
    """At most `rate` calls a second on average, `burst` at once; `rate` None is no limit."""

    what: str
    rate: float | None
    burst: float
    clock: Callable[[], float] = time.monotonic
    refused: int = 0
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst
        self._at = self.clock()

    def take(self, agent: str, n: float = 1.0) -> None:
        if self.rate is None:
            return
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            self.refused += 1
            raise AgentQuotaError(
                agent, self.what, f"agent {agent} is over its {self.what} quota of {self.rate:g}/s"
            )
        self._tokens -= n
