"""When a treatment can start: free slots to offer, and the check on a time reception picked.

Working hours are clinic wall-clock time; every slot is an instant in UTC. A slot's start is
an existing wall time (never one the spring clock change skips; the first one when the clock
goes back), and its end falls no later than the first moment the clock shows the block's end.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.errors import Invalid

from .clinic_time import as_utc, clock_reaches, instant_at
from .clinicians import WEEKDAYS, Clinician
from .treatments import Treatment


@dataclass(frozen=True)
class Slot:
    """A stretch of time [starts_at, ends_at), both held in UTC."""

    starts_at: datetime
    ends_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts_at", as_utc(self.starts_at, "starts_at"))
        object.__setattr__(self, "ends_at", as_utc(self.ends_at, "ends_at"))
        if self.ends_at <= self.starts_at:
            raise ValueError("a slot must end after it starts")

    def overlaps(self, starts_at: datetime, ends_at: datetime) -> bool:
        """Back-to-back is not an overlap: 10:00-10:30 and 10:30-11:00 both stand."""
        return self.starts_at < ends_at and starts_at < self.ends_at


def free_slots(
    clinician: Clinician,
    treatment: Treatment,
    on: date,
    tz: ZoneInfo,
    taken: list[tuple[datetime, datetime]],
    now: datetime,
    step_minutes: int = 15,
) -> list[Slot]:
    """Starts to offer on the clinic date `on`: on the step grid from each block's start.

    Only starts strictly after `now`: a slot already under way is no use to the caller.
    Taken ranges are [start, end) in any zone, so back-to-back bookings both stand.
    """
    if step_minutes <= 0:
        raise ValueError("step_minutes must be positive")
    now = as_utc(now, "now")
    busy = [(as_utc(start, "taken start"), as_utc(end, "taken end")) for start, end in taken]
    length = timedelta(minutes=treatment.duration_minutes)
    step = timedelta(minutes=step_minutes)
    slots: list[Slot] = []
    for opens, closes in clinician.working_blocks(on.weekday()):
        block_ends = clock_reaches(on, closes, tz)
        wall, last_wall = datetime.combine(on, opens), datetime.combine(on, closes)
        while wall < last_wall:
            starts_at = instant_at(on, wall.time(), tz)
            wall += step
            if starts_at is None or starts_at <= now or starts_at + length > block_ends:
                continue
            slot = Slot(starts_at, starts_at + length)
            if not any(slot.overlaps(start, end) for start, end in busy):
                slots.append(slot)
    return sorted(slots, key=lambda slot: slot.starts_at)


def check_bookable(
    clinician: Clinician, treatment: Treatment, starts_at: datetime, tz: ZoneInfo, now: datetime
) -> Slot:
    """The slot a booking at `starts_at` would take, if the clinic's rules allow it.

    A start off the 15-minute grid is accepted: reception may fit a patient in at 10:05.
    Whether the slot is already taken is not decided here but where appointments are stored,
    under a lock, since two receptionists can pick the same slot at once.
    """
    if starts_at.tzinfo is None or starts_at.utcoffset() is None:
        raise _refused("must include a UTC offset, e.g. 2026-11-30T10:00:00+00:00")
    now = as_utc(now, "now")
    slot = Slot(starts_at, starts_at + timedelta(minutes=treatment.duration_minutes))
    if slot.starts_at <= now:
        raise _refused("is in the past")
    on = slot.starts_at.astimezone(tz).date()
    for opens, closes in clinician.working_blocks(on.weekday()):
        if clock_reaches(on, opens, tz) <= slot.starts_at and slot.ends_at <= clock_reaches(
            on, closes, tz
        ):
            return slot
    local_start, local_end = slot.starts_at.astimezone(tz), slot.ends_at.astimezone(tz)
    raise _refused(
        f"{local_start:%H:%M}-{local_end:%H:%M} on {WEEKDAYS[on.weekday()]} {on.isoformat()}"
        f" is outside {clinician.name}'s working hours"
    )


def _refused(reason: str) -> Invalid:
    return Invalid("The appointment cannot be booked at that time.", {"starts_at": [reason]})
