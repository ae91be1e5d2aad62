"""Reading a gateway's SQLite store from a test while the gateway writes it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def rows(store: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of a query on the store, read only; none before the gateway has created the file and
    its tables (a gateway just started, on a loaded machine, may not have yet). Any other error is
    raised. Waits up to 30 s for a writer's lock."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err) or "unable to open" in str(err):
            return []
        raise
