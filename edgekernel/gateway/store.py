"""The gateway's SQLite (WAL) store: telemetry messages, their samples, devices and rejects.

Writes come in batches, one transaction each. A message is stored once per (device, seq): a
duplicate is dropped and counted, never stored twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekernel.errors import EdgeKernelError

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream TEXT NOT NULL,
    ts REAL NOT NULL,
    received_at REAL NOT NULL,
    samples INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    ts REAL NOT NULL,
    value REAL,
    fields TEXT,
    PRIMARY KEY (device, seq, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_by_stream ON samples (device, stream, ts);
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
    device: str
    stream: str
    seq: int
    ts: float
    received_at: float
    samples: tuple[tuple[float, float | None, str | None], ...]  # (ts, value, fields as JSON)


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
class WriteResult:
    stored: int
    duplicates: int
    samples: int


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open store {path}: {err}") from err
        self._lock = threading.Lock()

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
                self._insert(
                    "messages",
                    [(r.device, r.seq, r.stream, r.ts, r.received_at, len(r.samples)) for r in fresh],
                )
                self._insert(
                    "samples",
                    [
                        (r.device, r.stream, r.seq, idx, ts, value, fields)
                        for r in fresh
                        for idx, (ts, value, fields) in enumerate(r.samples)
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
        stored = len(fresh)
        return WriteResult(stored, sum(duplicates.values()), sum(len(r.samples) for r in fresh))

    def _fresh(self, telemetry: Sequence[TelemetryRecord]) -> tuple[list[TelemetryRecord], Counter[str]]:
        """The records not stored yet (the first of each (device, seq) in the batch), and how many
        duplicates each device sent."""
        duplicates: Counter[str] = Counter()
        unique: dict[tuple[str, int], TelemetryRecord] = {}
        for record in telemetry:
            key = (record.device, record.seq)
            if key in unique:
                duplicates[record.device] += 1
            else:
                unique[key] = record
        by_device: dict[str, list[int]] = {}
        for device, seq in unique:
            by_device.setdefault(device, []).append(seq)
        for device, seqs in by_device.items():
            for (seq,) in self._db.execute(
                "SELECT seq FROM messages WHERE device = ? AND seq IN (SELECT value FROM json_each(?))",
                (device, json.dumps(seqs)),
            ):
                del unique[(device, seq)]
                duplicates[device] += 1
        return list(unique.values()), duplicates

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
        with self._lock:
            self._db.close()


def encode_fields(value: float | dict[str, float]) -> tuple[float | None, str | None]:
    if isinstance(value, dict):
        return None, json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value, None


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """One device as the store sees it. `gaps` counts seqs below the highest that never arrived (the
    device's seq starts at 1 and is shared by all its durable streams)."""

    device: str
    messages: int
    samples: int
    highest_seq: int | None
    online: bool | None
    last_seen: float | None
    duplicates: int = 0

    @property
    def gaps(self) -> int:
        return 0 if self.highest_seq is None else max(0, self.highest_seq - self.messages)


def read_summary(path: Path) -> list[DeviceSummary]:
    """Per-device totals, read without writing (safe beside a running gateway)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open store {path}: {err}") from err
    try:
        totals = {
            device: (int(n), int(s or 0), top)
            for device, n, s, top in db.execute(
                "SELECT device, count(*), sum(samples), max(seq) FROM messages GROUP BY device"
            )
        }
        states = {d: (o, seen) for d, o, seen in db.execute("SELECT device, online, last_seen FROM devices")}
        try:
            dupes = dict(db.execute("SELECT device, count FROM duplicates"))
        except sqlite3.OperationalError:  # a store written before duplicates were kept per device
            dupes = {}
    except sqlite3.Error as err:
        raise StoreError(f"cannot read store {path}: {err}") from err
    finally:
        db.close()
    summaries = []
    for device in sorted(totals.keys() | states.keys()):
        messages, samples, top = totals.get(device, (0, 0, None))
        online, seen = states.get(device, (None, None))
        summaries.append(
            DeviceSummary(
                device,
                messages,
                samples,
                top,
                None if online is None else bool(online),
                seen,
                int(dupes.get(device, 0)),
            )
        )
    return summaries
