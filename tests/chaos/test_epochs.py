"""Seq spaces with real processes: a device whose outbox is moved aside (while it runs, or between
restarts) starts a new seq space, and everything it sends after is stored, none of it acknowledged
without being stored; best-effort messages lost by design are never counted as gaps."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgekernel.gateway import read_summary
from edgekernel.link import Mosquitto, Outbox

from .harness import AckWatcher, Program, check_exactly_once, device, gateway

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def count(store: Path, query: str, *args: object) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store, timeout=5) as db:
        try:
            value = int(db.execute(query, args).fetchone()[0])
        except sqlite3.OperationalError:  # the gateway is still creating its tables
            value = 0
    db.close()
    return value


def move_aside(outbox: Path) -> None:
    """What the corrupt-outbox message advises: the file (and its log) go, the device starts an empty one."""
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{outbox}{suffix}")
        if part.exists():
            part.rename(Path(f"{outbox}{suffix}.aside"))


def outbox_state(path: Path) -> tuple[int, int, set[int]]:
    """A stopped device's outbox: its epoch, the highest seq it handed out, and what it still holds."""

    async def read() -> tuple[int, int, set[int]]:
        async with Outbox(path) as outbox:
            held = {m.seq for m in await outbox.pending(10**7)}
            return outbox.epoch, outbox.stats().highest_seq, held

    return asyncio.run(read())


def stored_since(store: Path, device_name: str, since: float) -> list[int]:
    """The seqs of durable messages the device stamped after `since` (the same machine's clock)."""
    with sqlite3.connect(store, timeout=5) as db:
        rows = db.execute(
            "SELECT seq FROM messages WHERE device = ? AND ts > ? AND seq IS NOT NULL", (device_name, since)
        ).fetchall()
    db.close()
    return [seq for (seq,) in rows]


def run_reset(broker: Mosquitto, tmp_path: Path, reset: Callable[[Program, Path], None]) -> None:
    """The device streams, its outbox is reset by `reset`, it streams again; then every message it
    stamped after the reset is stored exactly once or still in its new outbox."""
    store = tmp_path / "store.db"
    outbox = tmp_path / "dev-1" / "outbox.db"
    gw = gateway(tmp_path, broker.url)
    dev = device(tmp_path, "dev-1", broker.url, rate_hz=100, batch=5)
    gw.start()
    try:
        with AckWatcher(broker.url, store) as acks:
            dev.start()
            wait_for(lambda: count(store, "SELECT count(*) FROM messages") >= 40, "40 messages stored")
            reset(dev, outbox)
            reset_at = time.time()
            dev.start()
            wait_for(
                lambda: count(store, "SELECT count(*) FROM messages WHERE ts > ?", reset_at) >= 60,
                "60 messages stored after the reset",
            )
            dev.stop()
            time.sleep(1.0)
            not_stored = [ack for ack in acks.seen() if ack.not_stored]
            errors = list(acks.errors)
    finally:
        dev.stop()
        gw.stop()
    assert errors == []
    assert not_stored == [], "acknowledged before it was stored"
    epoch, highest, held = outbox_state(outbox)
    after = stored_since(store, "dev-1", reset_at)
    assert len(after) == len(set(after))
    assert set(after) | held == set(range(1, highest + 1)), "messages after the reset were lost"
    [summary] = read_summary(store)
    assert summary.epoch == epoch != 0
    assert len(summary.spaces) == 2
    assert summary.spaces[-1].gaps <= len(held)
    assert "dev-1 started a new seq space" in log_text(tmp_path / "gw-1.log")
    assert "'new_epochs': 1" in log_text(tmp_path / "gw-1.log")
    assert "outbox_reset" in log_text(tmp_path / "dev-1.log")
    assert "started empty; its seqs start again at 1 in a new seq space" in log_text(tmp_path / "dev-1.log")


def log_text(path: Path) -> str:
    """A program's log with rich's line wrapping undone."""
    return " ".join(path.read_text().split())


def test_an_outbox_moved_aside_between_restarts_loses_nothing_after_it(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    def between_restarts(dev: Program, outbox: Path) -> None:
        dev.stop()
        move_aside(outbox)

    run_reset(persistent_broker, tmp_path, between_restarts)


def test_an_outbox_moved_aside_while_running_then_a_crash_loses_nothing_after_it(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    def while_running(dev: Program, outbox: Path) -> None:
        move_aside(outbox)  # the running device keeps writing to the file it has open
        time.sleep(1.0)
        dev.kill()

    run_reset(persistent_broker, tmp_path, while_running)


def test_best_effort_messages_lost_by_design_are_not_gaps(
    persistent_broker: Mosquitto, tmp_path: Path
) -> None:
    store = tmp_path / "store.db"
    gw = gateway(tmp_path, persistent_broker.url)
    dev = device(tmp_path, "dev-1", persistent_broker.url, rate_hz=50, batch=5, best_effort_hz=20)
    gw.start()
    dev.start()
    try:
        best_effort = "SELECT count(*) FROM messages WHERE seq IS NULL"
        wait_for(lambda: count(store, best_effort) >= 20, "best-effort messages stored")
        gw.stop()  # QoS 0 messages meanwhile are dropped by the broker: lost by design
        time.sleep(2.0)
        gw.start()
        stored = count(store, best_effort)
        wait_for(lambda: count(store, best_effort) >= stored + 20, "best-effort messages after the outage")
        dev.stop()
        time.sleep(1.0)
    finally:
        dev.stop()
        gw.stop()
    [summary] = read_summary(store)
    assert summary.best_effort >= 40
    assert summary.gaps == 0
    assert check_exactly_once(tmp_path, "dev-1") > 20
