"""Sends in flight: all of them while the provider is slow, two when it answers at once."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify.model.delivery import SendLanes

MS = 0.001


def test_before_any_send_is_measured_every_lane_is_used():
    assert SendLanes(8).count() == 8


def test_a_provider_answering_in_hundreds_of_ms_keeps_every_lane_busy():
    lanes = SendLanes(8)
    for _ in range(10):
        lanes.observe(provider_seconds=200 * MS, own_seconds=1.5 * MS)
    assert lanes.count() == 8


def test_a_provider_answering_faster_than_our_own_work_needs_two_lanes():
    lanes = SendLanes(8)
    for _ in range(10):
        lanes.observe(provider_seconds=0.6 * MS, own_seconds=1.2 * MS)
    assert lanes.count() == 2


def test_lanes_hide_the_provider_behind_our_own_work():
    """1 + provider / own, rounded up: 4 ms of provider over 1 ms of work needs 5 lanes."""
    lanes = SendLanes(8)
    lanes.observe(provider_seconds=4 * MS, own_seconds=1 * MS)
    assert lanes.count() == 5
    lanes.observe(provider_seconds=2.5 * MS, own_seconds=1.5 * MS)
    assert lanes.count() == 4          # the least of each: 1 + 2.5 ms over 1 ms, rounded up


def test_crowding_does_not_feed_the_estimate():
    """Times stretched by lanes taking turns (here ten times the real cost) do not ask for
    more lanes: one uncontended send among them sets the figure."""
    lanes = SendLanes(8)
    lanes.observe(provider_seconds=0.5 * MS, own_seconds=1 * MS)
    for _ in range(30):
        lanes.observe(provider_seconds=5 * MS, own_seconds=1.2 * MS)
    assert lanes.count() == 2


def test_a_provider_that_slows_down_gets_its_lanes_back_within_the_window():
    lanes = SendLanes(8, window=16)
    for _ in range(16):
        lanes.observe(provider_seconds=0.5 * MS, own_seconds=1 * MS)
    assert lanes.count() == 2
    for _ in range(15):
        lanes.observe(provider_seconds=300 * MS, own_seconds=1 * MS)
    assert lanes.count() == 2          # one fast send is still in the window
    lanes.observe(provider_seconds=300 * MS, own_seconds=1 * MS)
    assert lanes.count() == 8


def test_a_slot_wait_is_not_own_work_and_nothing_measured_as_zero_divides():
    lanes = SendLanes(4)
    lanes.observe(provider_seconds=1 * MS, own_seconds=0.0)
    assert lanes.count() == 4
    lanes.observe(provider_seconds=-1.0, own_seconds=-1.0)   # a clock step: clamped
    assert lanes.count() == 4


def test_one_lane_when_the_provider_costs_nothing_and_none_asked_for():
    lanes = SendLanes(8)
    lanes.observe(provider_seconds=0.0, own_seconds=1 * MS)
    assert lanes.count() == 1
    with pytest.raises(ValueError):
        SendLanes(0)


@given(most=st.integers(1, 32),
       samples=st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), max_size=80))
def test_the_count_is_always_between_one_and_the_configured_most(most, samples):
    lanes = SendLanes(most)
    for provider, own in samples:
        lanes.observe(provider, own)
    assert 1 <= lanes.count() <= most
