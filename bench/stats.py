"""Figures of a bench's samples."""

import statistics


def median(values: list[float]) -> float:
    """The median; NaN when there is no sample."""
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (statistics.quantiles, inclusive): of 10 or 20 samples, p99 is in
    effect the largest. One sample is its own percentile; none, NaN."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
