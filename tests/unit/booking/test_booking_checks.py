"""check_bookable: the rules a start time chosen by reception must pass."""
from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from services.booking.model import Slot, check_bookable
from shared.errors import Invalid

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def refusal(clinician, treatment, starts_at, tz, now=NOW) -> str:
    with pytest.raises(Invalid) as refused:
        check_bookable(clinician, treatment, starts_at, tz, now)
    assert list(refused.value.fields) == ["starts_at"]
    [reason] = refused.value.fields["starts_at"]
    return reason


def test_a_start_in_working_hours_gives_its_slot_in_utc(weekday_clinician, injection, london):
    slot = check_bookable(weekday_clinician, injection, at("2026-11-30T10:00:00+00:00"), london,
                          NOW)
    assert slot == Slot(at("2026-11-30T10:00:00+00:00"), at("2026-11-30T10:30:00+00:00"))
    assert slot.starts_at.tzinfo is UTC


def test_any_offset_is_accepted_and_stored_as_utc(weekday_clinician, injection, london):
    slot = check_bookable(weekday_clinician, injection, at("2026-12-01T10:00:00+01:00"), london,
                          NOW)
    assert slot.starts_at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert slot.starts_at.utcoffset() == timedelta(0)


def test_a_start_off_the_quarter_hour_grid_is_fine(weekday_clinician, injection, london):
    slot = check_bookable(weekday_clinician, injection, at("2026-11-30T10:07:00+00:00"), london,
                          NOW)
    assert slot.ends_at == at("2026-11-30T10:37:00+00:00")


def test_slots_at_the_edges_of_a_block_are_bookable(weekday_clinician, injection, london):
    check_bookable(weekday_clinician, injection, at("2026-11-30T09:00:00+00:00"), london, NOW)
    check_bookable(weekday_clinician, injection, at("2026-11-30T12:30:00+00:00"), london, NOW)
    check_bookable(weekday_clinician, injection, at("2026-11-30T16:30:00+00:00"), london, NOW)


def test_summer_working_hours_are_clinic_time(weekday_clinician, injection, london):
    check_bookable(weekday_clinician, injection, at("2027-06-01T08:00:00+00:00"), london, NOW)
    assert "outside" in refusal(weekday_clinician, injection, at("2027-06-01T16:30:00+00:00"),
                                london)


def test_a_naive_start_is_refused(weekday_clinician, injection, london):
    reason = refusal(weekday_clinician, injection, datetime(2026, 11, 30, 10), london)
    assert "UTC offset" in reason


@pytest.mark.parametrize("starts_at", ["2026-11-25T12:00:00+00:00", "2026-11-25T11:00:00+00:00",
                                       "2026-11-24T10:00:00+00:00"])
def test_a_start_now_or_in_the_past_is_refused(weekday_clinician, injection, london, starts_at):
    assert refusal(weekday_clinician, injection, at(starts_at), london) == "is in the past"


@pytest.mark.parametrize("starts_at", [
    "2026-11-30T08:45:00+00:00",  # before the day starts
    "2026-11-30T12:45:00+00:00",  # would run into lunch
    "2026-11-30T13:30:00+00:00",  # during lunch
    "2026-11-30T16:45:00+00:00",  # would run past 17:00
    "2026-11-30T17:00:00+00:00",  # the end is not a start
    "2026-11-29T10:00:00+00:00",  # Sunday, a day off
    "2026-11-30T23:50:00+00:00",  # would end the next day
])
def test_a_start_outside_working_hours_is_refused(weekday_clinician, injection, london,
                                                   starts_at):
    reason = refusal(weekday_clinician, injection, at(starts_at), london)
    assert "outside Dr Amira Shah's working hours" in reason


def test_the_refusal_names_the_clinic_time_and_day(weekday_clinician, injection, london):
    reason = refusal(weekday_clinician, injection, at("2027-06-01T12:45:00+00:00"), london)
    assert reason == "13:45-14:15 on Tuesday 2027-06-01 is outside Dr Amira Shah's working hours"


def test_the_second_occurrence_of_the_repeated_hour_can_be_booked(every_day, injection, london):
    """Reception may book 01:30 GMT on the autumn night; free_slots just does not offer it."""
    second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert second.astimezone(london).fold == 1
    slot = check_bookable(every_day(time(0, 30), time(3)), injection, second, london,
                          NOW.replace(year=2025))
    assert slot.starts_at == second


def test_a_start_across_the_spring_jump_counts_real_minutes(every_day, injection, london):
    clinician = every_day(time(0, 30), time(2, 15))
    # 00:45 GMT + 30 minutes is 02:15 BST: just fits
    check_bookable(clinician, injection, at("2027-03-28T00:45:00+00:00"), london, NOW)
    assert "outside" in refusal(clinician, injection, at("2027-03-28T00:50:00+00:00"), london)


def test_another_clinic_zone_works_too(weekday_clinician, injection):
    """Nothing assumes Europe/London: the zone is whatever the clinic is configured with."""
    new_york = ZoneInfo("America/New_York")
    slot = check_bookable(weekday_clinician, injection,
                          datetime(2026, 11, 30, 9, 0, tzinfo=timezone(timedelta(hours=-5))),
                          new_york, NOW)
    assert slot.starts_at == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
