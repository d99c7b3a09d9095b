"""free_slots: the starts reception and patients are offered, on ordinary days and the two
nights a year the clocks change."""
from datetime import UTC, date, datetime, time, timedelta

import pytest

from services.booking.model import Treatment, free_slots

LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)
MONDAY = date(2026, 11, 30)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def starts(slots) -> list[str]:
    return [slot.starts_at.strftime("%H:%M") for slot in slots]


def test_an_ordinary_day_offers_every_quarter_hour_that_fits(weekday_clinician, injection,
                                                             london):
    slots = free_slots(weekday_clinician, injection, MONDAY, london, [], LONG_AGO)
    assert starts(slots)[:3] == ["09:00", "09:15", "09:30"]
    assert "12:30" in starts(slots) and "12:45" not in starts(slots)  # 12:45 + 30 > 13:00
    assert "13:00" not in starts(slots) and "14:00" in starts(slots)  # lunch
    assert starts(slots)[-1] == "16:30"
    assert len(slots) == 15 + 11
    assert all(s.ends_at - s.starts_at == timedelta(minutes=30) for s in slots)
    assert all(s.starts_at.tzinfo is UTC for s in slots)


def test_no_slots_on_a_day_off(weekday_clinician, injection, london):
    assert free_slots(weekday_clinician, injection, date(2026, 11, 29), london, [],
                      LONG_AGO) == []


def test_a_longer_treatment_or_coarser_step_offers_fewer(weekday_clinician, london):
    sports = Treatment("SPORTS", "Sports injury assessment", 60, False, None)
    slots = free_slots(weekday_clinician, sports, MONDAY, london, [], LONG_AGO, step_minutes=30)
    assert starts(slots) == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30", "12:00",
                             "14:00", "14:30", "15:00", "15:30", "16:00"]


def test_a_treatment_longer_than_every_block_has_no_slot(weekday_clinician, london):
    marathon = Treatment("LONG", "Long session", 241, False, None)
    assert free_slots(weekday_clinician, marathon, MONDAY, london, [], LONG_AGO) == []


def test_summer_hours_are_an_hour_earlier_in_utc(weekday_clinician, injection, london):
    slots = free_slots(weekday_clinician, injection, date(2026, 6, 1), london, [], LONG_AGO)
    assert slots[0].starts_at == at("2026-06-01T08:00:00+00:00")
    assert slots[0].starts_at.astimezone(london).time() == time(9)


@pytest.mark.parametrize(("day", "first_utc"), [
    (date(2026, 10, 24), "2026-10-24T08:00:00+00:00"),  # last day of summer time
    (date(2026, 10, 25), "2026-10-25T09:00:00+00:00"),  # clocks went back at 02:00
    (date(2027, 3, 27), "2027-03-27T09:00:00+00:00"),   # last day of winter time
    (date(2027, 3, 28), "2027-03-28T08:00:00+00:00"),   # clocks went forward at 01:00
])
def test_nine_oclock_stays_nine_oclock_across_the_clock_change(every_day, injection, london,
                                                               day, first_utc):
    slots = free_slots(every_day(time(9), time(17)), injection, day, london, [], LONG_AGO)
    assert slots[0].starts_at == at(first_utc)
    assert [s.starts_at.astimezone(london).strftime("%H:%M") for s in slots][:2] == [
        "09:00", "09:15"]
    assert slots[-1].starts_at.astimezone(london).time() == time(16, 30)


def test_no_slot_starts_in_the_hour_the_clocks_skip(every_day, injection, london):
    slots = free_slots(every_day(time(0, 30), time(3)), injection, date(2027, 3, 28), london,
                       [], LONG_AGO)
    local = [s.starts_at.astimezone(london).strftime("%H:%M") for s in slots]
    assert local == ["00:30", "00:45", "02:00", "02:15", "02:30"]
    assert [s.starts_at.strftime("%H:%M") for s in slots] == [
        "00:30", "00:45", "01:00", "01:15", "01:30"]
    assert slots[-1].ends_at.astimezone(london).time() == time(3)


def test_a_block_ending_in_the_skipped_hour_ends_when_the_clock_jumps(every_day, injection,
                                                                      london):
    slots = free_slots(every_day(time(0), time(1, 30)), injection, date(2027, 3, 28), london,
                       [], LONG_AGO)
    assert starts(slots) == ["00:00", "00:15", "00:30"]
    assert slots[-1].ends_at == at("2027-03-28T01:00:00+00:00")


def test_the_repeated_hour_is_offered_once_at_its_first_occurrence(every_day, injection,
                                                                   london):
    slots = free_slots(every_day(time(0, 30), time(3)), injection, date(2026, 10, 25), london,
                       [], LONG_AGO)
    assert [s.starts_at.isoformat() for s in slots] == [
        "2026-10-24T23:30:00+00:00", "2026-10-24T23:45:00+00:00",
        "2026-10-25T00:00:00+00:00", "2026-10-25T00:15:00+00:00",  # 01:00, 01:15 BST
        "2026-10-25T00:30:00+00:00", "2026-10-25T00:45:00+00:00",  # 01:30, 01:45 BST
        "2026-10-25T02:00:00+00:00", "2026-10-25T02:15:00+00:00",  # 02:00, 02:15 GMT
        "2026-10-25T02:30:00+00:00",
    ]
    assert all(s.starts_at.astimezone(london).fold == 0 for s in slots)


def test_taken_ranges_are_not_offered_but_back_to_back_is(weekday_clinician, injection, london):
    taken = [(at("2026-11-30T10:00:00+00:00"), at("2026-11-30T10:30:00+00:00")),
             # any offset will do: it is the instant that counts
             (datetime.fromisoformat("2026-11-30T16:00:00+01:00"),
              datetime.fromisoformat("2026-11-30T17:15:00+01:00"))]
    slots = starts(free_slots(weekday_clinician, injection, MONDAY, london, taken, LONG_AGO))
    assert "09:30" in slots and "10:30" in slots
    assert {"09:45", "10:00", "10:15"}.isdisjoint(slots)
    assert {"14:45", "15:00", "15:45", "16:00"}.isdisjoint(slots)
    assert {"14:30", "16:15", "16:30"} <= set(slots)


def test_only_slots_strictly_after_now_are_offered(weekday_clinician, injection, london):
    now = at("2026-11-30T11:00:00+00:00")
    slots = free_slots(weekday_clinician, injection, MONDAY, london, [], now)
    assert starts(slots)[0] == "11:15"
    later = free_slots(weekday_clinician, injection, MONDAY, london, [],
                       at("2026-11-30T11:00:01+00:00"))
    assert starts(later)[0] == "11:15"


def test_a_past_day_offers_nothing(weekday_clinician, injection, london):
    assert free_slots(weekday_clinician, injection, MONDAY, london, [],
                      at("2026-12-01T08:00:00+00:00")) == []


def test_naive_times_are_refused(weekday_clinician, injection, london):
    with pytest.raises(ValueError):
        free_slots(weekday_clinician, injection, MONDAY, london, [], datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        free_slots(weekday_clinician, injection, MONDAY, london,
                   [(datetime(2026, 11, 30, 10), datetime(2026, 11, 30, 11))], LONG_AGO)


def test_step_must_be_positive(weekday_clinician, injection, london):
    with pytest.raises(ValueError):
        free_slots(weekday_clinician, injection, MONDAY, london, [], LONG_AGO, step_minutes=0)
