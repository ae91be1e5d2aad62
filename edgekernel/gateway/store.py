"""The gateway's SQLite (WAL) store: telemetry messages, their samples, devices and rejects.

Writes come in batches, one transaction each. A durable message is stored once per (device, epoch,
seq): a duplicate is dropped and counted, never stored twice. A best-effort message has no seq and is
stored as it comes (QoS 0 never delivers one twice). A store written before epochs is moved to this
layout when it is opened (its messages are in epoch 0).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekernel.errors import EdgeKernelError

LAYOUT = 3  # PRAGMA user_version: 2 added epochs, 3 the events table
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER,
    stream TEXT NOT NULL,
    ts REAL NOT NULL,
    received_at REAL NOT NULL,
    samples INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_seq ON messages (device, epoch, seq);
CREATE TABLE IF NOT EXISTS samples (
    message INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER,
    ts REAL NOT NULL,
    value REAL,
    fields TEXT,
    PRIMARY KEY (message, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_by_stream ON samples (device, stream, ts);
CREATE TABLE IF NOT EXISTS events (
    message INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device, type, ts);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    online INTEGER,
    boot INTEGER,
    status_ts REAL,
    reported TEXT,
    reported_ts REAL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS duplicates (
    device TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB
);
"""

KEEP_REJECTED_BYTES = 4096
MAX_VARIABLES = 32766  # SQLite's default bound on the parameters of one statement (since 3.32)


class StoreError(EdgeKernelError):
    """The sample store could not be opened or refused a write."""


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    """One telemetry message; `seq` None for a best-effort one."""

    device: str
    stream: str
    seq: int | None
    ts: float
    received_at: float
    samples: tuple[tuple[float, float | None, str | None], ...]  # (ts, value, fields as JSON)
    epoch: int = 0
    event: str | None = None  # an event's body as JSON (its stream is events/{type}; no samples)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message; its payload is cut to KEEP_REJECTED_BYTES unless `whole` (a dead letter: a
    device's own message that was acknowledged so that the device stops sending it)."""

    topic: str
    reason: str
    message: str
    payload: bytes
    received_at: float
    whole: bool = False


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    device: str
    seen_at: float
    online: bool | None = None
    boot: int | None = None
    status_ts: float | None = None
    reported: str | None = None
    reported_ts: float | None = None


@dataclass(frozen=True, slots=True)
class NewEpoch:
    """A device's first message in a seq space while it had messages in another (`previous`, whose
    highest seq and gaps are now final)."""

    device: str
    epoch: int
    previous: int
    previous_highest: int
    previous_gaps: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int
    duplicates: int
    samples: int
    new_epochs: tuple[NewEpoch, ...] = ()


OPEN_WAIT_S = 30.0  # several gateway processes open one store at once; the others wait this long


