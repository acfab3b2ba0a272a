"""Percentiles and the summary of a list of latencies."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p95, p99, max of latencies given in seconds, in milliseconds."""
    values = sorted(seconds)
    out: dict[str, float | int] = {"count": len(values)}
    for p in (50, 95, 99):
        out[f"p{p}_ms"] = round(percentile(values, p) * 1000, 3)
    out["max_ms"] = round(values[-1] * 1000, 3) if values else math.nan
    return out
