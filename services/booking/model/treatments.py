"""What the clinic offers, and the check-in some treatments are owed afterwards."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from .clinic_time import as_utc, clock_reaches

FOLLOWUP_KINDS = ("checkin",)


@dataclass(frozen=True)
class FollowUpPlan:
    """A message some days after a treatment, at a civil hour of the clinic's day.

    A day count and a wall-clock time rather than a duration, because "two weeks later at
    10:00" must not become 09:00 when the clocks have changed in between.
    """

    kind: str
    days_after: int
    local_time: time = time(10, 0)

    def __post_init__(self) -> None:
        if self.kind not in FOLLOWUP_KINDS:
            raise ValueError(f"follow-up kind must be one of {FOLLOWUP_KINDS}, not {self.kind!r}")
        if self.days_after < 1:
            raise ValueError("a follow-up comes at least one day after the appointment")
        if self.local_time.tzinfo is not None:
            raise ValueError("a follow-up's time is clinic wall-clock time, without a zone")


# Longer is a typo (hours for minutes). An appointment must also fit in one day's working hours,
# and PostgreSQL refuses one longer than a day (constraint appointment_within_a_day).
LONGEST_TREATMENT_MINUTES = 12 * 60


@dataclass(frozen=True)
class Treatment:
    code: str
    name: str
    duration_minutes: int
    requires_consent: bool
    followup: FollowUpPlan | None

    def __post_init__(self) -> None:
        if self.duration_minutes <= 0:
            raise ValueError(f"{self.code}: duration must be positive minutes")
        if self.duration_minutes > LONGEST_TREATMENT_MINUTES:
            raise ValueError(f"{self.code}: a treatment lasts at most a working day "
                             f"({LONGEST_TREATMENT_MINUTES} minutes)")


def followup_due(
    treatment: Treatment, appointment_starts_at: datetime, tz: ZoneInfo
) -> datetime | None:
    """When the treatment's follow-up is due, in UTC; None when it has none.

    Counted in clinic days from the appointment's own clinic date, so an appointment just
    after midnight in summer (still the day before in UTC) does not get its check-in a day
    early. A plan time the clock skips becomes the moment the clock jumps past it.
    """
    plan = treatment.followup
    if plan is None:
        return None
    starts_at = as_utc(appointment_starts_at, "appointment_starts_at")
    due_on = starts_at.astimezone(tz).date() + timedelta(days=plan.days_after)
    return clock_reaches(due_on, plan.local_time, tz)
