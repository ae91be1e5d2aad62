"""The `replay` driver: a CSV file of a timestamp column and channels, played at recorded or scaled speed.

    timestamp,x,y
    1700000000.000,0.12,-0.40
    1700000000.010,0.15,-0.38

The first line names the columns; channel names follow the id rule (1-63 of a-z 0-9 _ -). One channel
gives plain values, several give a map of channel to value. Times are seconds (any origin), never
decreasing. A bad row is an error naming file:line. With `loop`, the file starts over after its last
row (one median interval later); without, the stream goes quiet.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from edgekernel.config.base import FilePath, Id, Model
from edgekernel.device.drivers.base import SampleValue, Timed
from edgekernel.errors import EdgeKernelError
from edgekernel.protocol.topics import ID_PATTERN

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_AT_ONCE = 10_000  # rows handed over in one poll; a late stream catches up over the next ones
_ID = re.compile(f"^{ID_PATTERN}$")


class ReplayFileError(EdgeKernelError):
    """A replay CSV that cannot be read or parsed (.path, .line)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line


class ReplayConfig(Model):
    file: FilePath = Field(description="the CSV file; relative to the config file's folder")
    speed: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = Field(
        1.0, description="1 plays at the recorded speed, 2 twice as fast"
    )
    loop: bool = Field(False, description="start over after the last row")
    timestamps: Literal["now", "recorded"] = Field(
        "now", description="now: samples carry the time they are played; recorded: the file's times"
    )
    timestamp_column: Annotated[str, Field(min_length=1, max_length=64)] = "timestamp"
    channels: Annotated[list[Id], Field(min_length=1, max_length=64)] | None = Field(
        None, description="the columns to play (default: every column but the timestamp)"
    )


@dataclass(frozen=True, slots=True)
class Recording:
    channels: tuple[str, ...]
    times: np.ndarray  # float64 seconds, never decreasing
    values: np.ndarray  # float64 [rows, channels]


def parse_csv(
    text: str,
    *,
    path: str = "<csv>",
    timestamp_column: str = "timestamp",
    channels: Sequence[str] | None = None,
) -> Recording:
    """The rows of a replay CSV; anything wrong is a `ReplayFileError` at its file:line."""
    reader = csv.reader(io.StringIO(text))
    times: list[float] = []
    rows: list[list[float]] = []
    try:
        names, wanted = _header(reader, path, timestamp_column, channels)
        ts_at = names.index(timestamp_column)
        picks = [names.index(n) for n in wanted]
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(names):
                raise ReplayFileError(path, line, f"{len(cells)} fields, the header has {len(names)}")
            ts = _number(cells[ts_at], path, line, timestamp_column)
            if times and ts < times[-1]:
                raise ReplayFileError(path, line, f"time {ts!r} is before the row above ({times[-1]!r})")
            times.append(ts)
            rows.append([_number(cells[i], path, line, names[i]) for i in picks])
    except csv.Error as err:
        raise ReplayFileError(path, reader.line_num, f"not CSV: {err}") from err
    if not rows:
        raise ReplayFileError(path, 0, "no rows after the header")
    return Recording(tuple(wanted), np.asarray(times, dtype=np.float64), np.asarray(rows, dtype=np.float64))


def _header(
    reader: Iterator[list[str]], path: str, timestamp_column: str, channels: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The column names, and the channels to play."""
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):
        header = next(reader, None)
    if header is None:
        raise ReplayFileError(path, 0, "empty file: the first line names the columns")
    line = getattr(reader, "line_num", 1)
    names = [cell.strip() for cell in header]
    if timestamp_column not in names:
        raise ReplayFileError(path, line, f"no {timestamp_column!r} column (columns: {', '.join(names)})")
    if len(set(names)) != len(names):
        raise ReplayFileError(path, line, "a column is named twice")
    wanted = [n for n in names if n != timestamp_column] if channels is None else list(channels)
    if not wanted:
        raise ReplayFileError(path, line, "no channel columns besides the timestamp")
    for name in wanted:
        if name not in names or name == timestamp_column:
            raise ReplayFileError(path, line, f"no channel column {name!r}")
        if not _ID.match(name):
            raise ReplayFileError(path, line, f"channel {name!r} must match {ID_PATTERN}")
    return names, wanted


def _number(cell: str, path: str, line: int, column: str) -> float:
    try:
        value = float(cell.strip())
    except ValueError:
        raise ReplayFileError(path, line, f"{column}: {cell.strip()[:40]!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > 1e15:
        raise ReplayFileError(path, line, f"{column}: {value!r} is not a finite number up to 1e15")
    return value


class ReplaySource:
    Config = ReplayConfig

    def __init__(self, config: ReplayConfig, *, rate_hz: float, t0: float) -> None:
        self.config = config
        self.wall_times = config.timestamps == "recorded"
        self.recording = _read(config)
        times = self.recording.times
        self._offsets = (times - times[0]) / config.speed  # seconds after the start of a pass
        gaps = np.diff(times)
        step = float(np.median(gaps)) if gaps.size else 1.0 / rate_hz
        self._pass_s = float(self._offsets[-1]) + max(step, 1e-6) / config.speed
        self._t0 = t0
        self.produced = 0
        self.passes = 0
        self._row = 0

    async def run(self) -> None:
        return None

    @property
    def finished(self) -> bool:
        return not self.config.loop and self.passes > 0

    def due(self, now: float) -> int:
        """Rows whose time has come (over several passes when looping), at most MAX_AT_ONCE."""
        elapsed = now - self._t0
        if self.finished or elapsed < 0:
            return 0
        rows = len(self._offsets)
        if self.config.loop:
            whole = math.floor(elapsed / self._pass_s)
            total = whole * rows + int(
                np.searchsorted(self._offsets, elapsed - whole * self._pass_s, "right")
            )
        else:
            total = int(np.searchsorted(self._offsets, elapsed, "right"))
        return min(MAX_AT_ONCE, max(0, total - (self.passes * rows + self._row)))

    def take(self, count: int) -> list[Timed]:
        out: list[Timed] = []
        rec = self.recording
        single = len(rec.channels) == 1
        while len(out) < count and not self.finished:
            i = self._row
            value: SampleValue = (
                float(rec.values[i, 0])
                if single
                else dict(zip(rec.channels, rec.values[i].tolist(), strict=True))
            )
            if self.wall_times:
                at = float(rec.times[i])
            else:
                at = self._t0 + self.passes * self._pass_s + float(self._offsets[i])
            out.append((at, value))
            self._row += 1
            if self._row == len(self._offsets):
                self._row = 0
                self.passes += 1
        self.produced += len(out)
        return out


def _read(config: ReplayConfig) -> Recording:
    path = config.file
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ReplayFileError(str(path), 0, f"{size} bytes, over {MAX_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ReplayFileError(str(path), 0, f"cannot read it: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ReplayFileError(str(path), 0, f"not UTF-8 text: {err.reason}") from err
    return parse_csv(text, path=str(path), timestamp_column=config.timestamp_column, channels=config.channels)
