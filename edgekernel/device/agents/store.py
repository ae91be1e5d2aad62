"""Each agent's small persisted key/value state (`ctx.state`), in ``data_dir/agents.db``.

Values are JSON. A write is committed (WAL, synchronous=FULL) before `set` returns, so what an agent
saved survives a SIGKILL of the kernel, a restart of the agent and a new version of it. Sizes are
bounded per key, per value and per agent, so one agent cannot fill the disk the outbox needs.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from pathlib import Path

from pydantic import JsonValue

from edgekernel.device.agents.errors import AgentError, AgentQuotaError

MAX_KEY = 128
MAX_VALUE_BYTES = 64 * 1024
MAX_AGENT_BYTES = 1024 * 1024


class AgentStateError(AgentError):
    """The agents' state file cannot be opened or written."""


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS state (agent TEXT NOT NULL, key TEXT NOT NULL, "
                "value TEXT NOT NULL, PRIMARY KEY (agent, key)) WITHOUT ROWID"
            )
        except (OSError, sqlite3.Error) as err:
            raise AgentStateError("-", f"cannot open agent state {path}: {err}") from err

    def load(self, agent: str) -> dict[str, JsonValue]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT key, value FROM state WHERE agent = ?", (agent,)).fetchall()
            except sqlite3.Error as err:
                raise AgentStateError(agent, f"cannot read agent state {self.path}: {err}") from err
        return {key: json.loads(value) for key, value in rows}

    def put(self, agent: str, key: str, value: JsonValue) -> None:
        _check_key(agent, key)
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        if len(text) > MAX_VALUE_BYTES:
            raise AgentQuotaError(
                agent, "state-bytes", f"state value {key!r} is {len(text)} bytes, over {MAX_VALUE_BYTES}"
            )
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                used = self._db.execute(
                    "SELECT coalesce(sum(length(key) + length(value)), 0) FROM state "
                    "WHERE agent = ? AND key != ?",
                    (agent, key),
                ).fetchone()[0]
                if used + len(key) + len(text) > MAX_AGENT_BYTES:
                    self._db.execute("ROLLBACK")
                    raise AgentQuotaError(
                        agent, "state-bytes", f"agent {agent}'s state would pass {MAX_AGENT_BYTES} bytes"
                    )
                self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (agent, key, text))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise AgentStateError(agent, f"cannot write agent state {self.path}: {err}") from err

    def delete(self, agent: str, key: str) -> None:
        with self._lock:
            try:
                self._db.execute("DELETE FROM state WHERE agent = ? AND key = ?", (agent, key))
            except sqlite3.Error as err:
                raise AgentStateError(agent, f"cannot write agent state {self.path}: {err}") from err

    def drop(self, agent: str) -> None:
        """Forget an agent's state (removed from the device for good)."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM state WHERE agent = ?", (agent,))
            except sqlite3.Error as err:
                raise AgentStateError(agent, f"cannot write agent state {self.path}: {err}") from err

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _check_key(agent: str, key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise AgentQuotaError(
            agent, "state-key", f"state keys are 1 to {MAX_KEY} characters, got {key!r:.40}"
        )
