"""Waiting for a condition, the one way every test does it.

A test waits until what it needs holds, never a fixed time, and never asserts that a count was
reached within some seconds: on a loaded machine (CI, two cores shared with other jobs) a program
may run five to ten times slower than on an idle one. Deadlines are therefore generous; they cost
nothing when things go well, and when one passes the failure says what was awaited, for how long,
and what was last seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Long enough for anything that takes a few seconds on an idle machine.
DEADLINE_S = 60.0


class _Watch:
    """The deadline of one wait, and, with `stalled_after`, the time `seen` last changed."""

    def __init__(
        self, what: str, timeout: float, seen: Callable[[], object] | None, stalled_after: float | None
    ) -> None:
        self.what, self.timeout, self.seen, self.stalled_after = what, timeout, seen, stalled_after
        self.started = self.changed = time.monotonic()
        self.last: object = None

    def check(self, value: object) -> None:
        """Fail if the deadline has passed, or if what is seen has not changed for `stalled_after`."""
        now = time.monotonic()
        seen = self.seen() if self.seen is not None else value
        if seen != self.last:
            self.last, self.changed = seen, now
        waited = now - self.started
        if waited > self.timeout:
            raise AssertionError(
                f"timed out after {waited:.0f}s waiting for {self.what}; last seen: {seen!r}"
            )
        if self.stalled_after is not None and now - self.changed > self.stalled_after:
            raise AssertionError(
                f"no progress for {self.stalled_after:g}s (after {waited:.0f}s) waiting for {self.what}; "
                f"last seen: {seen!r}"
            )


def wait_until(
    condition: Callable[[], T],
    what: str,
    *,
    timeout: float = DEADLINE_S,
    seen: Callable[[], object] | None = None,
    stalled_after: float | None = None,
    interval: float = 0.1,
) -> T:
    """Call `condition` until it returns a true value, and return that value.

    After `timeout` seconds, fail naming `what` and what `seen` returns (by default, the condition's
    last value). For a wait on a stream, whose length depends on how fast the machine is, give a long
    `timeout` and `stalled_after`: the wait then also fails once `seen` (a count) stops changing.
    """
    watch = _Watch(what, timeout, seen, stalled_after)
    while True:
        value = condition()
        if value:
            return value
        watch.check(value)
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T],
    what: str,
    *,
    timeout: float = DEADLINE_S,
    seen: Callable[[], object] | None = None,
    stalled_after: float | None = None,
    interval: float = 0.05,
) -> T:
    """`wait_until` inside an event loop: the loop keeps running the programs under test meanwhile."""
    watch = _Watch(what, timeout, seen, stalled_after)
    while True:
        value = condition()
        if value:
            return value
        watch.check(value)
        await asyncio.sleep(interval)
