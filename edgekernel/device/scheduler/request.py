"""What the scheduler queues (a request) and what it drives (an executor).

Batch convention: a request's inputs are exactly what the model would take to run that request alone,
in the order of the model's inputs — for a model with a batch dimension that includes the leading batch
dimension (normally of size 1); for a model without one, the plain tensors. An executor given several
requests of a batch-capable model concatenates each input along axis 0, runs once, and splits every
output back by each request's leading size. So a request's result never depends on its batch-mates.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Outcome = list[FloatArray] | BaseException


class Executor(Protocol):
    """Runs models for the scheduler; the kernel provides one (backed by its model manager)."""

    def max_batch(self, model: str) -> int:
        """How many requests of `model` one `run_batch` call may take: 1 without a batch dimension.

        Called by `Scheduler.submit` in the submitting thread; its errors (an unknown model) propagate.
        """

    def prepare(self, model: str) -> None:
        """Make `model` ready to run (load it); called before a batch's service time starts."""

    def ready(self, model: str) -> bool:
        """Whether `model` runs now, without loading (or waiting for anything) first."""

    def run_batch(
        self, model: str, batch: Sequence[Sequence[FloatArray]]
    ) -> Sequence[list[FloatArray] | BaseException]:
        """Run `model` for every request of `batch` (each one's inputs); one entry per request: its
        outputs, or the exception that fails that request alone.

        Called from one worker thread at a time per call. An exception raised fails every request of
        this batch (their futures get it); the worker carries on.
        """


class State(enum.Enum):
    QUEUED = "queued"
    TAKEN = "taken"  # in a batch being formed or run
    DONE = "done"


@dataclass(eq=False, slots=True)
class Request:
    """One inference request. Times are on the scheduler's clock, in seconds."""

    seq: int  # arrival order, unique
    agent: str
    model: str
    inputs: tuple[FloatArray, ...]
    priority: int  # higher is more urgent
    arrival: float
    deadline: float | None  # absolute, on the scheduler's clock
    budget_s: float | None  # the deadline as the caller gave it, relative to arrival
    max_batch: int  # from the executor at submit (1 when batching is off)
    future: Future[list[FloatArray]]
    state: State = State.QUEUED
    charge: float = 0.0  # provisional fairness charge, corrected when the batch completes


def settle(outcomes: Sequence[tuple[Future[list[FloatArray]], Outcome]]) -> None:
    """Resolve futures; call without holding the scheduler's lock (callbacks run here)."""
    for future, outcome in outcomes:
        try:
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        except InvalidStateError:  # cancelled by its caller meanwhile
            pass