def _while_locked(step: Callable[[], object]) -> None:
    """Run `step`, retrying while another connection holds the lock: switching to WAL reports
    SQLITE_BUSY at once, without waiting on the connection's busy timeout."""
    deadline = time.monotonic() + OPEN_WAIT_S
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=OPEN_WAIT_S
            )
            _while_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                _create(self._db)
                self._db.execute("COMMIT")
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open store {path}: {err}") from err
        self._lock = threading.Lock()
        self._spaces: set[tuple[str, int]] = set()  # (device, epoch) known to hold messages
        # lookups from the ingest thread take their own connection: a write in progress never blocks them
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()

    def write(
        self,
        telemetry: Sequence[TelemetryRecord],
        devices: Sequence[DeviceUpdate] = (),
        rejected: Sequence[Rejected] = (),
    ) -> WriteResult:
        """Store one batch in one transaction; duplicates by (device, seq) are dropped.

        Rows go in as multi-row INSERTs, one statement per few thousand rows: sqlite3 lets go of the
        GIL at every step, and a row per step would let another busy thread take it back for a whole
        switch interval at every row (a 20,000-row batch then takes tens of seconds, not milliseconds).
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                fresh, duplicates = self._fresh(telemetry)
                new_epochs = self._new_epochs(fresh)
                first = int(self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()[0])
                self._insert(
                    "messages",
                    [
                        (first + n, r.device, r.epoch, r.seq, r.stream, r.ts, r.received_at, len(r.samples))
                        for n, r in enumerate(fresh)
                    ],
                )
                self._insert(
                    "samples",
                    [
                        (first + n, idx, r.device, r.stream, r.epoch, r.seq, ts, value, fields)
                        for n, r in enumerate(fresh)
                        for idx, (ts, value, fields) in enumerate(r.samples)
                    ],
                )
                self._insert(
                    "events",
                    [
                        (first + n, r.device, r.stream.removeprefix("events/"), r.ts, r.event)
                        for n, r in enumerate(fresh)
                        if r.event is not None
                    ],
                )
                for device, count in duplicates.items():
                    self._db.execute(
                        "INSERT INTO duplicates VALUES (?, ?) "
                        "ON CONFLICT(device) DO UPDATE SET count = count + excluded.count",
                        (device, count),
                    )
                for update in devices:
                    self._upsert_device(update)
                self._insert(
                    "rejected (received_at, topic, reason, message, size, payload)",
                    [
                        (
                            r.received_at,
                            r.topic,
                            r.reason,
                            r.message,
                            len(r.payload),
                            r.payload if r.whole else r.payload[:KEEP_REJECTED_BYTES],
                        )
                        for r in rejected
                    ],
                )
                self._db.execute("COMMIT")
            except (sqlite3.Error, OverflowError, ValueError) as err:  # a value SQLite cannot bind, too
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"store write failed: {err}") from err
        for record in fresh:
            self._spaces.add((record.device, record.epoch))
        stored = len(fresh)
        return WriteResult(
            stored, sum(duplicates.values()), sum(len(r.samples) for r in fresh), tuple(new_epochs)
        )

    def _fresh(self, telemetry: Sequence[TelemetryRecord]) -> tuple[list[TelemetryRecord], Counter[str]]:
        """The records not stored yet (the first of each (device, epoch, seq) in the batch, and every
        best-effort one), and how many duplicates each device sent."""
        duplicates: Counter[str] = Counter()
        unique: dict[tuple[str, int, int], TelemetryRecord] = {}
        best_effort: list[TelemetryRecord] = []
        for record in telemetry:
            if record.seq is None:
                best_effort.append(record)
                continue
            key = (record.device, record.epoch, record.seq)
            if key in unique:
                duplicates[record.device] += 1
            else:
                unique[key] = record
        by_space: dict[tuple[str, int], list[int]] = {}
        for device, epoch, seq in unique:
            by_space.setdefault((device, epoch), []).append(seq)
        for (device, epoch), seqs in by_space.items():
            for (seq,) in self._db.execute(
                "SELECT seq FROM messages WHERE device = ? AND epoch = ? "
                "AND seq IN (SELECT value FROM json_each(?))",
                (device, epoch, json.dumps(seqs)),
            ):
                del unique[(device, epoch, seq)]
                duplicates[device] += 1
        return [*unique.values(), *best_effort], duplicates

    def _new_epochs(self, fresh: Sequence[TelemetryRecord]) -> list[NewEpoch]:
        """The seq spaces these records open for a device that had messages in another one."""
        out = []
        for device, epoch in {(r.device, r.epoch) for r in fresh if r.seq is not None} - self._spaces:
            if self._db.execute(
                "SELECT 1 FROM messages WHERE device = ? AND epoch = ? AND seq IS NOT NULL LIMIT 1",
                (device, epoch),
            ).fetchone():
                self._spaces.add((device, epoch))
                continue
            row = self._db.execute(
                "SELECT epoch FROM messages WHERE device = ? AND seq IS NOT NULL ORDER BY id DESC LIMIT 1",
                (device,),
            ).fetchone()
            if row is None:
                continue
            highest, count = self._db.execute(
                "SELECT max(seq), count(seq) FROM messages WHERE device = ? AND epoch = ?", (device, row[0])
            ).fetchone()
            out.append(NewEpoch(device, epoch, int(row[0]), int(highest), max(0, int(highest) - int(count))))
        return out

    def highest(self, device: str, epoch: int) -> tuple[int, float] | None:
        """The highest seq stored for a device in a seq space, and when it was received."""
        with self._read_lock:
            try:
                row = self._reader.execute(
                    "SELECT seq, received_at FROM messages WHERE device = ? AND epoch = ? "
                    "AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
                    (device, epoch),
                ).fetchone()
            except sqlite3.Error as err:
                raise StoreError(f"cannot read store {self.path}: {err}") from err
        return None if row is None else (int(row[0]), float(row[1]))

    def _insert(self, table: str, rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        width = len(rows[0])
        per_statement = min(MAX_VARIABLES, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)) // width
        one = "(" + ",".join("?" * width) + ")"
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            self._db.execute(
                f"INSERT INTO {table} VALUES {','.join([one] * len(chunk))}",  # noqa: S608 (our own table names)
                [value for row in chunk for value in row],
            )

    def _upsert_device(self, update: DeviceUpdate) -> None:
        self._db.execute(
            "INSERT INTO devices (device, online, boot, status_ts, reported, reported_ts, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET "
            "online = coalesce(excluded.online, online), boot = coalesce(excluded.boot, boot), "
            "status_ts = coalesce(excluded.status_ts, status_ts), "
            "reported = coalesce(excluded.reported, reported), "
            "reported_ts = coalesce(excluded.reported_ts, reported_ts), "
            "last_seen = max(last_seen, excluded.last_seen)",
            (
                update.device,
                update.online,
                update.boot,
                update.status_ts,
                update.reported,
                update.reported_ts,
                update.seen_at,
            ),
        )

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()


def _create(db: sqlite3.Connection) -> None:
    """Create the tables, or move a store from before epochs to this layout (in the caller's
    transaction, so one process does it and the others find it done)."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= LAYOUT:
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    old = bool(columns) and "epoch" not in columns
    if old:
        db.execute("DROP INDEX IF EXISTS samples_by_stream")
        db.execute("ALTER TABLE messages RENAME TO messages_v1")
        db.execute("ALTER TABLE samples RENAME TO samples_v1")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    if old:
        db.execute(
            "INSERT INTO messages (id, device, epoch, seq, stream, ts, received_at, samples) "
            "SELECT row_number() OVER (ORDER BY device, seq), device, 0, seq, stream, ts, received_at, "
            "samples FROM messages_v1"
        )
        db.execute(
            "INSERT INTO samples SELECT m.id, s.idx, s.device, s.stream, 0, s.seq, s.ts, s.value, s.fields "
            "FROM samples_v1 s JOIN messages m ON m.device = s.device AND m.epoch = 0 AND m.seq = s.seq"
        )
        db.execute("DROP TABLE messages_v1")
        db.execute("DROP TABLE samples_v1")
    db.execute(f"PRAGMA user_version = {LAYOUT}")


