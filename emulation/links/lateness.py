"""How late a relay released the frames it held: a histogram fine enough for percentiles.

A relay holds each frame until its emulated release time; the difference between when it actually
sent it and that time is the relay's own error, added to every delay it emulates. The relay counts
every held frame in one of `BUCKETS` buckets of microseconds: bucket 0 is [0, 1 µs); above that each
power of two is split in `SUB` equal parts ([1, 1.25), [1.25, 1.5), ... [2, 2.5), ...), so a bucket's
upper bound overstates a value by at most 25 %, up to 2^24 µs (16.8 s; the last bucket is open).
Counts are cumulative; the difference of two readings is the histogram of the frames in between.

    i = bucket(late_us); hist[i] += 1
    quantile_us(hist, 99)      # an upper bound of the p99 lateness, µs (None when empty)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SUB = 4
OCTAVES = 24
BUCKETS = 1 + SUB * OCTAVES + 1


def bucket(late_us: float) -> int:
    if late_us < 1.0:
        return 0
    m, e = math.frexp(late_us)          # late_us = m · 2^e, m in [0.5, 1)
    octave = e - 1                      # late_us in [2^octave, 2^(octave+1))
    if octave >= OCTAVES:
        return BUCKETS - 1
    return 1 + SUB * octave + min(SUB - 1, int((m * 2.0 - 1.0) * SUB))


def upper_us(i: int) -> float:
    """The upper bound of bucket i (inf for the open last one)."""
    if i <= 0:
        return 1.0
    if i >= BUCKETS - 1:
        return math.inf
    octave, sub = divmod(i - 1, SUB)
    return float(2 ** octave) * (1.0 + (sub + 1) / SUB)


def diff(after: Sequence[int], before: Sequence[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


def quantile_us(hist: Sequence[int], pct: float) -> float | None:
    """Upper bound of the `pct` percentile (nearest rank) of the counted values, None when empty."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = max(1, math.ceil(pct / 100.0 * total))
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return upper_us(i)
    return math.inf


def max_us(hist: Sequence[int]) -> float | None:
    """Upper bound of the largest counted value, None when empty."""
    for i in range(len(hist) - 1, -1, -1):
        if hist[i]:
            return upper_us(i)
    return None
