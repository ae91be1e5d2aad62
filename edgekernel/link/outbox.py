"""The durable outbox: a device's messages on durable streams, kept in SQLite (WAL) until acknowledged.

    async with Outbox(data_dir / "outbox.db", config) as outbox:
        seq = await outbox.put(topic, lambda seq: encode(body.to_envelope(src, seq=seq)), stream="temp")
        async for message in outbox.messages():     # the sender, in seq order
            await session.publish(message.topic, message.payload, qos=1)
        outbox.rewind()                             # after a reconnect: send every unacknowledged again
        await outbox.ack([(1, 40), (42, 42)])       # the gateway stored these: delete them

`put` returns only once its row is committed (group commit: the puts that gather while one
transaction runs share the next, in a writer thread). Each put takes the next seq as it is admitted,
so the payload can carry it; the file keeps the seq high-water mark in the same transaction, so a seq
that was ever returned is never handed out again, even after its row is acked or dropped. A seq that
never committed (the process died first) was never returned or sent, and may be taken again.

The seqs count in the file's seq space, `epoch` (see outbox_store): a file that starts empty draws a
new one, so a payload that carries (epoch, seq) is never taken for one of an earlier file's.

Bounded by `max_bytes` (payload and topic bytes): `block` makes a put wait, in arrival order, for acks
to free room (then fails with `OutboxFullError`); `drop-newest` refuses the new message; `drop-oldest`
deletes the oldest unacknowledged rows in the transaction that overflows, and records their seqs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from edgekernel.config.outbox import OutboxConfig
from edgekernel.link.errors import OutboxError, OutboxFullError, OutboxStorageError
from edgekernel.link.outbox_store import (
    CLOSE,
    AckJob,
    Close,
    FetchJob,
    Job,
    OutboxFile,
    OutboxMessage,
    Outcome,
    PutJob,
    serve,
    settle,
)
from edgekernel.link.ranges import SeqRanges

__all__ = ["Outbox", "OutboxMessage", "OutboxStats", "Payload"]

Payload = bytes | Callable[[int], bytes]
"""The message itself, or a function that builds it from its seq (called on the event loop)."""


@dataclass(slots=True)
class _Counters:
    put: int = 0
    committed: int = 0
    failed: int = 0
    refused: int = 0
    sent: int = 0
    acked: int = 0
    buried: int = 0
    disk_full: int = 0
    io_errors: int = 0
    dropped_oldest: int = 0
    dropped_oldest_bytes: int = 0
    dropped_oldest_sent: int = 0
    dropped_newest: int = 0
    dropped_newest_bytes: int = 0
    transactions: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The backlog (from the file) and exact counters since the outbox was opened.

    put = committed + failed + refused + dropped_newest + the puts still waiting or being committed
    (refused: larger than the outbox, block timed out, or the payload could not be built; failed: the
    commit failed, `disk_full` and `io_errors` of them because the disk was full or failed);
    `sent` counts messages handed to the sender (again after a rewind); `in_flight` those sent and not
    yet acknowledged; `ack_wait_s` how long the sender has waited for an acknowledgement that is due
    (see `Outbox.stats`); `dropped_oldest_sent` counts dropped messages that had been handed to it, so
    may still arrive; `transactions` counts commits.
    `dead` is how many dead letters the file keeps (refused for good by the gateway; see `bury`),
    `buried` how many were moved there since the outbox was opened.
    """

    pending: int
    pending_bytes: int
    in_flight: int
    ack_wait_s: float
    oldest_age_s: float
    epoch: int
    highest_seq: int
    max_bytes: int
    dead: int
    put: int
    committed: int
    failed: int
    refused: int
    sent: int
    acked: int
    buried: int
    disk_full: int
    io_errors: int
    dropped_oldest: int
    dropped_oldest_bytes: int
    dropped_oldest_sent: int
    dropped_oldest_ranges: tuple[tuple[int, int], ...]
    dropped_newest: int
    dropped_newest_bytes: int
    transactions: int


