"""SeqRanges against a plain set of ints, and its strict wire form."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgekernel.link.ranges import MAX_SEQ, SeqRanges
from edgekernel.protocol.errors import ProtocolError

small_range = st.tuples(st.integers(0, 300), st.integers(0, 20)).map(lambda p: (p[0], p[0] + p[1]))


def _model(ranges: list[tuple[int, int]]) -> set[int]:
    return {seq for first, last in ranges for seq in range(first, last + 1)}


def _minimal(pairs: tuple[tuple[int, int], ...]) -> bool:
    return all(a <= b for a, b in pairs) and all(
        prev[1] + 1 < nxt[0] for prev, nxt in itertools.pairwise(pairs)
    )


@given(st.lists(small_range, max_size=40))
def test_matches_a_set_and_stays_minimal(ranges: list[tuple[int, int]]) -> None:
    seqs = SeqRanges()
    for first, last in ranges:
        seqs.add_range(first, last)
    model = _model(ranges)
    assert set(seqs.seqs()) == model
    assert list(seqs.seqs()) == sorted(model)
    assert len(seqs) == len(model)
    assert bool(seqs) == bool(model)
    assert _minimal(seqs.ranges)
    assert seqs.first == (min(model) if model else None)
    assert seqs.last == (max(model) if model else None)
    for probe in range(-1, 330):
        assert (probe in seqs) == (probe in model)
    assert SeqRanges.of(model) == seqs
    assert SeqRanges(reversed(ranges)) == seqs  # order of adding does not matter


@given(st.lists(small_range, max_size=30), st.integers(0, 330), st.integers(0, 60))
def test_count_between(ranges: list[tuple[int, int]], first: int, span: int) -> None:
    seqs = SeqRanges(ranges)
    model = _model(ranges)
    assert seqs.count_between(first, first + span) == len(model & set(range(first, first + span + 1)))


@given(st.lists(small_range, max_size=30), st.integers(0, 340))
def test_gaps_are_the_missing_seqs_below_the_highest(ranges: list[tuple[int, int]], start: int) -> None:
    seqs = SeqRanges(ranges)
    model = _model(ranges)
    top = max(model, default=start - 1)
    gaps = seqs.gaps(start)
    assert set(gaps.seqs()) == set(range(start, top + 1)) - model
    assert _minimal(gaps.ranges)
    assert len(gaps) == len(set(gaps.seqs()))


@given(st.lists(small_range, max_size=30))
def test_wire_form_round_trips_through_json(ranges: list[tuple[int, int]]) -> None:
    seqs = SeqRanges(ranges)
    wire = json.loads(json.dumps(seqs.to_json()))
    assert SeqRanges.from_json(wire) == seqs
    assert SeqRanges.from_json(wire, max_ranges=len(wire)) == seqs


def test_examples() -> None:
    seqs = SeqRanges()
    seqs.add(5)
    seqs.add_range(1, 3)
    assert seqs.ranges == ((1, 3), (5, 5))
    seqs.add(4)
    assert seqs.to_json() == [[1, 5]]
    assert seqs.gaps() == SeqRanges()
    assert SeqRanges([(3, 4)]).gaps() == SeqRanges([(1, 2)])
    assert SeqRanges().gaps() == SeqRanges()
    assert repr(SeqRanges([(1, 2)])) == "SeqRanges([(1, 2)])"
    assert "1" not in seqs
    assert SeqRanges([(0, MAX_SEQ)]).count_between(0, MAX_SEQ) == MAX_SEQ + 1


def test_copy_is_independent_and_not_hashable() -> None:
    seqs = SeqRanges([(1, 2)])
    copy = seqs.copy()
    copy.add(9)
    assert seqs.ranges == ((1, 2),)
    assert len(copy) == 3
    with pytest.raises(TypeError):
        hash(seqs)


@pytest.mark.parametrize(("first", "last"), [(3, 2), (-1, 4), (0, MAX_SEQ + 1)])
def test_bad_ranges_are_refused(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="not a range of seqs"):
        SeqRanges([(first, last)])


@pytest.mark.parametrize(
    "wire",
    [
        {"ranges": []},
        [[1]],
        [[1, 2, 3]],
        [[2, 1]],
        [[1, 2], [2, 5]],
        [[1, 2], [3, 5]],
        [[5, 6], [1, 2]],
        [[True, 2]],
        [[1.0, 2]],
        [[-1, 2]],
        [[1, MAX_SEQ + 1]],
        [(1, 2)],
        "[[1, 2]]",
    ],
)
def test_bad_wire_forms_raise_protocol_error(wire: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        SeqRanges.from_json(wire)
    assert caught.value.reason == "ranges"


def test_wire_form_limit_applies_before_reading_pairs() -> None:
    with pytest.raises(ProtocolError, match="over the limit of 2"):
        SeqRanges.from_json([[1, 1], [3, 3], "junk"], max_ranges=2)


@given(st.lists(st.lists(st.one_of(st.integers(-3, 50), st.booleans(), st.none()), max_size=3), max_size=6))
def test_decoding_arbitrary_lists_raises_only_protocol_error(wire: list[list[object]]) -> None:
    try:
        decoded = SeqRanges.from_json(wire)
    except ProtocolError:
        return
    assert decoded.to_json() == wire
