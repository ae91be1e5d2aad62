"""The gateway's store and acks on their own: values SQLite cannot take, and acks past the range limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekernel.gateway.store import DeviceUpdate, Store, StoreError, TelemetryRecord
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
