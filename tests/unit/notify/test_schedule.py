"""REMINDER_OFFSETS, QUIET_HOURS and reminder times, at examples a receptionist would check."""
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notify.model import (
    QuietHours,
    parse_offsets,
    parse_quiet_hours,
    place_outside_quiet_hours,
    reminder_times,
)
from shared.clock import FixedClock

LONDON = ZoneInfo("Europe/London")
NIGHT = QuietHours(time(21, 0), time(8, 0))
DEFAULT_OFFSETS = [timedelta(hours=48), timedelta(hours=2)]


def utc(text: str) -> datetime:
    return FixedClock(text).now()


def london(moment: datetime) -> str:
    return moment.astimezone(LONDON).strftime("%Y-%m-%d %H:%M %Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("48h,2h", [timedelta(hours=48), timedelta(hours=2)]),
        ("2h,48h", [timedelta(hours=48), timedelta(hours=2)]),
        (" 48h , 2h ", [timedelta(hours=48), timedelta(hours=2)]),
        ("30m", [timedelta(minutes=30)]),
        ("1d", [timedelta(days=1)]),
        ("1d,24h,1440m", [timedelta(days=1)]),
        ("48H", [timedelta(hours=48)]),
        ("", []),
        ("  ", []),
    ],
)
def test_offsets_are_parsed_largest_first_without_repeats(text, expected):
    assert parse_offsets(text) == expected


@pytest.mark.parametrize(
    "text", ["48", "h", "2x", "48h,", ",2h", "-2h", "0h", "1.5h", "2 h", "48h;2h", "99999999999d"]
)
def test_offsets_that_are_not_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_offsets(text)


def test_quiet_hours_are_parsed():
    assert parse_quiet_hours("21:00-08:00") == NIGHT
    assert parse_quiet_hours(" 9:30 - 17:00 ") == QuietHours(time(9, 30), time(17, 0))


def test_empty_quiet_hours_disable_them():
    assert parse_quiet_hours("") is None
    assert parse_quiet_hours("   ") is None


@pytest.mark.parametrize(
    "text", ["21:00", "21-08", "25:00-08:00", "21:00-08:60", "21:00-21:00", "21:00/08:00", "a-b"]
)
def test_quiet_hours_that_are_not_a_window_are_refused(text):
    with pytest.raises(ValueError):
        parse_quiet_hours(text)


def test_quiet_hours_accept_clock_strings():
    assert QuietHours("21:00", "08:00") == NIGHT


@pytest.mark.parametrize(
    ("wall", "quiet"),
    [("20:59", False), ("21:00", True), ("23:59", True), ("00:00", True), ("07:59", True),
     ("08:00", False), ("12:00", False)],
)
def test_a_window_over_midnight_holds_its_start_but_not_its_end(wall, quiet):
    local = datetime.fromisoformat(f"2026-11-30T{wall}").replace(tzinfo=LONDON)
    assert NIGHT.contains(local) is quiet


def test_a_window_within_a_day():
    lunch = QuietHours("13:00", "14:00")
    assert lunch.contains(datetime(2026, 11, 30, 13, 0, tzinfo=LONDON))
    assert not lunch.contains(datetime(2026, 11, 30, 14, 0, tzinfo=LONDON))
    assert not lunch.contains(datetime(2026, 11, 30, 12, 59, tzinfo=LONDON))


def test_a_time_outside_quiet_hours_stays_and_is_in_utc():
    due = datetime.fromisoformat("2026-07-01T12:00:00+01:00")
    placed = place_outside_quiet_hours(due, NIGHT, LONDON, not_after=due + timedelta(hours=2))
    assert placed == utc("2026-07-01T11:00:00Z")
    assert placed.tzinfo == UTC


def test_without_quiet_hours_nothing_moves():
    due = utc("2026-07-01T02:00:00Z")
    assert place_outside_quiet_hours(due, None, LONDON, not_after=due) == due


