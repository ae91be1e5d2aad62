"""The worker pool and the state it shares with `submit`, all guarded by one lock.

N worker threads take batches from the run queue (waiting on a condition variable, never polling) and
call the executor without the lock; a model has at most one batch in flight. One housekeeping thread
fails requests whose deadline passes while queued and ticks the SLO controller. Futures are resolved
outside the lock, so their callbacks may submit again.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Literal

from edgekernel.device.scheduler.batching import Batch, Batcher
from edgekernel.device.scheduler.controller import SloController
from edgekernel.device.scheduler.errors import DeadlineError, SchedulerClosedError, SchedulerError
from edgekernel.device.scheduler.queue import RunQueue
from edgekernel.device.scheduler.request import Executor, FloatArray, Outcome, Request, State, settle
from edgekernel.device.scheduler.stats import Recorder
from edgekernel.errors import EdgeKernelError

Out = list[tuple[Future[list[FloatArray]], Outcome]]
log = logging.getLogger(__name__)


class Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"  # no new requests; workers exit once the queue is empty
    CLOSED = "closed"  # workers exit after their current batch


class WorkerPool:
    def __init__(
        self,
        executor: Executor,
        queue: RunQueue,
        recorder: Recorder,
        controller: SloController | None,
        *,
        ceiling_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.queue = queue
        self.recorder = recorder
        self.controller = controller
        self.lock = threading.Lock()
        self.phase = Phase.NEW
        self.active: Counter[str] = Counter()  # agent -> requests queued or taken
        self.inflight: list[Batch] = []  # forming (started None) or running
        self._executor = executor
        self._ceiling_s = ceiling_s
        self._clock = clock
        self._work = threading.Condition(self.lock)
        self._timer = threading.Condition(self.lock)
        self._batcher = Batcher(queue, self._claim)
        self._halted = False
        self._sampled = 0
        self.workers = 0
        self._idle_waiters = 0
        self.threads: list[threading.Thread] = []  # the workers
        self.housekeeper: threading.Thread | None = None

    def start(self, workers: int) -> None:
        self.workers = workers
        self.threads = [
            threading.Thread(target=self._worker, name=f"ek-scheduler-{i}", daemon=True)
            for i in range(workers)
        ]
        self.housekeeper = threading.Thread(target=self._housekeep, name="ek-scheduler-timer", daemon=True)
        for thread in [*self.threads, self.housekeeper]:
            thread.start()

    def max_wait(self) -> float:
        return self.controller.max_wait_s if self.controller else self._ceiling_s

    def admission(self) -> float:
        return self.controller.admission if self.controller else 0.0

    # -- under the lock -------------------------------------------------------------------------

    def enqueue(self, request: Request) -> None:
        self.queue.push(request)
        self.active[request.agent] += 1
        self._work.notify_all()
        if request.deadline is not None:
            self._timer.notify()

    def try_inline(self, request: Request) -> Batch | None:
        """Let a waiting caller run its own request when a worker would take it at once anyway:
        nothing queued, a worker slot free, its model idle. Saves two thread hand-offs."""
        if (
            self.phase is not Phase.RUNNING
            or len(self.queue)
            or len(self.inflight) >= self.workers
            or any(batch.model == request.model for batch in self.inflight)
            or not self._claim(request)
        ):
            return None
        self.active[request.agent] += 1
        batch = Batch(request.model, 1, [request], started=self._clock())
        self.inflight.append(batch)
        return batch

    def run(self, batch: Batch) -> None:
        """Run a batch taken by `try_inline` in the caller's thread."""
        self._run(batch)

    def wait_idle(self, timeout: float) -> bool:
        """Until no batch is in flight (or `timeout`); True when idle."""
        with self.lock:
            self._idle_waiters += 1
            try:
                return self._work.wait_for(lambda: not self.inflight, timeout)
            finally:
                self._idle_waiters -= 1

    def wake(self, *, halt: bool = False) -> None:
        self._halted = self._halted or halt
        self._work.notify_all()
        self._timer.notify_all()

    def drop(self, out: Out, why: str) -> int:
        """Fail every queued request with `SchedulerClosedError`."""
        dropped = self.queue.drain()
        for request in dropped:
            self._finish(request, "closed", SchedulerClosedError(why), out)
        return len(dropped)

    def cancelled(self, request: Request, future: Future[list[FloatArray]]) -> None:
        """Done-callback of every accepted request's future: forget a request cancelled in the queue."""
        if future.cancelled():
            with self.lock:
                if request.state is State.QUEUED:
                    self.queue.remove(request)
                    self._finish(request, "cancelled")
                    self._work.notify_all()

    # -- workers ----------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            out: Out = []
            with self.lock:
                batch = self._next_batch(out)
            settle(out)
            if batch is False:
                return
            if batch is not None:
                self._run(batch)

    def _next_batch(self, out: Out) -> Batch | Literal[False] | None:
        """A batch to run; None to settle `out` first; False to exit."""
        while True:
            if self.phase is Phase.CLOSED:
                return False
            self._expire(self._clock(), out)
            if len(self.inflight) >= self.workers:  # a caller runs inline: its slot counts
                if out:
                    return None
                self._work.wait()
                continue
            head = self.queue.pick(exclude=frozenset(batch.model for batch in self.inflight))
            if head is None or not self._claim(head):
                if out:
                    return None
                if head is None:
                    if self.phase is Phase.DRAINING and not len(self.queue):
                        return False
                    self._work.wait()
                continue
            batch = self._batcher.open(head)
            self.inflight.append(batch)
            if self.phase is Phase.RUNNING and self.max_wait() > 0:
                self._batcher.form(
                    batch, self._work, max_wait=self.max_wait, keep_waiting=self._busy, clock=self._clock
                )
            batch.started = self._clock()
            return batch

    def _busy(self) -> bool:
        """Another batch is running (so a forming batch may wait for more requests)."""
        return self.phase is Phase.RUNNING and any(b.started is not None for b in self.inflight)

    def _claim(self, request: Request) -> bool:
        """Mark a taken request's future running; False (and counted) if its caller cancelled it."""
        if request.future.set_running_or_notify_cancel():
            return True
        self._finish(request, "cancelled")
        return False

    def _run(self, batch: Batch) -> None:
        outcome: Sequence[list[FloatArray] | BaseException] | BaseException
        try:
            self._executor.prepare(batch.model)
            batch.started = self._clock()  # a model's load is waiting, not service
            outcome = self._executor.run_batch(batch.model, [request.inputs for request in batch.requests])
            if len(outcome) != len(batch.requests):
                outcome = SchedulerError(
                    f"executor returned {len(outcome)} results for a batch of {len(batch.requests)}"
                )
        except Exception as exc:  # the executor's error fails this batch only
            if not isinstance(exc, EdgeKernelError):
                log.warning("executor failed on a batch of model %s", batch.model, exc_info=exc)
            outcome = exc
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: release the batch, then go
            self._settle_batch(batch, exc)
            raise
        self._settle_batch(batch, outcome)

    def _settle_batch(
        self, batch: Batch, outcome: Sequence[list[FloatArray] | BaseException] | BaseException
    ) -> None:
        end = self._clock()
        out: Out = []
        with self.lock:
            self._complete(batch, outcome, end, out)
        settle(out)

    def _complete(
        self,
        batch: Batch,
        outcome: Sequence[list[FloatArray] | BaseException] | BaseException,
        end: float,
        out: Out,
    ) -> None:
        start = batch.started if batch.started is not None else end
        service, size = end - start, len(batch.requests)
        self.recorder.batch_ran(size, service)
        if not isinstance(outcome, BaseException):
            self.queue.costs.observe(batch.model, size, service)
        for i, request in enumerate(batch.requests):
            self.queue.fairness.charge(request.agent, service / size - request.charge)
            result = outcome if isinstance(outcome, BaseException) else outcome[i]
            if isinstance(result, BaseException):
                self._finish(request, "error", result, out)
            else:
                self._finish(request, "", result, out)
                wait = start - request.arrival
                self.recorder.completed(request.agent, request.model, wait=wait, service=service, batch=size)
        self.inflight.remove(batch)
        if len(self.queue) or self.phase is not Phase.RUNNING or self._idle_waiters:
            self._work.notify_all()  # not on every inline run: a needless wake-up slows the next one

    def _finish(
        self, request: Request, reason: str, outcome: Outcome | None = None, out: Out | None = None
    ) -> None:
        """A request leaves: free its agent's slot, count a failure `reason`, queue its outcome."""
        request.state = State.DONE
        request.inputs = ()  # the caller's future may outlive the request: free the arrays
        self.active[request.agent] -= 1
        if self.active[request.agent] <= 0:
            del self.active[request.agent]
        if reason:
            self.recorder.failed(request.agent, request.model, reason)
        if outcome is not None and out is not None:
            out.append((request.future, outcome))

    def _expire(self, now: float, out: Out) -> None:
        for request in self.queue.expired(now):
            waited = now - request.arrival
            budget = request.budget_s if request.budget_s is not None else waited
            error = DeadlineError(
                stage="queue", deadline_s=budget, estimate_s=waited, agent=request.agent, model=request.model
            )
            self._finish(request, "expired", error, out)
            self._work.notify_all()

    # -- housekeeping -----------------------------------------------------------------------------

    def _housekeep(self) -> None:
        interval = self.controller.interval_s if self.controller else None
        next_tick = None if interval is None else self._clock() + interval
        while True:
            out: Out = []
            with self.lock:
                while not self._halted:
                    now = self._clock()
                    self._expire(now, out)
                    if next_tick is not None and interval is not None and now >= next_tick:
                        self._tick(now)
                        next_tick = now + interval
                    if out:
                        break
                    waits = [t - now for t in (self.queue.next_deadline(), next_tick) if t is not None]
                    self._timer.wait(max(0.0, min(waits)) if waits else None)
                halted = self._halted
            settle(out)
            if halted:
                return

    def _tick(self, now: float) -> None:
        """Feed the controller the p95 turnaround; None when idle with no new completion."""
        if self.controller is None:
            return
        completed = self.recorder.total.completed
        fresh, self._sampled = completed != self._sampled, completed
        idle = not len(self.queue) and not self.inflight
        p95 = self.recorder.p95_turnaround()
        self.controller.update(now, None if p95 is None or (idle and not fresh) else p95)
