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

from edgekernel.config.kernel import KernelConfig, ModelSpec
from edgekernel.device.models import ModelManager, runtime_for
from edgekernel.device.models._tensors import check_inputs
from edgekernel.device.models.runtime import (
    FloatArray,
    InferenceError,
    ModelError,
    ModelFileError,
    RuntimeUnavailableError,
    Session,
)
from edgekernel.device.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ThreadBudget:
    total: int
    workers: int
    per_session: int


def thread_budget(config: KernelConfig, *, cores: int | None = None) -> ThreadBudget:
    """Workers are capped at the thread budget, and each session gets an equal share of it."""
    total = config.threads or cores or os.cpu_count() or 1
    workers = min(config.scheduler.workers or total, total)
    concurrent_sessions = max(1, min(workers, len(config.models) or 1))
    return ThreadBudget(total=total, workers=workers, per_session=max(1, total // concurrent_sessions))


class ManagerExecutor:
    """What the scheduler runs batches on: sessions leased from the model manager.

    Each request is checked against the model's inputs before it joins a batch, so a bad request
    fails alone; a batch whose outputs do not split back by the requests' batch sizes (a model whose
    first dimension is dynamic but is not a batch) is run again one request at a time.
    """

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

    def prepare(self, model: str) -> None:
        if self.manager.batch_capable(model) is None:
            self.manager.load(model)

    def ready(self, model: str) -> bool:
        return self.manager.batch_capable(model) is not None

    def forget(self, model: str) -> None:
        """After a swap: the new version may differ in whether it batches."""
        self._batch_capable.pop(model, None)

    def run_batch(
        self, model: str, batch: Sequence[Sequence[FloatArray]]
    ) -> list[list[FloatArray] | BaseException]:
        with self.manager.lease(model) as session:
            self._batch_capable[model] = session.batch_capable
            if len(batch) == 1:  # the session checks its own inputs
                return [_run_one(session, batch[0])]
            results: list[list[FloatArray] | BaseException | None] = [None] * len(batch)
            good: list[int] = []
            for i, inputs in enumerate(batch):
                try:
                    check_inputs(model, session.inputs, inputs)
                    if session.batch_capable:
                        _leading(inputs, model)
                    good.append(i)
                except InferenceError as err:
                    results[i] = err
            if session.batch_capable and len(good) > 1:
                joined = _run_joined(session, model, [batch[i] for i in good])
                if joined is not None:
                    for i, outputs in zip(good, joined, strict=True):
                        results[i] = outputs
                    good = []
            for i in good:
                results[i] = _run_one(session, batch[i])
            return [r if r is not None else InferenceError("not run", model=model) for r in results]


def _run_one(session: Session, inputs: Sequence[FloatArray]) -> list[FloatArray] | BaseException:
    try:
        return session.run(inputs)
    except ModelError as err:
        return err


def _run_joined(
    session: Session, model: str, batch: Sequence[Sequence[FloatArray]]
) -> list[list[FloatArray]] | None:
    """Run requests as one batch; None when that fails or the outputs do not split back by request."""
    sizes = [_leading(inputs, model) for inputs in batch]
    try:
        outputs = session.run([np.concatenate(parts, axis=0) for parts in zip(*batch, strict=True)])
    except ModelError as err:
        log.info("model %s: a batch of %d failed (%s); running them one by one", model, len(batch), err)
        return None
    total = sum(sizes)
    if any(out.ndim == 0 or out.shape[0] != total for out in outputs):
        log.warning("model %s: outputs do not follow the batch dimension; running requests one by one", model)
        return None
    bounds = np.cumsum(sizes)[:-1]
    per_output = [np.split(out, bounds, axis=0) for out in outputs]
    return [list(parts) for parts in zip(*per_output, strict=True)]


def _leading(inputs: Sequence[FloatArray], model: str) -> int:
    sizes = {int(array.shape[0]) if array.ndim else 0 for array in inputs}
    if len(sizes) != 1 or 0 in sizes:
        raise InferenceError("every input of a request needs the same batch dimension (>= 1)", model=model)
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
        self.executor = ManagerExecutor(self.manager)
        self.scheduler = Scheduler(
            config.scheduler,
            self.executor,
            workers=self.budget.workers,
            fairness_lag_s=config.scheduler.fairness_lag_ms / 1000,
        )

    def start(self, *, preload: bool = True) -> None:
        """Start the workers; load the pinned models (and, with `preload`, every model that fits).

        Raises `ModelError` (after stopping again) when a pinned model does not load, or when any
        model's file or runtime can never serve it (`ModelFileError`, `RuntimeUnavailableError`): the
        kernel cannot do what its config says. An unpinned model that fails otherwise (say, it does
        not fit the budget beside the others yet) is left to load on first use.
        """
        self.scheduler.start()
        try:
            self._preload(preload)
        except ModelError:
            self.stop(drain=False)
            raise

    def _preload(self, preload: bool) -> None:
        for spec in sorted(self.config.models, key=lambda s: not s.pinned):
            if not spec.pinned and (not preload or spec.memory_mb > self.manager.free_mb()):
                continue  # loaded on first use; preloading must not evict what was loaded first
            try:
                self.manager.load(spec.name)
            except (ModelFileError, RuntimeUnavailableError):
                raise
            except ModelError as err:
                if spec.pinned:
                    raise
                log.warning("model %s not loaded at start (it loads on first use): %s", spec.name, err)

    def swap(self, spec: ModelSpec) -> None:
        """Hot-swap a model to a new version (same name): requests in flight finish on the old one."""
        self.manager.swap(spec)
        self.executor.forget(spec.name)

    def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        self.scheduler.stop(drain=drain, timeout=timeout)
        self.manager.close()
