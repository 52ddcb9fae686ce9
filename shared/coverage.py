"""Which event-time ranges of an org have been delivered. Pure, no I/O.

Coverage is a set of half-open ranges [start, end) of Unix seconds, kept merged and
sorted, so it stays a handful of ranges however much was delivered. Live collection and
every backfill add to it; `backfill` sends only what it does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

Range = tuple[int, int]


@dataclass(frozen=True)
class Coverage:
    ranges: tuple[Range, ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[Range]) -> Coverage:
        """The merged union of `ranges`; empty and inverted ranges are dropped."""
        merged: list[list[int]] = []
        for start, end in sorted((int(start), int(end)) for start, end in ranges if end > start):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return cls(tuple((start, end) for start, end in merged))

    def __iter__(self) -> Iterator[Range]:
        return iter(self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def union(self, other: Coverage | Iterable[Range]) -> Coverage:
        return Coverage.of([*self.ranges, *other])

    def gaps(self, start: int, end: int) -> Coverage:
        """The parts of [start, end) this coverage does not hold."""
        missing: list[Range] = []
        position = start
        for covered_start, covered_end in self.ranges:
            if covered_end <= position:
                continue
            if covered_start >= end:
                break
            if covered_start > position:
                missing.append((position, covered_start))
            position = max(position, covered_end)
        if position < end:
            missing.append((position, end))
        return Coverage(tuple(missing))

    def without(self, start: int, end: int) -> Coverage:
        """This coverage less [start, end)."""
        return Coverage.of(
            piece
            for a, b in self.ranges
            for piece in ((a, min(b, start)), (max(a, end), b))
        )

    def seconds(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def within(self, start: int, end: int) -> Coverage:
        """The parts of this coverage inside [start, end)."""
        return Coverage.of((max(start, a), min(end, b)) for a, b in self.ranges)

    def internal_gaps(self) -> Coverage:
        """The holes between delivered ranges: what an outage or a forward reset left behind."""
        return Coverage(tuple((a[1], b[0]) for a, b in zip(self.ranges, self.ranges[1:], strict=False)))