def test_a_quiet_time_moves_to_eight_in_summer_and_in_winter():
    summer = place_outside_quiet_hours(
        utc("2026-07-01T06:00:00Z"), NIGHT, LONDON, not_after=utc("2026-07-01T09:00:00Z")
    )
    winter = place_outside_quiet_hours(
        utc("2026-11-30T06:00:00Z"), NIGHT, LONDON, not_after=utc("2026-11-30T10:00:00Z")
    )
    assert london(summer) == "2026-07-01 08:00 BST"
    assert london(winter) == "2026-11-30 08:00 GMT"


def test_a_quiet_time_before_midnight_moves_to_the_next_morning():
    placed = place_outside_quiet_hours(
        utc("2026-11-29T22:30:00Z"), NIGHT, LONDON, not_after=utc("2026-11-30T10:00:00Z")
    )
    assert london(placed) == "2026-11-30 08:00 GMT"


def test_the_window_end_is_eight_by_the_clock_on_the_night_the_clocks_go_back():
    # 22:00 BST on Saturday 24 Oct 2026; the clocks go back at 02:00, so 08:00 is GMT.
    placed = place_outside_quiet_hours(
        utc("2026-10-24T21:00:00Z"), NIGHT, LONDON, not_after=utc("2026-10-25T10:00:00Z")
    )
    assert placed == utc("2026-10-25T08:00:00Z")


def test_the_window_end_is_eight_by_the_clock_on_the_night_the_clocks_go_forward():
    # 21:00 GMT on Saturday 27 Mar 2027; the clocks go forward at 01:00, so 08:00 is BST.
    placed = place_outside_quiet_hours(
        utc("2027-03-27T21:00:00Z"), NIGHT, LONDON, not_after=utc("2027-03-28T10:00:00Z")
    )
    assert placed == utc("2027-03-28T07:00:00Z")


def test_when_the_window_ends_at_the_appointment_the_message_goes_the_evening_before():
    # An 08:00 appointment: a reminder at 08:00 is useless, so 20:59 the night before.
    placed = place_outside_quiet_hours(
        utc("2026-11-30T06:00:00Z"), NIGHT, LONDON, not_after=utc("2026-11-30T08:00:00Z")
    )
    assert london(placed) == "2026-11-29 20:59 GMT"


def test_the_evening_before_is_by_the_clock_across_the_autumn_change():
    # 07:30 GMT appointment on Sunday 25 Oct 2026; the evening before was still BST.
    placed = place_outside_quiet_hours(
        utc("2026-10-25T05:30:00Z"), NIGHT, LONDON, not_after=utc("2026-10-25T07:30:00Z")
    )
    assert placed == utc("2026-10-24T19:59:00Z")
    assert london(placed) == "2026-10-24 20:59 BST"


def test_the_evening_before_is_by_the_clock_across_the_spring_change():
    placed = place_outside_quiet_hours(
        utc("2027-03-28T04:00:00Z"), NIGHT, LONDON, not_after=utc("2027-03-28T06:00:00Z")
    )
    assert london(placed) == "2027-03-27 20:59 GMT"


def test_a_window_ending_in_the_skipped_hour_ends_after_the_jump():
    # 01:30 does not exist on 28 Mar 2027; the later reading, 02:30 BST, is surely outside.
    quiet = QuietHours("22:00", "01:30")
    placed = place_outside_quiet_hours(
        utc("2027-03-28T00:45:00Z"), quiet, LONDON, not_after=utc("2027-03-28T09:00:00Z")
    )
    assert london(placed) == "2027-03-28 02:30 BST"
    assert not quiet.contains(placed.astimezone(LONDON))


def test_a_window_ending_in_the_repeated_hour_ends_at_its_second_reading():
    quiet = QuietHours("22:00", "01:30")
    placed = place_outside_quiet_hours(
        utc("2026-10-24T23:00:00Z"), quiet, LONDON, not_after=utc("2026-10-25T09:00:00Z")
    )
    assert london(placed) == "2026-10-25 01:30 GMT"


