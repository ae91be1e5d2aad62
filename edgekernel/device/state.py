"""The device's durable counters: the boot id survives restarts (the seq lives in the outbox); the
epoch of the outbox's seq space, kept outside the outbox file so that a device whose outbox was reset
knows it and says so; and the ids of the commands it has accepted, until they expire, so that a
restart does not open a window to replay them.

A small SQLite (WAL) file in the device's data_dir. The boot id is taken from paho's thread (before
each connect) and read from the asyncio loop, so every call holds a lock.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

from edgekernel.errors import EdgeKernelError

log = logging.getLogger(__name__)


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
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, expires_at REAL NOT NULL)"
            )
        except (OSError, sqlite3.Error) as err:
            raise StateError(f"cannot open device state {self.path}: {err}") from err
        self._lock = threading.Lock()
        self.boot = self._get("boot")
        self.write_failures = 0  # writes the disk refused (full, or failing); the device went on

    def _get(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def epoch(self) -> int:
        """The epoch of the outbox's seq space when the device last started (0: none recorded)."""
        with self._lock:
            return self._get("epoch")

    def record_epoch(self, epoch: int) -> None:
        with self._lock:
            try:
                self._db.execute("INSERT OR REPLACE INTO counters VALUES ('epoch', ?)", (epoch,))
            except sqlite3.Error as err:
                raise StateError(f"cannot write device state {self.path}: {err}") from err

    def next_boot(self) -> int:
        """A new boot id, one per connection the broker took (taken before CONNECT). If the disk
        refuses the write (full), the id is still new for this run, and the next write that succeeds
        keeps the counter at or above it; a restart before that may reuse ids given while the disk
        was full."""
        with self._lock:
            wanted = self.boot + 1
            try:
                row = self._db.execute(
                    "INSERT INTO counters (name, value) VALUES ('boot', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = max(value + 1, excluded.value) "
                    "RETURNING value",
                    (wanted,),
                ).fetchone()
                self.boot = int(row[0])
            except sqlite3.Error as err:
                self.write_failures += 1
                log.error("cannot save boot id %d in %s: %s", wanted, self.path, err)
                self.boot = wanted
            return self.boot

    def accepted_commands(self, now: float) -> list[tuple[str, float]]:
        """(id, expires_at) of every command accepted and not yet expired."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM commands WHERE expires_at <= ?", (now,))
            except sqlite3.Error as err:  # a full disk: the expired ones stay a while longer
                self.write_failures += 1
                log.error("cannot delete expired commands in %s: %s", self.path, err)
            try:
                return list(
                    self._db.execute(
                        "SELECT id, expires_at FROM commands WHERE expires_at > ? ORDER BY expires_at", (now,)
                    )
                )
            except sqlite3.Error as err:
                raise StateError(f"cannot read device state {self.path}: {err}") from err

    def accept_command(self, command_id: str, expires_at: float, now: float) -> None:
        """Keep an accepted command's id until it expires (committed before the command runs)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM commands WHERE expires_at <= ?", (now,))
                self._db.execute("INSERT OR IGNORE INTO commands VALUES (?, ?)", (command_id, expires_at))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise StateError(f"cannot write device state {self.path}: {err}") from err

    def close(self) -> None:
        with self._lock:
            self._db.close()
