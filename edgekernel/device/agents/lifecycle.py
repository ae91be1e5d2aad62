"""An agent's life, as a state machine that takes the time from its caller (tests use a fake clock).

    starting → running → stopping → stopped
        ↓         ↓
        failed → backoff → starting        (restart policy and backoff decide)
        failed → broken                    (max_failures within failure_window_s)
    broken → starting                      (cleared: an agent-restart command or a new generation)

A run that ends by itself is `stopped` when it returned and `failed` when it raised (or, for a process
agent, died or went silent). `always` restarts both, `on-failure` only failures, `never` neither.
The backoff starts at `first_s`, doubles up to `cap_s`, takes off up to `jitter` of itself at
random (so a fleet restarting together spreads out), and starts over once a run stayed up for
`reset_after_s`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class AgentState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    BACKOFF = "backoff"
    BROKEN = "broken"


class RestartPolicy(StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


_NEXT: dict[AgentState, frozenset[AgentState]] = {
    AgentState.STARTING: frozenset(
        {AgentState.RUNNING, AgentState.FAILED, AgentState.STOPPING, AgentState.BROKEN}
    ),
    AgentState.RUNNING: frozenset({AgentState.STOPPING, AgentState.STOPPED, AgentState.FAILED}),
    AgentState.STOPPING: frozenset({AgentState.STOPPED}),
    AgentState.STOPPED: frozenset({AgentState.STARTING, AgentState.BACKOFF}),
    AgentState.FAILED: frozenset({AgentState.BACKOFF, AgentState.BROKEN, AgentState.STARTING}),
    AgentState.BACKOFF: frozenset({AgentState.STARTING, AgentState.STOPPED}),
    AgentState.BROKEN: frozenset({AgentState.STARTING, AgentState.STOPPED}),
}


class TransitionError(RuntimeError):
    """A transition the state machine does not have (a bug in the supervisor, not the agent's fault)."""


@dataclass(slots=True)
class Backoff:
    first_s: float = 0.5
    cap_s: float = 60.0
    reset_after_s: float = 60.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self, ran_for_s: float) -> float:
        """The wait before the next start, after a run that lasted `ran_for_s`."""
        if ran_for_s >= self.reset_after_s:
            self.attempt = 0
        base = min(self.cap_s, self.first_s * 2.0**self.attempt)
        if base < self.cap_s:
            self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class Change:
    agent: str
    old: AgentState
    new: AgentState
    at: float
    reason: str = ""


@dataclass(slots=True)
class Lifecycle:
    agent: str
    policy: RestartPolicy = RestartPolicy.ON_FAILURE
    backoff: Backoff = field(default_factory=Backoff)
    max_failures: int = 5
    failure_window_s: float = 300.0
    on_change: Callable[[Change], None] | None = None
    state: AgentState = AgentState.STOPPED
    since: float = 0.0
    restarts: int = 0
    failures: int = 0
    last_error: str = ""
    retry_in_s: float | None = None
    _started_at: float | None = None
    _recent: deque[float] = field(default_factory=deque)

    def _go(self, new: AgentState, now: float, reason: str = "") -> None:
        if new not in _NEXT[self.state]:
            raise TransitionError(f"agent {self.agent}: no transition {self.state} → {new}")
        old, self.state, self.since = self.state, new, now
        if self.on_change is not None:
            self.on_change(Change(self.agent, old, new, now, reason))

    def starting(self, now: float) -> None:
        if self.state in (AgentState.FAILED, AgentState.STOPPED, AgentState.BACKOFF) and self._started_at:
            self.restarts += 1
        self.retry_in_s = None
        self._go(AgentState.STARTING, now)

    def running(self, now: float) -> None:
        self._started_at = now
        self._go(AgentState.RUNNING, now)

    def stopping(self, now: float, reason: str = "") -> None:
        self._go(AgentState.STOPPING, now, reason)

    def stopped(self, now: float, reason: str = "") -> None:
        """Stopped on request (after `stopping`), or a giving-up end of a BACKOFF or BROKEN state."""
        self.retry_in_s = None
        self._go(AgentState.STOPPED, now, reason)

    def ended(self, now: float, error: str | None) -> float | None:
        """A run ended by itself: returned (`error` None) or failed. Returns the wait before the next
        start, or None when the agent stays down (policy, or broken)."""
        ran_for = now - self._started_at if self._started_at is not None else 0.0
        if error is None:
            self._go(AgentState.STOPPED, now, "returned")
            if self.policy is not RestartPolicy.ALWAYS:
                return None
            return self._wait(now, ran_for, "returned")
        self.failures += 1
        self.last_error = error
        self._go(AgentState.FAILED, now, error)
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self.failure_window_s:
            self._recent.popleft()
        if len(self._recent) >= self.max_failures:
            self._go(
                AgentState.BROKEN,
                now,
                f"{len(self._recent)} failures within {self.failure_window_s:g} s; last: {error}",
            )
            return None
        if self.policy is RestartPolicy.NEVER:
            return None
        return self._wait(now, ran_for, error)

    def _wait(self, now: float, ran_for: float, reason: str) -> float:
        delay = self.backoff.next_delay(ran_for)
        self.retry_in_s = delay
        self._go(AgentState.BACKOFF, now, reason)
        return delay

    def broken(self, now: float, error: str) -> None:
        """Down until cleared: what failed will not mend by itself (its settings do not validate)."""
        self.failures += 1
        self.last_error = error
        self.retry_in_s = None
        self._go(AgentState.BROKEN, now, error)

    def clear(self, now: float) -> None:
        """Forget past failures (an agent-restart command, a new desired generation): the next start
        is a fresh one, with the first backoff."""
        self._recent.clear()
        self.backoff.reset()
        self.retry_in_s = None

    @property
    def down(self) -> bool:
        """Stays down until cleared or started again by its owner."""
        return self.state in (AgentState.STOPPED, AgentState.BROKEN, AgentState.FAILED)
