"""The gateway's store and acks on their own: values SQLite cannot take, and acks past the range limit."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edgekernel.gateway.store import (
    DeviceUpdate,
    NewEpoch,
    SpaceSummary,
    Store,
    StoreError,
    TelemetryRecord,
    read_summary,
)
from edgekernel.protocol.bodies import MAX_ACK_RANGES, AckBody


def record(seq: int) -> TelemetryRecord:
    return TelemetryRecord("dev-1", "s", seq, 1.0, 1.0, ((1.0, 0.5, None),))


def test_a_value_sqlite_cannot_bind_fails_the_write_and_leaves_the_store_usable(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with pytest.raises(StoreError, match="store write failed"):
        store.write([record(1)], [DeviceUpdate("dev-1", 1.0, boot=2**64)])
    result = store.write([record(1), record(2)], [DeviceUpdate("dev-1", 1.0, boot=3)])
    assert (result.stored, result.duplicates) == (2, 0)
    store.close()


def test_duplicates_in_a_batch_and_in_the_store_are_counted_once_each(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.write([record(1), record(2)])
    result = store.write([record(2), record(3), record(3), record(1)])
    assert (result.stored, result.duplicates, result.samples) == (1, 3, 1)
    store.close()


def test_acks_past_the_range_limit_are_split() -> None:
    seqs = list(range(1, 4 * MAX_ACK_RANGES, 2))  # every other seq: one range each
    bodies = AckBody.split(seqs)
    assert len(bodies) == 2
    assert all(len(body.ranges) <= MAX_ACK_RANGES for body in bodies)
    covered = [seq for body in bodies for first, last in body.ranges for seq in range(first, last + 1)]
    assert covered == seqs
    assert AckBody.split([5, 3, 4, 9])[0].ranges == [[3, 5], [9, 9]]


def spaced(seq: int | None, epoch: int = 0, device: str = "dev-1") -> TelemetryRecord:
    return TelemetryRecord(device, "s", seq, 1.7e9, 1.7e9, ((1.7e9, 0.5, None),), epoch)


def test_each_seq_space_is_kept_apart_and_a_new_one_is_reported(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.write([spaced(1), spaced(2), spaced(4)])
    result = store.write([spaced(1, epoch=77), spaced(2, epoch=77)])  # the outbox was reset: seq 1 again
    assert (result.stored, result.duplicates) == (2, 0)
    assert result.new_epochs == (NewEpoch("dev-1", 77, 0, 4, 1),)
    assert store.write([spaced(2, epoch=77), spaced(4)]).duplicates == 2
    assert store.write([spaced(3, epoch=77)]).new_epochs == ()
    store.close()
    [summary] = read_summary(tmp_path / "s.db")
    assert (summary.epoch, summary.highest_seq, summary.messages, summary.gaps) == (77, 3, 6, 1)
    assert summary.spaces == (SpaceSummary(0, 3, 4, 1), SpaceSummary(77, 3, 3, 0))


def test_best_effort_messages_are_stored_every_time_and_are_never_gaps(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    result = store.write([spaced(None), spaced(1, epoch=5), spaced(None), spaced(2, epoch=5)])
    assert (result.stored, result.duplicates) == (4, 0)
    store.close()
    [summary] = read_summary(tmp_path / "s.db")
    assert (summary.messages, summary.best_effort, summary.highest_seq, summary.gaps) == (4, 2, 2, 0)


def test_a_store_from_before_epochs_is_moved_to_epoch_0(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript(
        """
        CREATE TABLE messages (device TEXT NOT NULL, seq INTEGER NOT NULL, stream TEXT NOT NULL,
            ts REAL NOT NULL, received_at REAL NOT NULL, samples INTEGER NOT NULL,
            PRIMARY KEY (device, seq)) WITHOUT ROWID;
        CREATE TABLE samples (device TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
            idx INTEGER NOT NULL, ts REAL NOT NULL, value REAL, fields TEXT,
            PRIMARY KEY (device, seq, idx)) WITHOUT ROWID;
        CREATE INDEX samples_by_stream ON samples (device, stream, ts);
        INSERT INTO messages VALUES ('dev-1', 1, 's', 1.0, 1.0, 2), ('dev-1', 3, 's', 1.0, 1.0, 1);
        INSERT INTO samples VALUES ('dev-1', 's', 1, 0, 1.0, 0.1, NULL), ('dev-1', 's', 1, 1, 1.0, 0.2, NULL),
            ('dev-1', 's', 3, 0, 1.0, 0.3, NULL);
        """
    )
    db.close()
    store = Store(tmp_path / "s.db")
    assert store.write([spaced(3), spaced(2)]).duplicates == 1
    assert store.highest("dev-1", 0) == (3, 1.0)
    store.close()
    [summary] = read_summary(tmp_path / "s.db")
    assert (summary.epoch, summary.messages, summary.samples, summary.gaps) == (0, 3, 4, 0)
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT seq, idx, value FROM samples WHERE seq = 1 ORDER BY idx").fetchall() == [
            (1, 0, 0.1),
            (1, 1, 0.2),
        ]
    db.close()


def test_a_store_held_locked_longer_than_sqlites_busy_timeout_still_opens(tmp_path: Path) -> None:
    """Gateway processes sharing one store open it while another writes: they wait, not fail."""
    path = tmp_path / "store.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(6.0, lambda: holder.execute("COMMIT"))  # longer than sqlite's default 5 s
    release.start()
    try:
        Store(path).close()
    finally:
        release.join()
        holder.close()


def test_many_processes_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    errors: list[StoreError] = []

    def open_it() -> None:
        try:
            Store(path).close()
        except StoreError as err:
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
