"""The clinic's wall clock versus the instants we store.

Rules are stated in clinic time ("09:00 on Monday") but every instant is kept in UTC. Twice a
year the wall clock skips an hour or repeats one, and these two functions are the only place
that decides what a wall time then means, so availability, booking and follow-ups agree.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

ONE_MINUTE = timedelta(minutes=1)


def as_utc(instant: datetime, name: str = "instant") -> datetime:
    """An aware datetime moved to UTC; a naive one is refused, never guessed.

    Read as UTC or as clinic time, a naive value would be an hour out for half the year.
    """
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} {instant.isoformat()} has no UTC offset")
    return instant.astimezone(UTC)


def instant_at(on: date, wall: time, tz: ZoneInfo) -> datetime | None:
    """The instant the clinic's clock shows `wall` on `on`, in UTC.

    When the clocks go back the first of the two readings is taken; when they go forward a
    skipped reading gives None, so nothing is ever offered at a time that never happens.
    """
    local = datetime.combine(on, wall.replace(fold=0), tzinfo=tz)
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None
    return instant


def clock_reaches(on: date, wall: time, tz: ZoneInfo) -> datetime:
    """The first instant the clinic's clock shows `wall` on `on`, or a later reading.

    For a boundary (a working block ending at 01:30 on the spring-forward night) a skipped
    reading means the moment the clock jumps past it: the clinician stops then, not an hour
    later or earlier.
    """
    exact = instant_at(on, wall, tz)
    if exact is not None:
        return exact
    target = datetime.combine(on, wall.replace(fold=0))
    instant = datetime.combine(on, wall.replace(fold=1), tzinfo=tz).astimezone(UTC)
    while instant.astimezone(tz).replace(tzinfo=None) < target:
        instant += ONE_MINUTE
    return instant