def test_a_window_starting_in_the_skipped_hour_is_left_before_it_could_begin():
    quiet = QuietHours("01:30", "06:00")
    placed = place_outside_quiet_hours(
        utc("2027-03-28T02:00:00Z"), quiet, LONDON, not_after=utc("2027-03-28T05:00:00Z")
    )
    assert london(placed) == "2027-03-28 00:29 GMT"


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError):
        place_outside_quiet_hours(datetime(2026, 11, 30, 6), NIGHT, LONDON, datetime(2026, 12, 1))


def test_reminders_two_days_and_two_hours_before():
    clock = FixedClock("2026-11-20T12:00:00Z")
    due = reminder_times(utc("2026-11-30T10:00:00Z"), DEFAULT_OFFSETS, NIGHT, LONDON, clock.now())
    assert due == [utc("2026-11-28T10:00:00Z"), utc("2026-11-30T08:00:00Z")]


def test_a_reminder_already_past_at_booking_is_skipped_not_sent_late():
    clock = FixedClock("2026-11-29T12:00:00Z")
    due = reminder_times(utc("2026-11-30T10:00:00Z"), DEFAULT_OFFSETS, NIGHT, LONDON, clock.now())
    assert due == [utc("2026-11-30T08:00:00Z")]


def test_booked_an_hour_before_there_is_no_reminder():
    clock = FixedClock("2026-11-30T09:00:00Z")
    assert reminder_times(
        utc("2026-11-30T10:00:00Z"), DEFAULT_OFFSETS, NIGHT, LONDON, clock.now()
    ) == []


def test_a_reminder_due_this_instant_is_skipped():
    clock = FixedClock("2026-11-30T08:00:00Z")
    assert reminder_times(
        utc("2026-11-30T10:00:00Z"), [timedelta(hours=2)], None, LONDON, clock.now()
    ) == []


def test_reminder_not_sent_inside_quiet_hours():
    clock = FixedClock("2026-10-24T21:30:00+01:00")
    due = reminder_times(
        utc("2026-10-25T09:30:00Z"), [timedelta(hours=2)], NIGHT, LONDON, clock.now()
    )
    assert due == [utc("2026-10-25T08:00:00Z")]


def test_two_reminders_moved_to_the_same_minute_are_one():
    clock = FixedClock("2026-11-20T12:00:00Z")
    offsets = parse_offsets("3h,2h,1h")
    due = reminder_times(utc("2026-11-30T09:00:00Z"), offsets, NIGHT, LONDON, clock.now())
    assert due == [utc("2026-11-30T08:00:00Z")]


def test_an_early_morning_appointment_is_reminded_the_evening_before():
    clock = FixedClock("2026-11-20T12:00:00Z")
    due = reminder_times(utc("2026-11-30T07:30:00Z"), DEFAULT_OFFSETS, NIGHT, LONDON, clock.now())
    assert due == [utc("2026-11-28T08:00:00Z"), utc("2026-11-29T20:59:00Z")]


def test_the_evening_before_is_skipped_when_booked_after_it():
    clock = FixedClock("2026-11-29T22:00:00Z")
    assert reminder_times(
        utc("2026-11-30T07:30:00Z"), DEFAULT_OFFSETS, NIGHT, LONDON, clock.now()
    ) == []


def test_a_message_answering_something_just_done_goes_at_once_even_at_night():
    from services.notify.model.schedule import when_to_send
    night = datetime.fromisoformat("2026-11-28T23:30:00+00:00")
    assert when_to_send("confirmation", {}, night, night, parse_quiet_hours("21:00-08:00"),
                        ZoneInfo("Europe/London")) == night


