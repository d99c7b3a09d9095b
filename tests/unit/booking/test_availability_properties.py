"""free_slots against any date of 2026-2027 and any working block, in Europe/London."""
import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from services.booking.model import (
    Clinician,
    Treatment,
    WorkingHours,
    check_bookable,
    free_slots,
)

LONDON = ZoneInfo("Europe/London")
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)
A_HAIR = timedelta(microseconds=1)
# No example database on disk (unit tests do no I/O) and no deadline: a slow CI machine must
# not turn a correct test red.
quick = settings(database=None, deadline=None, max_examples=300)

days = st.dates(date(2026, 1, 1), date(2027, 12, 31))
# Transition days are where mistakes hide; make sure they are drawn often.
clock_change_days = st.sampled_from([date(2026, 3, 29), date(2026, 10, 25), date(2027, 3, 28),
                                     date(2027, 10, 31)])
minutes_of_day = st.integers(0, 24 * 60 - 1)


@st.composite
def blocks(draw):
    first, second = sorted(draw(st.lists(minutes_of_day, min_size=2, max_size=2, unique=True)))
    return time(first // 60, first % 60), time(second // 60, second % 60)


def clinician_for(day: date, start: time, end: time) -> Clinician:
    return Clinician(uuid.uuid4(), "Grace Okafor", [WorkingHours(day.weekday(), start, end)])


def local_minutes(instant: datetime) -> int:
    local = instant.astimezone(LONDON)
    return local.hour * 60 + local.minute


@quick
@given(day=days | clock_change_days, block=blocks(),
       duration=st.sampled_from([15, 30, 45, 60, 90]), step=st.sampled_from([5, 10, 15, 30]))
def test_every_slot_is_inside_its_block_and_on_the_grid(day, block, duration, step):
    start, end = block
    treatment = Treatment("T", "Treatment", duration, False, None)
    slots = free_slots(clinician_for(day, start, end), treatment, day, LONDON, [], LONG_AGO,
                       step_minutes=step)
    opens = start.hour * 60 + start.minute
    for slot in slots:
        # [start, end): the slot's last moment is a hair before ends_at. Judged that way, a
        # slot ending as the spring clock jumps from 01:00 to 02:00 is inside a block to 01:00.
        local_start = slot.starts_at.astimezone(LONDON)
        last_moment = (slot.ends_at - A_HAIR).astimezone(LONDON)
        assert local_start.date() == day and last_moment.date() == day
        assert start <= local_start.time() and last_moment.time() < end
        assert (local_minutes(slot.starts_at) - opens) % step == 0
        assert slot.ends_at - slot.starts_at == timedelta(minutes=duration)
        assert local_start.fold == 0
    assert [s.starts_at for s in slots] == sorted({s.starts_at for s in slots})


@quick
@given(day=days | clock_change_days, block=blocks(), duration=st.sampled_from([15, 30, 45, 60]))
def test_every_offered_slot_can_be_booked(day, block, duration):
    treatment = Treatment("T", "Treatment", duration, False, None)
    clinician = clinician_for(day, *block)
    for slot in free_slots(clinician, treatment, day, LONDON, [], LONG_AGO):
        assert check_bookable(clinician, treatment, slot.starts_at, LONDON, LONG_AGO) == slot


@quick
@given(day=days | clock_change_days,
       taken=st.lists(st.tuples(st.integers(-120, 26 * 60), st.integers(1, 180)), max_size=6),
       duration=st.sampled_from([15, 30, 45, 60]))
def test_slots_never_overlap_a_taken_range(day, taken, duration):
    midnight = datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC)
    ranges = [(midnight + timedelta(minutes=offset), midnight + timedelta(minutes=offset + length))
              for offset, length in taken]
    treatment = Treatment("T", "Treatment", duration, False, None)
    clinician = clinician_for(day, time(0), time(23, 45))
    every = free_slots(clinician, treatment, day, LONDON, [], LONG_AGO)
    free = free_slots(clinician, treatment, day, LONDON, ranges, LONG_AGO)
    for slot in free:
        assert all(not (slot.starts_at < e and s < slot.ends_at) for s, e in ranges)
    # nothing free is lost either: a slot is dropped only when it collides
    assert [s for s in every if not any(s.overlaps(a, b) for a, b in ranges)] == free


@quick
@given(day=days | clock_change_days, now_offset=st.integers(0, 25 * 60))
def test_slots_start_strictly_after_now(day, now_offset):
    treatment = Treatment("T", "Treatment", 30, False, None)
    now = datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC) + timedelta(
        minutes=now_offset)
    slots = free_slots(clinician_for(day, time(0), time(23, 30)), treatment, day, LONDON, [], now)
    assert all(slot.starts_at > now for slot in slots)
