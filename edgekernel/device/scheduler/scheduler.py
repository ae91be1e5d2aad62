"""`Scheduler`: the public face — lifetime, submit (with admission), asyncio and blocking wrappers, stats.

Threads: `submit` runs in the caller's thread and never waits for inference (it takes one short lock).
The worker pool (`pool.py`) runs batches on the executor; see the package docstring for the design.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from types import TracebackType
from typing import Self

from edgekernel.config.kernel import SchedulerConfig
from edgekernel.device.scheduler.admission import Admission
from edgekernel.device.scheduler.batching import Batch
from edgekernel.device.scheduler.controller import SloController
from edgekernel.device.scheduler.errors import SchedulerClosedError
from edgekernel.device.scheduler.fairness import FairShare
from edgekernel.device.scheduler.policies import Policy, policy_for
from edgekernel.device.scheduler.pool import Out, Phase, WorkerPool
from edgekernel.device.scheduler.queue import RunQueue
from edgekernel.device.scheduler.request import Executor, FloatArray, Request, settle
from edgekernel.device.scheduler.stats import CostModel, Recorder, SchedulerStats

DEFAULT_WINDOW = 512  # latency samples kept when no SLO sets the window
DEFAULT_FAIRNESS_LAG_S = 0.02


class Scheduler:
    """Schedules inference requests of agents onto an executor.

    `workers` defaults to `config.workers`, else one per core; give the kernel's figure for cores and
    accelerators. `clock` (seconds, monotonic) times everything the scheduler measures and decides;
    inject one to test. `policy` overrides the one the config names. `fairness_lag_s` is how far (in
    weighted service seconds) the policy's order may run one agent ahead of another (see fairness.py).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        executor: Executor,
        *,
        workers: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        policy: Policy | None = None,
        fairness_lag_s: float = DEFAULT_FAIRNESS_LAG_S,
    ) -> None:
        count = workers if workers is not None else (config.workers or os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"workers must be >= 1, not {count}")
        self.config = config
        self.workers = count
        self.policy = policy or policy_for(config)
        self._executor = executor
        self._clock = clock
        self._seq = itertools.count()
        self._started_at: float | None = None
        ceiling = config.batching.max_wait_ms / 1e3 if config.batching.enabled else 0.0
        controller = SloController(config.slo, max_wait_s=ceiling) if config.slo else None
        fairness = FairShare(lambda agent: self._admission.quota(agent).weight, lag_s=fairness_lag_s)
        self._pool = WorkerPool(
            executor,
            RunQueue(self.policy, fairness, CostModel()),
            Recorder(config.slo.window if config.slo else DEFAULT_WINDOW),
            controller,
            ceiling_s=ceiling,
            clock=clock,
        )
        self._admission = Admission(config, self._pool, workers=count)

    # -- lifetime ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers; requests submitted before start wait in the queue."""
        with self._pool.lock:
            if self._pool.phase is Phase.RUNNING:
                return
            if self._pool.phase is not Phase.NEW:
                raise SchedulerClosedError("the scheduler was stopped and cannot start again")
            self._pool.phase = Phase.RUNNING
            self._started_at = self._clock()
            self._pool.start(self.workers)

    def stop(self, drain: bool = True, timeout: float = 30.0) -> bool:
        """Refuse new requests; with `drain`, let queued ones finish (up to `timeout` s), else fail them.

        Requests still queued at the timeout, or all of them without drain (or if never started), fail
        with `SchedulerClosedError`; running batches always finish. Returns True when no request was
        failed by the timeout and every thread exited in time.
        """
        pool = self._pool
        out: Out = []
        with pool.lock:
            if pool.phase in (Phase.NEW, Phase.RUNNING):
                pool.phase = Phase.DRAINING if drain and pool.threads else Phase.CLOSED
            if pool.phase is Phase.CLOSED:
                pool.drop(out, "the scheduler stopped without draining its queue")
            pool.wake()
        settle(out)
        end = time.monotonic() + timeout
        for thread in pool.threads:
            thread.join(max(0.0, end - time.monotonic()))
        pool.wait_idle(max(0.0, end - time.monotonic()))  # batches callers run themselves
        with pool.lock:
            pool.phase = Phase.CLOSED
            dropped = pool.drop(out, f"the scheduler did not drain its queue within {timeout:g} s")
            pool.wake(halt=True)
        settle(out)
        threads = [*pool.threads, *([pool.housekeeper] if pool.housekeeper else [])]
        if pool.housekeeper is not None:
            pool.housekeeper.join(max(0.1, end - time.monotonic()))
        return not dropped and not any(thread.is_alive() for thread in threads)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- requests ---------------------------------------------------------------------------------

    def submit(
        self,
        agent: str,
        model: str,
        inputs: Sequence[FloatArray],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> Future[list[FloatArray]]:
        """Queue one request; its future gets the model's outputs. Thread-safe; never waits for work.

        `inputs` are what the model takes for this request alone (with its batch dimension, if the model
        has one); higher `priority` is more urgent; `deadline_s` is a budget in seconds from now. Raises
        `QuotaError`, `OverloadError`, `DeadlineError` or `SchedulerClosedError` to refuse it, and
        whatever the executor's `max_batch` raises (an unknown model).
        """
        return self._submit(agent, model, inputs, priority, deadline_s, inline=False)[0]

    def _submit(
        self,
        agent: str,
        model: str,
        inputs: Sequence[FloatArray],
        priority: int,
        deadline_s: float | None,
        *,
        inline: bool,
    ) -> tuple[Future[list[FloatArray]], Batch | None]:
        if deadline_s is not None and math.isnan(deadline_s):
            raise ValueError("deadline_s is NaN")
        arrays = tuple(inputs)
        max_batch = max(1, self._executor.max_batch(model))  # also refuses an unknown model now
        if not self.config.batching.enabled:
            max_batch = 1
        future: Future[list[FloatArray]] = Future()
        pool = self._pool
        with pool.lock:
            now = self._clock()
            deadline = None if deadline_s is None else now + deadline_s
            request = Request(
                next(self._seq), agent, model, arrays, priority, now, deadline, deadline_s, max_batch, future
            )
            pool.recorder.submitted(agent, model)
            refusal = self._admission.refuse(request, now)
            batch = None
            if refusal is None:
                batch = pool.try_inline(request) if inline else None
                if batch is None:
                    pool.enqueue(request)
            else:
                pool.recorder.rejected(agent, model, refusal[0])
        if refusal is not None:
            raise refusal[1]
        future.add_done_callback(partial(pool.cancelled, request))
        return future, batch

    async def infer(
        self,
        agent: str,
        model: str,
        inputs: Sequence[FloatArray],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
    ) -> list[FloatArray]:
        """`submit` for asyncio; cancelling the awaiting task cancels the request if still queued.

        When a worker would take the request at once and its model is loaded and measured to take at
        most `loop_inline_ms` at batch 1, the loop's own thread runs it, as `infer_sync` does for a
        thread: two thread hand-offs (loop → worker → loop) cost more than such a model. It then yields
        once, so an agent calling in a tight loop cannot starve the others.
        """
        inline = self._loop_may_run(model)
        future, batch = self._submit(agent, model, inputs, priority, deadline_s, inline=inline)
        if batch is None:
            return await asyncio.wrap_future(future)
        self._pool.run(batch)
        await asyncio.sleep(0)
        return future.result()

    def _loop_may_run(self, model: str) -> bool:
        limit = self.config.loop_inline_ms / 1e3
        if limit <= 0:
            return False
        costs = self._pool.queue.costs
        with self._pool.lock:  # the workers update the costs
            cheap = costs.known(model) and costs.estimate(model, 1) <= limit
        return cheap and self._executor.ready(model)

    def infer_sync(
        self,
        agent: str,
        model: str,
        inputs: Sequence[FloatArray],
        *,
        priority: int = 0,
        deadline_s: float | None = None,
        timeout: float | None = None,
    ) -> list[FloatArray]:
        """`submit` and wait for the outputs (raises what the future holds, or TimeoutError).

        When a worker would take the request at once anyway (nothing queued, a slot free, its model
        idle), the calling thread runs it itself, taking that worker slot, instead of handing it over.
        """
        future, batch = self._submit(agent, model, inputs, priority, deadline_s, inline=True)
        if batch is not None:
            self._pool.run(batch)
        return future.result(timeout)

    def stats(self) -> SchedulerStats:
        """A frozen snapshot: counts per model and agent, latency percentiles, batching, controller."""
        pool = self._pool
        with pool.lock:
            now, recorder = self._clock(), pool.recorder
            running = [batch.started for batch in pool.inflight if batch.started is not None]
            busy = recorder.busy_s + sum(now - started for started in running)
            uptime = now - self._started_at if self._started_at is not None else 0.0
            return SchedulerStats(
                policy=self.policy.name,
                workers=self.workers,
                uptime_s=uptime,
                queue_depth=len(pool.queue),
                queue_limit=self._admission.queue_limit(),
                running=sum(len(batch.requests) for batch in pool.inflight),
                batches=recorder.batches,
                mean_batch=recorder.batched_requests / recorder.batches if recorder.batches else 0.0,
                utilisation=min(1.0, busy / (self.workers * uptime)) if uptime > 0 else 0.0,
                max_wait_s=pool.max_wait(),
                admission=pool.admission(),
                controller=pool.controller.state if pool.controller else None,
                total=recorder.total.snapshot(),
                models=recorder.models(),
                agents=recorder.agents(),
            )
