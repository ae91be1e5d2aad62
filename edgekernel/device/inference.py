"""Inference on the box: the model manager and the scheduler, joined by an executor.

The executor leases a model from the manager for each batch the scheduler runs, concatenates the
requests' inputs along the batch dimension, and splits the outputs back. Threads are budgeted so
that all sessions together never oversubscribe the cores: at most min(workers, models) batches run at
once (one per model), and each session gets an equal share of the thread budget.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekernel.config.kernel import KernelConfig
from edgekernel.device.models import ModelManager, runtime_for
from edgekernel.device.models.runtime import FloatArray, InferenceError, ModelError
from edgekernel.device.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ThreadBudget:
    total: int
    workers: int
    per_session: int


def thread_budget(config: KernelConfig, *, cores: int | None = None) -> ThreadBudget:
    total = config.threads or cores or os.cpu_count() or 1
    workers = config.scheduler.workers or total
    concurrent_sessions = max(1, min(workers, len(config.models) or 1))
    return ThreadBudget(total=total, workers=workers, per_session=max(1, total // concurrent_sessions))


class ManagerExecutor:
    """What the scheduler runs batches on: sessions leased from the model manager."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self._batch_capable: dict[str, bool] = {}

    def max_batch(self, model: str) -> int:
        spec = self.manager.spec(model)
        capable = self._batch_capable.get(model)
        if capable is None:
            capable = self.manager.batch_capable(model)
        if capable is None:  # not loaded yet: trust the spec's tensors, if it lists them
            capable = bool(spec.inputs) and all(t.shape and t.shape[0] is None for t in spec.inputs)
        return spec.max_batch if capable else 1

    def run_batch(self, model: str, batch: Sequence[Sequence[FloatArray]]) -> list[list[FloatArray]]:
        with self.manager.lease(model) as session:
            self._batch_capable[model] = session.batch_capable
            if len(batch) == 1:
                return [session.run(batch[0])]
            if not session.batch_capable:
                return [session.run(inputs) for inputs in batch]
            sizes = [_leading(inputs, model) for inputs in batch]
            joined = [np.concatenate(parts, axis=0) for parts in zip(*batch, strict=True)]
            outputs = session.run(joined)
            bounds = np.cumsum(sizes)[:-1]
            per_output = [np.split(out, bounds, axis=0) for out in outputs]
            return [list(parts) for parts in zip(*per_output, strict=True)]


def _leading(inputs: Sequence[FloatArray], model: str) -> int:
    sizes = {int(array.shape[0]) if array.ndim else 0 for array in inputs}
    if len(sizes) != 1 or 0 in sizes:
        raise InferenceError("every input of a request needs the same leading batch dimension", model=model)
    return sizes.pop()


class Inference:
    """The kernel's inference subsystem: ``await inference.scheduler.infer(agent, model, inputs)``."""

    def __init__(self, config: KernelConfig, *, cache_dir: Path | None = None) -> None:
        self.config = config
        self.budget = thread_budget(config)
        self.manager = ModelManager(
            config.models,
            runtime_for,
            budget_mb=config.memory_budget_mb,
            threads_per_session=self.budget.per_session,
            cache_dir=config.cache_dir or cache_dir,
        )
        self.scheduler = Scheduler(
            config.scheduler,
            ManagerExecutor(self.manager),
            workers=self.budget.workers,
            fairness_lag_s=config.scheduler.fairness_lag_ms / 1000,
        )

    def start(self, *, preload: bool = True) -> None:
        """Start the workers; load the pinned models (and, with `preload`, every model that fits)."""
        self.scheduler.start()
        for spec in sorted(self.config.models, key=lambda s: not s.pinned):
            if spec.pinned or preload:
                try:
                    self.manager.load(spec.name)
                except ModelError as err:
                    log.warning(
                        "model %s not loaded at start (the kernel serves the others): %s", spec.name, err
                    )

    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        self.scheduler.stop(drain=drain, timeout=timeout)
        self.manager.close()
