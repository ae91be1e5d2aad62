"""A controllable executor and a manual clock for the scheduler's tests.

Each request carries one input: a 1x1 array holding its *tag*; the output is the tag times 2. Model
``gate`` blocks in `run_batch` until the test opens the gate, so requests submitted meanwhile queue up
behind one busy worker. Costs per model either advance a `ManualClock` (deterministic) or sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgekernel.config.kernel import SchedulerConfig
from edgekernel.device.scheduler import FloatArray
from tests import waiting

GATE = "gate"


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def tagged(tag: float) -> list[FloatArray]:
    return [np.full((1, 1), tag, dtype=np.float32)]


def tag_of(inputs: Sequence[FloatArray]) -> float:
    return float(inputs[0].reshape(-1)[0])


def config(**fields: Any) -> SchedulerConfig:
    return SchedulerConfig.model_validate(fields)


class TestExecutor:
    """Records every batch as (model, [tags]); `on_run` is called after each batch runs."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        max_batch: dict[str, int] | None = None,
        cost: dict[str, float] | None = None,
        clock: ManualClock | None = None,
        fail_tags: Sequence[float] = (),
    ) -> None:
        self.batch_sizes = max_batch or {}
        self.cost = cost or {}
        self.clock = clock
        self.fail_tags = set(fail_tags)
        self.gate = threading.Event()
        self.gated = threading.Event()  # set while a gate batch is blocked
        self.calls: list[tuple[str, list[float]]] = []
        self.durations: list[tuple[list[float], float]] = []  # (tags, seconds) of each batch, real time
        self.on_run: Callable[[str, list[float]], None] | None = None
        self._lock = threading.Lock()

    def max_batch(self, model: str) -> int:
        if model == "missing":
            raise KeyError(model)
        return self.batch_sizes.get(model, 1)

    def prepare(self, model: str) -> None:
        pass

    def ready(self, model: str) -> bool:
        return model != GATE  # a gated batch must never block the event loop

    def run_batch(self, model: str, batch: Sequence[Sequence[FloatArray]]) -> list[list[FloatArray]]:
        tags = [tag_of(inputs) for inputs in batch]
        with self._lock:
            self.calls.append((model, tags))
        if model == GATE:
            self.gated.set()
            assert self.gate.wait(10), "the test never opened the gate"
        seconds = self.cost.get(model, 0.0)
        if self.clock is not None:
            self.clock.advance(seconds)
        elif seconds:
            began = time.monotonic()
            time.sleep(seconds)
            with self._lock:
                self.durations.append((tags, time.monotonic() - began))
        if self.on_run is not None:
            self.on_run(model, tags)
        if self.fail_tags.intersection(tags):
            raise RuntimeError(f"poisoned batch {tags}")
        return [[inputs[0] * 2] for inputs in batch]

    def order(self, model: str | None = None) -> list[float]:
        """Tags in the order they ran (of `model`, or of every model but the gate)."""
        with self._lock:
            return [
                tag
                for name, tags in self.calls
                for tag in tags
                if (name == model if model is not None else name != GATE)
            ]

    def batches(self, model: str) -> list[list[float]]:
        with self._lock:
            return [tags for name, tags in self.calls if name == model]


def wait_until(predicate: Callable[[], bool], what: str = "the scheduler") -> None:
    """`tests.waiting.wait_until`, polling often: these waits are short on an idle machine."""
    waiting.wait_until(predicate, what, interval=0.002)