class Outbox:
    def __init__(
        self,
        path: Path,
        config: OutboxConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config or OutboxConfig()
        self._clock = clock
        self._file = OutboxFile(self.path, self.config)
        self.epoch = 0
        """The seq space of the seqs handed out (known once started)."""
        self.new_epoch = False
        """Whether this start began the seq space: the file was empty."""
        self._jobs: queue.SimpleQueue[Job | Close] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._stopped: asyncio.Future[None] | None = None
        self._next_seq = 1
        self._hwm = self._count = self._bytes = self._reserved = self._dead = 0
        self._oldest: float | None = None
        self._waiters: deque[asyncio.Event] = deque()
        self._arrived = asyncio.Event()
        self._sender = asyncio.Lock()
        self._cache: deque[OutboxMessage] = deque()
        self._cache_bytes = 0
        self._cache_complete = True
        self._generation = 0
        self._sent_upto = self._ever_sent = self._in_flight = 0
        self._first = self._acked_max = 0
        self._progress_at = 0.0  # monotonic: the last ack that freed a message in flight, or a flight's start
        self._flights: deque[tuple[int, float]] = deque()  # (last seq, monotonic) of each chunk sent
        self._dropped = SeqRanges()
        self._c = _Counters()

    async def start(self) -> None:
        """Open the file in the writer thread; raises `OutboxError` if it is corrupt or in use."""
        if self._thread is not None:
            raise OutboxError(f"outbox {self.path} is already started", path=self.path)
        loop = self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[Outcome] = loop.create_future()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=serve,
            args=(self._file, self._jobs, opened, self._stopped, self._apply),
            name=f"outbox:{self.path.name}",
            daemon=True,
        )
        self._thread.start()
        try:
            summary = await opened
            self._apply_summary(summary)
            self.epoch, self.new_epoch = summary.epoch, summary.new_epoch
        except BaseException:
            self._closed = True
            self._jobs.put(CLOSE)  # if the open succeeded after all (start was cancelled)
            settle(self._stopped, None, None)
            raise
        self._next_seq = self._hwm + 1
        self._cache_complete = self._count == 0

    async def close(self) -> None:
        """Commit what was put, then close the file. Puts still waiting for room fail."""
        if self._stopped is None:
            self._closed = True
            return
        if not self._closed:
            self._closed = True
            for waiter in self._waiters:
                waiter.set()
            self._arrived.set()
            self._jobs.put(CLOSE)
        await asyncio.shield(self._stopped)

    async def __aenter__(self) -> Outbox:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def put(self, topic: str, payload: Payload, *, stream: str = "") -> int:
        """Queue a message and return its seq once it is committed.

        Raises `OutboxFullError` (drop-newest, or block past its timeout), `OutboxError` (larger than
        the whole outbox, closed, or the commit failed). Cancelling the caller does not withdraw a
        message already admitted.
        """
        self._check_open()
        self._c.put += 1
        job = self._admit(topic, payload, stream) if not self._waiters else None
        if not isinstance(job, PutJob):
            job = await self._wait_for_room(topic, payload, stream)
        self._jobs.put(job)
        return await job.future

    async def ack(self, ranges: Iterable[tuple[int, int]] | SeqRanges) -> int:
        """Delete the acknowledged rows in one transaction; returns how many were still pending."""
        self._check_open()
        ranges = ranges if isinstance(ranges, SeqRanges) else SeqRanges(ranges)
        if not ranges:
            return 0
        job = AckJob(ranges, self._new_future())
        self._jobs.put(job)
        return await job.future

    async def bury(self, ranges: Iterable[tuple[int, int]] | SeqRanges, reason: str) -> int:
        """Move these rows to the file's dead letters (the newest 1,000 are kept), in one transaction:
        they are not sent again. Returns how many moved."""
        self._check_open()
        ranges = ranges if isinstance(ranges, SeqRanges) else SeqRanges(ranges)
        if not ranges:
            return 0
        job = AckJob(ranges, self._new_future(), reason=reason, at=self._clock())
        self._jobs.put(job)
        return await job.future

    async def pending(self, limit: int = 256) -> list[OutboxMessage]:
        """Up to `limit` messages not yet handed to the sender, in seq order, now marked in flight."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._sender:
            while not self._cache and not self._cache_complete:
                self._check_open()
                fetch = FetchJob(self._sent_upto, max(limit, 64), self._generation, self._new_future())
                self._jobs.put(fetch)
                await fetch.future
            out: list[OutboxMessage] = []
            while self._cache and len(out) < limit:
                message = self._cache.popleft()
                self._cache_bytes -= message.size
                out.append(message)
        if out:
            now = time.monotonic()
            if self._in_flight == 0:
                self._progress_at = now
            self._flights.append((out[-1].seq, now))
            self._sent_upto = out[-1].seq
            self._ever_sent = max(self._ever_sent, self._sent_upto)
            self._in_flight += len(out)
            self._c.sent += len(out)
        return out

    async def messages(self, batch: int = 64) -> AsyncIterator[OutboxMessage]:
        """Every message in seq order as it commits, for the one sender, no more than `max_in_flight`
        ahead of the acknowledgements; ends when the outbox closes. After `rewind`, the unacknowledged
        messages come again from the oldest."""
        while not self._closed:
            self._arrived.clear()
            generation = self._generation
            room = min(batch, self.config.max_in_flight - self._in_flight)
            try:
                chunk = await self.pending(room) if room > 0 else []
            except OutboxError:
                if self._closed:
                    return
                raise
            if not chunk:
                await self._arrived.wait()
            for message in chunk:
                if generation != self._generation:
                    break
                yield message

    def rewind(self) -> int:
        """Send every unacknowledged message again from the oldest (after a reconnect); returns how
        many were in flight."""
        in_flight = self._in_flight
        self._generation += 1
        self._sent_upto = self._in_flight = 0
        self._flights.clear()
        self._progress_at = time.monotonic()
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_complete = self._count == 0
        self._arrived.set()
        return in_flight

    def stats(self) -> OutboxStats:
        """`ack_wait_s`, with messages in flight: the time since the last acknowledgement that freed one
        of them (or since the first of them was sent, if later), or, when later messages were
        acknowledged and the oldest in flight was not, the time since that one was sent, if longer.
        Nothing in flight: 0. It is what a resend waits for; the age of the messages is not."""
        age = 0.0 if self._oldest is None else max(0.0, self._clock() - self._oldest)
        return OutboxStats(
            pending=self._count,
            pending_bytes=self._bytes,
            in_flight=self._in_flight,
            ack_wait_s=self._ack_wait(time.monotonic()),
            oldest_age_s=age,
            epoch=self.epoch,
            highest_seq=self._hwm,
            max_bytes=self.config.max_bytes,
            dead=self._dead,
            dropped_oldest_ranges=self._dropped.ranges,
            **asdict(self._c),
        )

    def _ack_wait(self, now: float) -> float:
        if self._in_flight <= 0:
            return 0.0
        wait = now - self._progress_at
        if 0 < self._first <= self._sent_upto and self._first < self._acked_max:  # passed over: lost?
            while len(self._flights) > 1 and self._flights[0][0] < self._first:
                self._flights.popleft()
            if self._flights:
                wait = max(wait, now - self._flights[0][1])
        return max(0.0, wait)

    # admission (event loop)

    def _admit(self, topic: str, payload: Payload, stream: str) -> PutJob | int:
        """Take the next seq if the message fits (or the policy makes room), else its size (block)."""
        seq = self._next_seq
        try:
            data = payload(seq) if callable(payload) else payload
            if not isinstance(data, bytes):
                raise TypeError(f"an outbox payload is bytes, not {type(data).__name__}")
        except Exception:
            self._c.refused += 1
            raise
        size = len(data) + len(topic.encode())
        limit = self.config.max_bytes
        if size > limit:
            self._c.refused += 1
            raise OutboxError(
                f"a message of {size} bytes on {topic!r} can never fit in outbox {self.path} "
                f"(max_bytes {limit})",
                path=self.path,
            )
        policy = self.config.overflow
        if policy != "drop-oldest" and self._bytes + self._reserved + size > limit:
            if policy == "block":
                return size
            self._c.dropped_newest += 1
            self._c.dropped_newest_bytes += size
            raise OutboxFullError(
                f"outbox {self.path} is full ({self._bytes + self._reserved} of {limit} bytes): "
                f"dropped the new message on {topic!r} (policy drop-newest)",
                path=self.path,
                policy=policy,
                size=size,
                max_bytes=limit,
            )
        self._next_seq += 1
        self._reserved += size
        return PutJob(seq, topic, stream, data, self._clock(), size, self._new_future())

    async def _wait_for_room(self, topic: str, payload: Payload, stream: str) -> PutJob:
        room = asyncio.Event()
        self._waiters.append(room)
        timeout = self.config.block_timeout_s
        size = -1
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self._closed:
                        self._c.refused += 1
                        raise OutboxError(
                            f"outbox {self.path} closed while a message on {topic!r} waited for room",
                            path=self.path,
                        )
                    if self._waiters[0] is room:
                        job = self._admit(topic, payload, stream)
                        if isinstance(job, PutJob):
                            return job
                        size = job
                    room.clear()
                    await room.wait()
        except TimeoutError:
            self._c.refused += 1
            raise OutboxFullError(
                f"outbox {self.path} stayed full for {timeout} s ({self._bytes + self._reserved} of "
                f"{self.config.max_bytes} bytes): the message on {topic!r} was not queued (policy block)",
                path=self.path,
                policy="block",
                size=size,
                max_bytes=self.config.max_bytes,
            ) from None
        finally:
            self._waiters.remove(room)
            self._wake()

    def _wake(self) -> None:
        if self._waiters:
            self._waiters[0].set()

    def _check_open(self) -> None:
        if self._closed or self._thread is None:
            raise OutboxError(f"outbox {self.path} is not open", path=self.path)

    def _new_future(self) -> asyncio.Future[Any]:
        if self._loop is None:
            raise OutboxError(f"outbox {self.path} is not started", path=self.path)
        return self._loop.create_future()

    # back on the event loop, in the order the transactions ran

    def _apply_summary(self, outcome: Outcome) -> None:
        self._hwm, self._count, self._bytes = outcome.hwm, outcome.count, outcome.bytes
        self._oldest, self._first, self._dead = outcome.oldest, outcome.first, outcome.dead

    def _apply(self, outcome: Outcome) -> None:
        if outcome.error is not None:
            reason = outcome.error.reason if isinstance(outcome.error, OutboxStorageError) else ""
            for job in outcome.jobs:
                if isinstance(job, PutJob):
                    self._reserved -= job.size
                    self._c.failed += 1
                    self._c.disk_full += reason == "disk_full"
                    self._c.io_errors += reason == "io_error"
                settle(job.future, None, outcome.error)
            self._wake()
            return
        if outcome.transaction:
            self._c.transactions += 1
        self._apply_summary(outcome)
        for job, result in zip(outcome.jobs, outcome.results, strict=True):
            settle(job.future, self._apply_job(job, result), None)
        if outcome.dropped:
            self._forget(outcome.dropped)
            for first, last in outcome.dropped.ranges:
                self._dropped.add_range(first, last)
            self._c.dropped_oldest += len(outcome.dropped)
            self._c.dropped_oldest_bytes += outcome.dropped_bytes
            self._c.dropped_oldest_sent += outcome.dropped.count_between(0, self._ever_sent)
        if any(isinstance(job, PutJob) for job in outcome.jobs):
            self._arrived.set()
        self._wake()

    def _apply_job(self, job: Job, result: object) -> object:
        if isinstance(job, PutJob):
            self._reserved -= job.size
            self._c.committed += 1
            if self._cache_complete and self._cache_bytes + job.size <= self.config.memory_bytes:
                self._cache.append(
                    OutboxMessage(job.seq, job.topic, job.payload, job.stream, job.created, job.size)
                )
                self._cache_bytes += job.size
            else:
                self._cache_complete = False
            return job.seq
        if isinstance(job, AckJob):
            deleted = cast(SeqRanges, result)
            self._forget(deleted, answered=True)
            if job.reason is None:
                self._c.acked += len(deleted)
            else:
                self._c.buried += len(deleted)
            return len(deleted)
        fetched = cast(list[OutboxMessage], result)
        if job.generation == self._generation:
            self._cache.extend(fetched)
            self._cache_bytes += sum(message.size for message in fetched)
            self._cache_complete = len(fetched) < job.limit
        return None

    def _forget(self, deleted: SeqRanges, *, answered: bool = False) -> None:
        """Deleted rows leave the in-flight count and the cache; `answered`: the gateway acknowledged
        (or refused for good) them."""
        landed = deleted.count_between(0, self._sent_upto)
        self._in_flight -= landed
        if landed:
            self._arrived.set()  # room in the window for the sender
            if answered:
                self._progress_at = time.monotonic()
        if answered and deleted:
            self._acked_max = max(self._acked_max, deleted.ranges[-1][1])
        if self._cache and deleted.count_between(self._cache[0].seq, self._cache[-1].seq):
            kept = deque(m for m in self._cache if m.seq not in deleted)
            self._cache_bytes = sum(m.size for m in kept)
            self._cache = kept
