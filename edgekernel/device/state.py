"""The device's durable counters: the boot id survives restarts (the seq lives in the outbox); the
epoch of the outbox's seq space, kept outside the outbox file so that a device whose outbox was reset
knows it and says so; and the ids of the commands it has accepted, until they expire, so that a
restart does not open a window to replay them.

A small SQLite (WAL) file in the device's data_dir. The boot id is taken from paho's thread (before
each connect) and read from the asyncio loop, so every call holds a lock.

`DataDirLock` keeps a second device process off a data dir that one is running with.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import weakref
from pathlib import Path

from edgekernel.errors import EdgeKernelError

log = logging.getLogger(__name__)


class StateError(EdgeKernelError):
    """The device's state file cannot be opened or written."""


class DataDirLock:
    """The data dir's ``lock`` file, held with ``flock`` for as long as this object lives (or until
    `release`) and holding this process's pid, so that a second process gets a `StateError` naming the
    first. The kernel drops the lock when its process dies, however it dies."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / "lock"
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StateError(f"cannot open the lock {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_pid(fd)
            os.close(fd)
            if not isinstance(err, BlockingIOError):
                raise StateError(f"cannot lock {self.path}: {err.strerror or err}") from None
            who = f"process {holder}" if holder else "another process"
            raise StateError(
                f"data dir {data_dir} is in use by {who}: one device process per data dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:  # a full disk: the lock holds all the same, without the pid to name
            log.warning("cannot write the pid into %s: %s", self.path, err.strerror or err)
        self._release = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


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
