"""bench/notify_stats.py: percentiles, rates and /proc parsing (no timings here, ever)."""
from __future__ import annotations

import math

import pytest

from bench.notify_stats import median, percentile, rss_mb, steady_rate


def test_nearest_rank_percentile_is_a_value_that_happened():
    values = list(range(1, 501))                  # 500 samples, 1..500
    assert percentile(values, 0.99) == 495
    assert percentile(values, 0.95) == 475
    assert percentile(values, 1.0) == 500


def test_percentile_does_not_need_sorted_input():
    assert percentile([30.0, 10.0, 20.0], 0.5) == 20.0
    assert median([5.0, 1.0, 3.0, 2.0]) == 2.0


def test_a_single_sample_is_every_percentile():
    assert percentile([7.0], 0.01) == 7.0
    assert percentile([7.0], 0.99) == 7.0


def test_no_samples_give_nan():
    assert math.isnan(percentile([], 0.99))


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError):
        percentile([1.0], fraction)


def test_steady_rate_counts_intervals_not_events():
    # 101 arrivals 10 ms apart: 100 per second, whatever the first one's instant.
    assert steady_rate([5.0 + n * 0.01 for n in range(101)]) == pytest.approx(100.0)


def test_steady_rate_ignores_arrival_order():
    assert steady_rate([2.0, 0.0, 1.0]) == pytest.approx(1.0)


def test_steady_rate_needs_two_instants():
    assert math.isnan(steady_rate([]))
    assert math.isnan(steady_rate([1.0]))
    assert steady_rate([1.0, 1.0]) == math.inf


STATUS = """Name:\tclinic
VmPeak:\t  912344 kB
VmHWM:\t  131072 kB
VmRSS:\t  102400 kB
Threads:\t5
"""


def test_rss_fields_of_proc_status_in_megabytes():
    assert rss_mb(STATUS) == 100.0
    assert rss_mb(STATUS, "VmHWM") == 128.0


def test_a_missing_field_is_an_error():
    with pytest.raises(ValueError):
        rss_mb("Name:\tclinic\n")
