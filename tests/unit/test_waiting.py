"""The shared test helpers for waiting and for reading a store that is still being created."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path

import pytest

from tests.stores import rows
from tests.waiting import wait_until, wait_until_async


def test_wait_until_returns_the_first_true_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: (n := next(counter)) >= 3 and n, "three", interval=0.001) == 3


def test_wait_until_fails_naming_what_and_what_was_seen() -> None:
    with pytest.raises(
        AssertionError, match=r"timed out after 0s waiting for the moon; last seen: \{'n': 1\}"
    ):
        wait_until(lambda: False, "the moon", timeout=0.05, seen=lambda: {"n": 1}, interval=0.01)


def test_wait_until_fails_early_once_what_is_seen_stops_changing() -> None:
    with pytest.raises(AssertionError, match=r"no progress for 0.1s .* waiting for more; last seen: 7"):
        wait_until(lambda: False, "more", timeout=60, seen=lambda: 7, stalled_after=0.1, interval=0.01)


def test_wait_until_keeps_waiting_while_what_is_seen_changes() -> None:
    polls: list[int] = []

    def grown() -> bool:
        polls.append(len(polls))
        return len(polls) > 30

    assert wait_until(grown, "growth", seen=lambda: len(polls), stalled_after=0.05, interval=0.01)


def test_wait_until_async_lets_the_loop_run() -> None:
    async def scenario() -> int:
        done: list[int] = []
        asyncio.get_running_loop().call_later(0.05, done.append, 1)
        return await wait_until_async(lambda: len(done), "the callback", timeout=5)

    assert asyncio.run(scenario()) == 1


def test_a_store_not_yet_created_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    assert rows(store, "SELECT seq FROM messages") == []
    assert not store.exists()


def test_a_store_without_its_tables_yet_reads_as_empty(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    sqlite3.connect(store).close()  # the gateway has created the file, not yet its schema
    assert rows(store, "SELECT seq FROM messages") == []
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE messages (seq INTEGER)")
        db.execute("INSERT INTO messages VALUES (4)")
    assert rows(store, "SELECT seq FROM messages") == [(4,)]


def test_other_store_errors_are_raised(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    sqlite3.connect(store).close()
    with pytest.raises(sqlite3.OperationalError, match="syntax"):
        rows(store, "SELEKT 1")