def test_a_late_check_in_keeps_quiet_hours_and_is_dropped_after_a_week():
    from services.notify.model.schedule import when_to_send
    quiet, london = parse_quiet_hours("21:00-08:00"), ZoneInfo("Europe/London")
    due = datetime.fromisoformat("2026-12-14T10:00:00+00:00")
    night = datetime.fromisoformat("2026-12-15T02:00:00+00:00")
    assert when_to_send("checkin", {}, due, night, quiet, london) == datetime.fromisoformat(
        "2026-12-15T08:00:00+00:00")
    assert when_to_send("checkin", {}, due, due + timedelta(days=7), quiet, london) is None


@pytest.mark.parametrize("of, context, expected", [
    # A check-in's email, found due at 02:00 (its SMS reported undelivered in the night):
    # the morning, as the check-in itself would be.
    ("checkin", {}, "2026-12-15T08:00:00+00:00"),
    # A reminder's email for a 10:00 appointment: 08:00, still before the appointment.
    ("reminder", {"starts_at": "2026-12-15T10:00:00+00:00"}, "2026-12-15T08:00:00+00:00"),
    # ... for an 08:00 appointment: it could only go the evening before, which is past.
    ("reminder", {"starts_at": "2026-12-15T08:00:00+00:00"}, None),
    # A confirmation's email answers what the patient just did: at once, as its SMS.
    ("confirmation", {}, "2026-12-15T02:00:00+00:00"),
])
def test_the_email_of_an_undelivered_sms_keeps_that_messages_quiet_hours(of, context, expected):
    from services.notify.model.schedule import when_to_send
    night = datetime.fromisoformat("2026-12-15T02:00:00+00:00")
    at = when_to_send("sms_fallback", {"sms_text": "...", "of": of, **context}, night, night,
                      parse_quiet_hours("21:00-08:00"), LONDON)
    assert at == (datetime.fromisoformat(expected) if expected else None)


def test_a_fallback_email_stored_before_it_named_its_sms_goes_at_once():
    """Rows written by an earlier version carry only the text: sent as they always were."""
    from services.notify.model.schedule import when_to_send
    night = datetime.fromisoformat("2026-12-15T02:00:00+00:00")
    assert when_to_send("sms_fallback", {"sms_text": "..."}, night, night,
                        parse_quiet_hours("21:00-08:00"), LONDON) == night


@pytest.mark.parametrize("kind, context, late, expected", [
    # On time, at night: it answers what the patient just did.
    ("confirmation", {"starts_at": "2026-12-16T10:00:00+00:00"}, timedelta(minutes=5),
     "2026-12-15T02:00:00+00:00"),
    # Found due hours late (a worker outage) at 02:00: the morning, before the appointment.
    ("confirmation", {"starts_at": "2026-12-15T10:00:00+00:00"}, timedelta(hours=3),
     "2026-12-15T08:00:00+00:00"),
    ("form_link", {"starts_at": "2026-12-15T10:00:00+00:00"}, timedelta(hours=3),
     "2026-12-15T08:00:00+00:00"),
    # ... after the appointment began: "Reply YES to confirm" is of no use any more.
    ("confirmation", {"starts_at": "2026-12-15T01:30:00+00:00"}, timedelta(hours=3), None),
    ("rescheduled", {"starts_at": "2026-12-15T01:30:00+00:00"}, timedelta(hours=3), None),
    # A cancellation notice keeps quiet hours when late, and still goes.
    ("cancelled", {"starts_at": "2026-12-15T01:30:00+00:00"}, timedelta(hours=3),
     "2026-12-15T08:00:00+00:00"),
    # "We will ring you back": within the hour, or not at all.
    ("missed_call", {}, timedelta(minutes=40), "2026-12-15T02:00:00+00:00"),
    ("missed_call", {}, timedelta(hours=2), None),
])
def test_an_at_once_message_sent_late_follows_the_rules_of_a_scheduled_one(
        kind, context, late, expected):
    from services.notify.model.schedule import when_to_send
    night = datetime.fromisoformat("2026-12-15T02:00:00+00:00")
    at = when_to_send(kind, context, night - late, night, parse_quiet_hours("21:00-08:00"),
                      LONDON)
    assert at == (datetime.fromisoformat(expected) if expected else None)
