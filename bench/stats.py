"""The one place the bench scripts compute their figures (nearest-rank percentiles)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Summary", "median", "ms", "percentile", "summary"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile, ``fraction`` in 0..1 (0.5 is the median, 1.0 the maximum)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def median(values: Iterable[float]) -> float:
    """Nearest-rank median: always one of ``values`` (the lower middle of an even count)."""
    return percentile(list(values), 0.5)


def ms(seconds: Iterable[float]) -> list[float]:
    """Seconds -> milliseconds."""
    return [value * 1000 for value in seconds]


@dataclass(frozen=True)
class Summary:
    """Latencies in milliseconds: count, p50, p90, p99 and maximum (nearest rank)."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float

    def __str__(self) -> str:
        return (
            f"n={self.n} p50={self.p50:.1f} p90={self.p90:.1f} p99={self.p99:.1f}"
            f" max={self.max:.1f} ms"
        )


def summary(latencies_ms: Iterable[float]) -> Summary:
    values = sorted(latencies_ms)
    p50, p90, p99, top = (percentile(values, q) for q in (0.5, 0.9, 0.99, 1.0))
    return Summary(len(values), p50, p90, p99, top)
