"""Reminder times hold the contract for any booking, offsets and quiet hours, across DST.

Bookings fall anywhere in 2026-2027, and a share of them on purpose around the nights the
clocks change in Europe/London (25 Oct 2026 back, 28 Mar 2027 forward), where a rule written
in UTC offsets instead of wall-clock time would be an hour out.
"""
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.notify.model import QuietHours, place_outside_quiet_hours, reminder_times

LONDON = ZoneInfo("Europe/London")
MINUTE = timedelta(minutes=1)
CLOCK_CHANGES = [datetime(2026, 10, 25, 1, tzinfo=UTC),
                 datetime(2027, 3, 28, 1, tzinfo=UTC)]


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


anywhere = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31, 23, 59),
    timezones=st.just(UTC),
)
near_a_clock_change = st.builds(
    lambda change, minutes: change + timedelta(minutes=minutes),
    st.sampled_from(CLOCK_CHANGES),
    st.integers(min_value=-4 * 24 * 60, max_value=4 * 24 * 60),
)
# Appointments start on a minute; the clock-change nights get as many examples as the rest.
appointment_starts = st.one_of(anywhere, near_a_clock_change).map(_minute)
offsets = st.lists(
    st.integers(min_value=1, max_value=7 * 24 * 60).map(lambda m: timedelta(minutes=m)),
    min_size=1, max_size=4,
)


@st.composite
def quiet_hours(draw) -> QuietHours | None:
    """None, or a window leaving at least 2 hours of the day free (what QuietHours supports)."""
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        return None
    start = draw(st.integers(min_value=0, max_value=24 * 60 - 1))
    length = draw(st.integers(min_value=1, max_value=22 * 60))
    end = (start + length) % (24 * 60)
    return QuietHours(time(start // 60, start % 60), time(end // 60, end % 60))


booked_before = st.integers(min_value=0, max_value=10 * 24 * 60 * 60).map(
    lambda s: timedelta(seconds=s)
)


def _is_quiet(quiet: QuietHours | None, moment: datetime) -> bool:
    return quiet is not None and quiet.contains(moment.astimezone(LONDON))


@settings(max_examples=400, deadline=None)
@given(appointment_starts, offsets, quiet_hours(), booked_before)
def test_reminders_fall_between_booking_and_start_and_never_in_quiet_hours(
    starts_at, offsets, quiet, booked_before
):
    now = starts_at - booked_before
    due = reminder_times(starts_at, offsets, quiet, LONDON, now)
    assert due == sorted(set(due))
    assert len(due) <= len(offsets)
    for moment in due:
        assert moment.tzinfo == UTC
        assert now < moment < starts_at
        assert not _is_quiet(quiet, moment)


def _by_the_minute(due: datetime, quiet: QuietHours | None, starts_at: datetime) -> datetime:
    """The contract's rule walked minute by minute on the wall clock, as a person would."""
    if not _is_quiet(quiet, due):
        return due
    later = due
    while _is_quiet(quiet, later):
        later += MINUTE
    if later < starts_at:
        return later
    earlier = due
    while _is_quiet(quiet, earlier):
        earlier -= MINUTE
    return earlier


def _clear_of_the_changing_hour(quiet: QuietHours | None) -> bool:
    """Whether neither edge is in 01:00-02:00, the hour London's clocks skip or repeat.

    There the window's edge is ambiguous or missing, and place_outside_quiet_hours documents
    its choice (the reading surely outside); the walk above would pick another minute.
    """
    if quiet is None:
        return True
    return all(not time(1) <= edge < time(2) for edge in (quiet.start, quiet.end))


@settings(max_examples=300, deadline=None)
@given(appointment_starts, offsets, quiet_hours(), booked_before)
def test_each_reminder_is_the_one_the_contract_describes(starts_at, offsets, quiet, booked_before):
    assume(_clear_of_the_changing_hour(quiet))
    now = starts_at - booked_before
    expected = {_by_the_minute(starts_at - offset, quiet, starts_at) for offset in offsets}
    assert reminder_times(starts_at, offsets, quiet, LONDON, now) == sorted(
        t for t in expected if now < t < starts_at
    )


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(anywhere, near_a_clock_change),
    quiet_hours().filter(lambda q: q is not None),
    st.integers(min_value=1, max_value=3 * 24 * 60).map(lambda m: timedelta(minutes=m)),
)
def test_a_moved_message_lands_outside_quiet_hours_and_before_its_limit(due, quiet, margin):
    not_after = due + margin
    placed = place_outside_quiet_hours(due, quiet, LONDON, not_after=not_after)
    assert not _is_quiet(quiet, placed)
    assert placed < not_after
    if placed > due:  # moved to the end of the window: nothing in between is outside it
        assert placed - due <= timedelta(hours=23)
    elif placed < due:  # moved to the evening before: only because the end was too late
        assert due - placed <= timedelta(hours=23)
