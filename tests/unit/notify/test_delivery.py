"""Delivery reports never move a message backwards; only failures that can pass are retried."""
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notify.model import (
    STATUS_RANK,
    advance_status,
    backoff_delay,
    is_retryable,
    missed_call_text_allowed,
)


@pytest.mark.parametrize(
    ("current", "reported", "expected"),
    [
        ("accepted", "queued", "queued"),
        ("queued", "sending", "sending"),
        ("sending", "sent", "sent"),
        ("sent", "delivered", "delivered"),
        ("queued", "delivered", "delivered"),
        ("sent", "undelivered", "undelivered"),
        ("sent", "failed", "failed"),
        ("delivered", "read", "read"),
        ("scheduled", "canceled", "canceled"),
        # late or repeated reports
        ("delivered", "sent", "delivered"),
        ("delivered", "queued", "delivered"),
        ("sent", "queued", "sent"),
        ("sent", "sent", "sent"),
        # an outcome, once known, stays
        ("failed", "delivered", "failed"),
        ("undelivered", "delivered", "undelivered"),
        ("delivered", "failed", "delivered"),
        ("failed", "read", "failed"),
        ("read", "delivered", "read"),
        # Twilio sends lower case; a status we do not know changes nothing
        ("sent", "DELIVERED", "delivered"),
        ("sent", "partially_delivered", "sent"),
    ],
)
def test_a_report_never_moves_a_message_backwards(current, reported, expected):
    assert advance_status(current, reported) == expected


def test_an_unknown_current_status_is_a_bug_not_a_report():
    with pytest.raises(ValueError):
        advance_status("lost", "sent")


@given(st.lists(st.sampled_from(sorted(STATUS_RANK)), min_size=1, max_size=12))
def test_reports_in_any_order_only_ever_raise_the_rank(reports):
    status = "accepted"
    for reported in reports:
        after = advance_status(status, reported)
        assert STATUS_RANK[after] >= STATUS_RANK[status]
        status = after


@pytest.mark.parametrize(
    ("http_status", "error_code", "retry"),
    [
        (429, 20429, True),
        (429, None, True),
        (500, None, True),
        (503, 20503, True),
        (None, None, True),
        (400, 21211, False),
        (400, 21610, False),
        (400, 21614, False),
        (None, 21610, False),
        (400, 21604, False),
        (401, 20003, False),
        (404, 20404, False),
    ],
)
def test_only_failures_that_can_pass_are_retried(http_status, error_code, retry):
    assert is_retryable(http_status, error_code) is retry


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 1.0), (1, 2.0), (5, 32.0), (8, 256.0), (9, 300.0), (10_000, 300.0)]
)
def test_backoff_grows_exponentially_to_its_cap(attempt, ceiling):
    assert backoff_delay(attempt, rand=lambda: 1.0) == ceiling
    assert backoff_delay(attempt, rand=lambda: 0.0) == 0.0


def test_backoff_honours_base_and_cap():
    assert backoff_delay(3, base=0.5, cap=3.0, rand=lambda: 1.0) == 3.0
    assert backoff_delay(2, base=0.5, cap=3.0, rand=lambda: 0.5) == 1.0


@given(st.integers(min_value=0, max_value=100))
def test_backoff_with_real_jitter_stays_within_its_ceiling(attempt):
    assert 0.0 <= backoff_delay(attempt) <= min(300.0, 2.0**attempt)


def test_a_negative_attempt_is_refused():
    with pytest.raises(ValueError):
        backoff_delay(-1)


def test_missed_call_texts_are_an_hour_apart():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert missed_call_text_allowed(now, None)
    assert not missed_call_text_allowed(now, now - timedelta(minutes=59))
    assert missed_call_text_allowed(now, now - timedelta(hours=1))


@pytest.mark.parametrize("cap, lease_seconds, expected", [
    (1, 60, 8),             # the default cap: one SMS per lane, not 20 (the lease's third)
    (20, 60, 40),           # two seconds' sending at the cap
    (100, 60, 200),
    (100_000, 60, 200),     # no meaningful cap: the most a round holds
    (1, 12, 4),             # a short lease: what a third of it can send at the cap
])
def test_a_round_claims_about_two_seconds_of_sms_at_the_cap(cap, lease_seconds, expected):
    from services.notify.model.delivery import send_slot_interval, sms_batch_size
    assert sms_batch_size(send_slot_interval(cap), timedelta(seconds=lease_seconds),
                          lanes=8) == expected
