"""Sets of sequence numbers kept as minimal inclusive (first, last) ranges.

The wire form is the one `…/ack` carries: a JSON list of ``[first, last]`` pairs, sorted, disjoint
and not adjacent (``[[1, 4], [7, 7]]`` holds 1, 2, 3, 4 and 7).

    received = SeqRanges()
    received.add(5)
    received.add_range(1, 3)
    received.ranges        # ((1, 3), (5, 5))
    received.gaps()        # SeqRanges([(4, 4)]): missing below the highest, counting from 1
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

from edgekernel.protocol.errors import ProtocolError

MAX_SEQ = 2**63 - 1


def _check(first: int, last: int) -> None:
    if not 0 <= first <= last <= MAX_SEQ:
        raise ValueError(f"({first}, {last}) is not a range of seqs (0 <= first <= last <= 2**63-1)")


class SeqRanges:
    """A mutable set of seqs; adding is O(log n) in the number of ranges plus the list shift."""

    __slots__ = ("_count", "_firsts", "_lasts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        self._count = 0
        for first, last in ranges:
            self.add_range(first, last)

    @classmethod
    def of(cls, seqs: Iterable[int]) -> SeqRanges:
        out = cls()
        out.update(seqs)
        return out

    def add(self, seq: int) -> None:
        self.add_range(seq, seq)

    def update(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.add_range(seq, seq)

    def add_range(self, first: int, last: int) -> None:
        """Add every seq from `first` to `last`, both included, merging with what touches them."""
        _check(first, last)
        lo = bisect_left(self._lasts, first - 1)
        hi = bisect_right(self._firsts, last + 1)
        if lo < hi:
            first = min(first, self._firsts[lo])
            last = max(last, self._lasts[hi - 1])
            self._count -= sum(
                b - a + 1 for a, b in zip(self._firsts[lo:hi], self._lasts[lo:hi], strict=True)
            )
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]
        self._count += last - first + 1

    def count_between(self, first: int, last: int) -> int:
        """How many seqs of this set lie in [first, last]."""
        total = 0
        for index in range(bisect_left(self._lasts, first), len(self._firsts)):
            a, b = self._firsts[index], self._lasts[index]
            if a > last:
                break
            total += min(b, last) - max(a, first) + 1
        return total

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        index = bisect_right(self._firsts, seq) - 1
        return index >= 0 and self._lasts[index] >= seq

    def __len__(self) -> int:
        """The number of seqs (not of ranges)."""
        return self._count

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeqRanges):
            return NotImplemented
        return self._firsts == other._firsts and self._lasts == other._lasts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SeqRanges({list(self.ranges)!r})"

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(zip(self._firsts, self._lasts, strict=True))

    @property
    def first(self) -> int | None:
        return self._firsts[0] if self._firsts else None

    @property
    def last(self) -> int | None:
        return self._lasts[-1] if self._lasts else None

    def seqs(self) -> Iterator[int]:
        for first, last in zip(self._firsts, self._lasts, strict=True):
            yield from range(first, last + 1)

    def copy(self) -> SeqRanges:
        out = SeqRanges()
        out._firsts = list(self._firsts)
        out._lasts = list(self._lasts)
        out._count = self._count
        return out

    def gaps(self, start: int = 1) -> SeqRanges:
        """The seqs from `start` up to the highest held that are missing (a device's seqs start at 1)."""
        out = SeqRanges()
        expected = start
        for first, last in zip(self._firsts, self._lasts, strict=True):
            if last < expected:
                continue
            if first > expected:
                out._firsts.append(expected)
                out._lasts.append(first - 1)
                out._count += first - expected
            expected = last + 1
        return out

    def to_json(self) -> list[list[int]]:
        return [[first, last] for first, last in zip(self._firsts, self._lasts, strict=True)]

    @classmethod
    def from_json(cls, value: object, *, max_ranges: int | None = None) -> SeqRanges:
        """Read the wire form strictly: pairs of integers, sorted, disjoint and not adjacent."""
        if not isinstance(value, list):
            raise ProtocolError("ranges", f"seq ranges are a list of [first, last] pairs, not {value!r:.80}")
        if max_ranges is not None and len(value) > max_ranges:
            raise ProtocolError("ranges", f"{len(value)} seq ranges, over the limit of {max_ranges}")
        out = cls()
        previous = -2
        for pair in value:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and all(type(item) is int and 0 <= item <= MAX_SEQ for item in pair)
            ):
                raise ProtocolError("ranges", f"{pair!r:.80} is not a [first, last] pair of seqs")
            first, last = pair
            if first > last:
                raise ProtocolError("ranges", f"range [{first}, {last}] is reversed")
            if first <= previous + 1:
                raise ProtocolError("ranges", "seq ranges must be sorted, disjoint and not adjacent")
            out._firsts.append(first)
            out._lasts.append(last)
            out._count += last - first + 1
            previous = last
        return out
