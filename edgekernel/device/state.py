"""The device's durable counters: the boot id survives restarts (the seq lives in the outbox).

A small SQLite (WAL) file in the device's data_dir. The boot id is taken from paho's thread (before
each connect) and read from the asyncio loop, so every call holds a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from edgekernel.errors import EdgeKernelError


class StateError(EdgeKernelError):
    """The device's state file cannot be opened or written."""


class DeviceState:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "state.db"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
        except (OSError, sqlite3.Error) as err:
            raise StateError(f"cannot open device state {self.path}: {err}") from err
        self._lock = threading.Lock()
        self.boot = self._get("boot")

    def _get(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _advance(self, name: str, by: int) -> int:
        """Add `by` to a counter and return the first of the values taken."""
        with self._lock:
            try:
                row = self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value "
                    "RETURNING value",
                    (name, by),
                ).fetchone()
            except sqlite3.Error as err:
                raise StateError(f"cannot write device state {self.path}: {err}") from err
            return int(row[0]) - by + 1

    @property
    def last_seq(self) -> int:
        """The seq counter kept here before the outbox held it: the outbox starts above it."""
        with self._lock:
            return self._get("seq")

    def next_boot(self) -> int:
        """A new boot id, one per connection attempt."""
        self.boot = self._advance("boot", 1)
        return self.boot

    def close(self) -> None:
        with self._lock:
            self._db.close()
