"""The replay driver: its CSV parser (errors at file:line) and its playback schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekernel.device.drivers import registry
from edgekernel.device.drivers.replay import ReplayConfig, ReplayFileError, ReplaySource, parse_csv

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    rows=st.lists(st.tuples(st.floats(min_value=0, max_value=1e3), finite, finite), min_size=1, max_size=40)
)
def test_written_rows_read_back(rows: list[tuple[float, float, float]]) -> None:
    rows = sorted(rows)
    text = "timestamp,x,y\n" + "".join(f"{t!r},{x!r},{y!r}\n" for t, x, y in rows)
    recording = parse_csv(text)
    assert recording.channels == ("x", "y")
    assert recording.times.tolist() == [t for t, _, _ in rows]
    assert recording.values.tolist() == [[x, y] for _, x, y in rows]


@given(st.text(max_size=300))
def test_any_text_parses_or_fails_with_a_line(text: str) -> None:
    problem: ReplayFileError | None = None
    try:
        recording = parse_csv(text, path="f.csv")
    except ReplayFileError as err:
        problem = err
    if problem is not None:
        assert str(problem).startswith("f.csv")
        assert problem.line >= 0
    else:
        assert len(recording.times) == len(recording.values) >= 1
        assert all(math.isfinite(v) for v in recording.values.flat)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "f.csv: empty file"),
        ("time,x\n1,2\n", "f.csv:1: no 'timestamp' column"),
        ("timestamp,x\n1,2\n\n2,abc\n", "f.csv:4: x: 'abc' is not a number"),
        ("timestamp,x\n2,1\n1,1\n", "f.csv:3: time 1.0 is before the row above"),
        ("timestamp,x\n1,2,3\n", "f.csv:2: 3 fields, the header has 2"),
        ("timestamp,x\n1,inf\n", "f.csv:2: x: inf is not a finite number"),
        ("timestamp,X\n1,1\n", "f.csv:1: channel 'X' must match"),
        ("timestamp,x\n", "f.csv: no rows after the header"),
        ("timestamp\n1\n", "f.csv:1: no channel columns"),
    ],
)
def test_bad_files_name_the_line(text: str, where: str) -> None:
    with pytest.raises(ReplayFileError) as caught:
        parse_csv(text, path="f.csv")
    assert str(caught.value).startswith(where)


def _source(tmp_path: Path, text: str, **settings: object) -> ReplaySource:
    (tmp_path / "r.csv").write_text(text)
    source = registry.open_source(
        "replay", "r", {"file": "r.csv", **settings}, rate_hz=1, t0=100.0, base_dir=tmp_path
    )
    assert isinstance(source, ReplaySource)
    return source


def test_plays_at_recorded_and_scaled_speed(tmp_path: Path) -> None:
    text = "timestamp,x\n50,1\n51,2\n53,3\n"
    source = _source(tmp_path, text)
    assert source.due(99.0) == 0
    assert source.due(100.0) == 1
    assert source.due(102.5) == 2
    assert source.take(2) == [(100.0, 1.0), (101.0, 2.0)]
    assert source.due(103.0) == 1
    assert source.take(5) == [(103.0, 3.0)]
    assert source.finished
    assert source.due(1e9) == 0
    fast = _source(tmp_path, text, speed=2.0)
    assert fast.due(101.5) == 3


def test_loops_and_keeps_recorded_times(tmp_path: Path) -> None:
    source = _source(tmp_path, "timestamp,a,b\n10,1,2\n11,3,4\n", loop=True, timestamps="recorded")
    assert source.wall_times
    assert source.due(100 + 2 * 2.0 + 0.5) == 5  # two passes of 2 s (1 s apart, then the median gap) and one
    taken = source.take(5)
    assert [t for t, _ in taken] == [10, 11, 10, 11, 10]
    assert taken[1][1] == {"a": 3.0, "b": 4.0}
    assert source.passes == 2


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayFileError, match=r"nope.csv: cannot read it"):
        ReplaySource(ReplayConfig(file=tmp_path / "nope.csv"), rate_hz=1, t0=0)
