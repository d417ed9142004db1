"""The one place the bench scripts compute their figures (nearest-rank percentiles)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["median", "percentile"]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile, ``fraction`` in 0..1 (0.5 is the median, 1.0 the maximum)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)