def encode_fields(value: float | dict[str, float]) -> tuple[float | None, str | None]:
    if isinstance(value, dict):
        return None, json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value, None


@dataclass(frozen=True, slots=True)
class SpaceSummary:
    """One seq space of a device: its durable messages, highest seq and the seqs below it that never
    arrived (a space's seqs start at 1; an old space's figures no longer change)."""

    epoch: int
    messages: int
    highest_seq: int
    gaps: int


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """One device as the store sees it. `messages` counts durable and best-effort messages alike;
    `highest_seq` and `epoch` are those of the seq space it used last; `gaps` counts durable messages
    missing in all its seq spaces (best-effort ones have no seq, so are never missing)."""

    device: str
    messages: int
    samples: int
    highest_seq: int | None
    online: bool | None
    last_seen: float | None
    duplicates: int = 0
    best_effort: int = 0
    epoch: int | None = None
    spaces: tuple[SpaceSummary, ...] = ()

    @property
    def gaps(self) -> int:
        return sum(space.gaps for space in self.spaces)


def read_summary(path: Path) -> list[DeviceSummary]:
    """Per-device totals, read without writing (safe beside a running gateway)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open store {path}: {err}") from err
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] < LAYOUT:
            raise StoreError(f"store {path} is from before seq epochs: start the gateway once to update it")
        rows = db.execute(
            "SELECT device, epoch, count(*), count(seq), max(seq), sum(samples), max(id) "
            "FROM messages GROUP BY device, epoch ORDER BY device, max(id)"
        ).fetchall()
        states = {d: (o, seen) for d, o, seen in db.execute("SELECT device, online, last_seen FROM devices")}
        dupes = dict(db.execute("SELECT device, count FROM duplicates"))
    except sqlite3.Error as err:
        raise StoreError(f"cannot read store {path}: {err}") from err
    finally:
        db.close()
    spaces: dict[str, list[SpaceSummary]] = {}
    totals: dict[str, tuple[int, int, int]] = {}
    for device, epoch, n, durable, top, s, _ in rows:
        messages, samples, best_effort = totals.get(device, (0, 0, 0))
        totals[device] = (messages + int(n), samples + int(s or 0), best_effort + int(n) - int(durable))
        if top is not None:
            spaces.setdefault(device, []).append(
                SpaceSummary(int(epoch), int(durable), int(top), max(0, int(top) - int(durable)))
            )
    summaries = []
    for device in sorted(totals.keys() | states.keys()):
        messages, samples, best_effort = totals.get(device, (0, 0, 0))
        online, seen = states.get(device, (None, None))
        own = tuple(spaces.get(device, ()))
        summaries.append(
            DeviceSummary(
                device,
                messages,
                samples,
                own[-1].highest_seq if own else None,
                None if online is None else bool(online),
                seen,
                int(dupes.get(device, 0)),
                best_effort,
                own[-1].epoch if own else None,
                own,
            )
        )
    return summaries
