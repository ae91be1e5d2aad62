"""The outbox's SQLite (WAL) file and the one writer thread that uses it.

The thread takes every job queued while the previous transaction ran (up to `max_batch`, after waiting
`max_delay_ms` for more) and runs them as one transaction: inserts, acks, drops and reads for the
sender. What it did comes back as an `Outcome` that the event loop applies in the order the
transactions ran. The file holds the seq high-water mark beside the rows, and is held with an exclusive
lock, so no second outbox can write to it.

It also holds the epoch of its seq space: a random id in [1, 2**63-1] drawn when the file starts
empty (new, truncated, or the old one moved aside), so the seqs it hands out, which start again at 1,
are never taken for those of the file before it. A file written before epochs keeps epoch 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import queue
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekernel.config.outbox import OutboxConfig
from edgekernel.link.errors import OutboxError, OutboxStorageError
from edgekernel.link.ranges import SeqRanges
from edgekernel.protocol.envelope import MAX_EPOCH

APPLICATION_ID = 0x656B6F62  # "ekob": marks the file as an edgekernel outbox
FORMAT = 1

_TABLES = (
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        stream TEXT NOT NULL,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS dead (
        seq INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        stream TEXT NOT NULL,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL,
        reason TEXT NOT NULL,
        buried REAL NOT NULL
    )""",
)
KEEP_DEAD = 1000  # dead letters kept for inspection; older ones are deleted as newer ones come


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One committed message, as the sender publishes it."""

    seq: int
    topic: str
    payload: bytes
    stream: str
    created: float
    size: int


@dataclass(slots=True, eq=False)
class PutJob:
    seq: int
    topic: str
    stream: str
    payload: bytes
    created: float
    size: int
    future: asyncio.Future[int]  # like every job's future, touched on the event loop only


@dataclass(slots=True, eq=False)
class AckJob:
    """Delete these rows; with a `reason`, move them to the dead letters instead (the gateway refused
    them for good)."""

    ranges: SeqRanges
    future: asyncio.Future[int]
    reason: str | None = None
    at: float = 0.0


@dataclass(slots=True, eq=False)
class FetchJob:
    after: int
    limit: int
    generation: int
    future: asyncio.Future[None]


Job = PutJob | AckJob | FetchJob


class Close:
    """Ends the writer thread once the jobs queued before it are done."""


CLOSE = Close()


@dataclass(slots=True)
class Outcome:
    """What one batch did; `results` lines up with `jobs`."""

    jobs: list[Job]
    results: list[object] = field(default_factory=list)
    dropped: SeqRanges = field(default_factory=SeqRanges)
    dropped_bytes: int = 0
    transaction: bool = False
    error: OutboxError | None = None
    count: int = 0
    bytes: int = 0
    hwm: int = 0
    oldest: float | None = None
    first: int = 0
    dead: int = 0
    epoch: int = 0
    new_epoch: bool = False


class OutboxFile:
    def __init__(self, path: Path, config: OutboxConfig) -> None:
        self.path = path
        self.config = config
        self._db: sqlite3.Connection | None = None
        self.epoch = 0
        self.hwm = 0
        self.count = 0
        self.dead = 0
        self.bytes = 0
        self.oldest: float | None = None
        self.first = 0  # the lowest seq kept (0: none)

    def _error(self, doing: str, err: BaseException) -> OutboxError:
        code = getattr(err, "sqlite_errorname", "")
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return OutboxError(
                f"outbox {self.path} is corrupt ({err}); it is left as it is: move it aside to start an "
                "empty outbox (its unsent messages are then lost)",
                path=self.path,
            )
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return OutboxError(f"outbox {self.path} is in use by another outbox ({err})", path=self.path)
        if code == "SQLITE_FULL" or (isinstance(err, OSError) and err.errno == errno.ENOSPC):
            return OutboxStorageError(
                f"outbox {self.path}: cannot {doing}: the disk is full ({err})",
                path=self.path,
                reason="disk_full",
            )
        if code.startswith("SQLITE_IOERR") or isinstance(err, OSError):
            return OutboxStorageError(
                f"outbox {self.path}: cannot {doing}: I/O error ({err})", path=self.path, reason="io_error"
            )
        return OutboxError(f"outbox {self.path}: cannot {doing}: {err}", path=self.path)

    def open(self) -> Outcome:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db = sqlite3.connect(self.path, timeout=0.5, isolation_level=None)
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables and app_id != APPLICATION_ID:
                raise OutboxError(
                    f"{self.path} is an SQLite file but not an edgekernel outbox; refusing to use it",
                    path=self.path,
                )
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > FORMAT:
                raise OutboxError(
                    f"outbox {self.path} has format {version}, newer than this edgekernel ({FORMAT})",
                    path=self.path,
                )
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise OutboxError(f"outbox {self.path}: cannot use WAL (journal mode {mode})", path=self.path)
            db.execute(f"PRAGMA synchronous={self.config.synchronous}")
            db.execute("BEGIN IMMEDIATE")
            for statement in _TABLES:
                db.execute(statement)
            if app_id != APPLICATION_ID or version != FORMAT:  # no write to open a file on a full disk
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={FORMAT}")
            row = db.execute("SELECT value FROM meta WHERE key = 'hwm'").fetchone()
            count, size, top = db.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM messages"
            ).fetchone()
            self.hwm = max(int(row[0]) if row else 0, int(top))
            self.count, self.bytes = int(count), int(size)
            self.dead = int(db.execute("SELECT count(*) FROM dead").fetchone()[0])
            new_epoch = self._open_epoch(db, used=row is not None or self.hwm > 0 or self.dead > 0)
            self._find_oldest(db)
            opened = self._summary(Outcome([], epoch=self.epoch, new_epoch=new_epoch))
            db.execute("COMMIT")
        except OutboxError:
            self.close()
            raise
        except (OSError, sqlite3.Error) as err:
            self.close()
            raise self._error("open it", err) from err
        return opened

    def _open_epoch(self, db: sqlite3.Connection, *, used: bool) -> bool:
        """Read the file's epoch; a file that never handed out a seq starts a new seq space."""
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is not None:
            self.epoch = int(row[0])
            return False
        self.epoch = 0 if used else secrets.randbelow(MAX_EPOCH) + 1
        db.execute("INSERT INTO meta VALUES ('epoch', ?)", (self.epoch,))
        return not used

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def commit(self, jobs: list[Job]) -> list[Outcome]:
        """Run a batch; if the disk refused it, run again without the new messages so that
        acknowledgements (which free room) and reads still go through."""
        outcome = self.run(jobs)
        if not isinstance(outcome.error, OutboxStorageError):
            return [outcome]
        adding: list[Job] = [job for job in jobs if isinstance(job, PutJob)]
        rest: list[Job] = [job for job in jobs if not isinstance(job, PutJob)]
        if not adding or not rest:
            return [outcome]
        return [Outcome(adding, error=outcome.error), self.run(rest)]

    def run(self, jobs: list[Job]) -> Outcome:
        """Run a batch in one transaction (reads alone take none); on failure nothing of it stays."""
        outcome = Outcome(jobs)
        db = self._db
        if db is None:
            outcome.error = OutboxError(f"outbox {self.path} is closed", path=self.path)
            return outcome
        saved = (self.hwm, self.count, self.bytes, self.oldest, self.first, self.dead)
        outcome.transaction = any(not isinstance(job, FetchJob) for job in jobs)
        try:
            if outcome.transaction:
                db.execute("BEGIN IMMEDIATE")
            self._run(db, outcome)
            self._summary(outcome)
            if outcome.transaction:
                db.execute("COMMIT")
        except Exception as err:  # a bug as well as a disk error fails this batch, never hangs its callers
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self.hwm, self.count, self.bytes, self.oldest, self.first, self.dead = saved
            outcome.error = self._error("commit", err)
            outcome.error.__cause__ = err
        return outcome

    def _run(self, db: sqlite3.Connection, outcome: Outcome) -> None:
        hwm = self.hwm
        removed = False
        rows: list[tuple[int, str, str, float, int, bytes]] = []
        for job in outcome.jobs:
            if isinstance(job, PutJob):
                rows.append((job.seq, job.topic, job.stream, job.created, job.size, job.payload))
                if self.count == 0:
                    self.oldest, self.first = job.created, job.seq
                self.count += 1
                self.bytes += job.size
                self.hwm = max(self.hwm, job.seq)
                outcome.results.append(job.seq)
                continue
            if rows:
                db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
                rows = []
            if isinstance(job, AckJob):
                if job.reason is not None:
                    self._bury(db, job)
                deleted = self._delete(db, job.ranges)
                removed = removed or bool(deleted)
                outcome.results.append(deleted)
            else:
                outcome.results.append(self._fetch(db, job.after, job.limit))
        if rows:
            db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", rows)
        if self.config.overflow == "drop-oldest" and self.bytes > self.config.max_bytes:
            self._drop_oldest(db, outcome)
            removed = True
        if self.hwm != hwm:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('hwm', ?)", (self.hwm,))
        if removed:
            self._find_oldest(db)

    def _bury(self, db: sqlite3.Connection, job: AckJob) -> None:
        for first, last in job.ranges.ranges:
            db.execute(
                "INSERT OR REPLACE INTO dead SELECT seq, topic, stream, created, size, payload, ?, ? "
                "FROM messages WHERE seq BETWEEN ? AND ?",
                (job.reason, job.at, first, last),
            )
        db.execute(
            "DELETE FROM dead WHERE seq NOT IN (SELECT seq FROM dead ORDER BY seq DESC LIMIT ?)", (KEEP_DEAD,)
        )
        self.dead = int(db.execute("SELECT count(*) FROM dead").fetchone()[0])

    def _delete(self, db: sqlite3.Connection, ranges: SeqRanges) -> SeqRanges:
        deleted = SeqRanges()
        size = 0
        for first, last in ranges.ranges:
            for seq, row_size in db.execute(
                "DELETE FROM messages WHERE seq BETWEEN ? AND ? RETURNING seq, size", (first, last)
            ):
                deleted.add(seq)
                size += row_size
        self.count -= len(deleted)
        self.bytes -= size
        return deleted

    def _fetch(self, db: sqlite3.Connection, after: int, limit: int) -> list[OutboxMessage]:
        return [
            OutboxMessage(seq, topic, payload, stream, created, size)
            for seq, topic, stream, created, size, payload in db.execute(
                "SELECT seq, topic, stream, created, size, payload FROM messages "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
        ]

    def _drop_oldest(self, db: sqlite3.Connection, outcome: Outcome) -> None:
        while self.bytes > self.config.max_bytes:
            upto = None
            for seq, size in db.execute("SELECT seq, size FROM messages ORDER BY seq LIMIT 256").fetchall():
                upto = seq
                outcome.dropped.add(seq)
                outcome.dropped_bytes += size
                self.count -= 1
                self.bytes -= size
                if self.bytes <= self.config.max_bytes:
                    break
            if upto is None:
                break
            db.execute("DELETE FROM messages WHERE seq <= ?", (upto,))

    def _find_oldest(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT created, seq FROM messages ORDER BY seq LIMIT 1").fetchone()
        self.oldest, self.first = (None, 0) if row is None else (float(row[0]), int(row[1]))

    def _summary(self, outcome: Outcome) -> Outcome:
        outcome.count, outcome.bytes, outcome.hwm, outcome.oldest, outcome.first, outcome.dead = (
            self.count,
            self.bytes,
            self.hwm,
            self.oldest,
            self.first,
            self.dead,
        )
        return outcome


def serve(
    file: OutboxFile,
    jobs: queue.SimpleQueue[Job | Close],
    opened: asyncio.Future[Outcome],
    stopped: asyncio.Future[None],
    apply: Callable[[Outcome], None],
) -> None:
    """The writer thread: open the file, then run batches of jobs until `CLOSE`."""
    loop = opened.get_loop()
    try:
        summary = file.open()
    except OutboxError as err:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, opened, None, err)
        return
    loop.call_soon_threadsafe(settle, opened, summary, None)
    delay = file.config.max_delay_ms / 1000
    closing = False
    try:
        while not closing:
            batch: list[Job | Close] = [jobs.get()]
            deadline = time.monotonic() + (delay if isinstance(batch[0], PutJob) else 0.0)
            while len(batch) < file.config.max_batch and batch[-1] is not CLOSE:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(jobs.get(timeout=remaining) if remaining > 0 else jobs.get_nowait())
                except queue.Empty:
                    break
            closing = batch[-1] is CLOSE
            work = [job for job in batch if not isinstance(job, Close)]
            if work:
                for outcome in file.commit(work):
                    loop.call_soon_threadsafe(apply, outcome)
    except RuntimeError:  # the event loop closed under us
        pass
    finally:
        file.close()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, stopped, None, None)


def settle(future: asyncio.Future[Any] | None, result: object, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
