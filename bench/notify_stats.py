"""Arithmetic of the notifier's figures: percentiles, rates, RSS parsing.

Kept free of I/O and timing so it can be unit-tested (tests/unit/bench/).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(fraction * n) of the sorted values),
    so p99 of 500 samples is the 495th smallest: a sample that happened, not an interpolation.
    NaN when there are no values."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return percentile(values, 0.5)


def steady_rate(instants: Sequence[float]) -> float:
    """Events per second between the first and the last of `instants` (seconds): n events
    span n - 1 intervals, so the first one's own time does not count. NaN for fewer than 2."""
    if len(instants) < 2:
        return math.nan
    span = max(instants) - min(instants)
    return (len(instants) - 1) / span if span > 0 else math.inf


def rss_mb(proc_status: str, field: str = "VmRSS") -> float:
    """A memory field of /proc/<pid>/status (`VmRSS`, `VmHWM`: "VmRSS:   123456 kB") in MB."""
    for line in proc_status.splitlines():
        name, _, rest = line.partition(":")
        if name == field:
            amount, unit = rest.split()
            if unit != "kB":
                raise ValueError(f"unexpected unit {unit!r} in {line!r}")
            return int(amount) / 1024
    raise ValueError(f"{field} not in /proc status")
