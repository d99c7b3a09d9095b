"""When reminders go out: the contract's REMINDER_OFFSETS and QUIET_HOURS, in clinic time.

Everything here takes and returns aware UTC datetimes; only the quiet-hours rule looks at the
clinic's wall clock, through the ZoneInfo it is handed, so the same code is right on both sides
of a clock change.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.notify.model.delivery import SMS_FALLBACK

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_OFFSET = re.compile(r"(\d+)([mhd])")
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
ONE_MINUTE = timedelta(minutes=1)


def as_utc(value: str | datetime) -> datetime:
    """An instant from an event (ISO 8601 string or datetime) as an aware UTC datetime.

    A naive value is refused rather than guessed: read as UTC or as clinic time it would be an
    hour out for half the year, and a reminder an hour late is a missed appointment.
    """
    instant = datetime.fromisoformat(value) if isinstance(value, str) else value
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return instant.astimezone(UTC)


def parse_offsets(text: str) -> list[timedelta]:
    """REMINDER_OFFSETS ("48h,2h", "30m", "1d") as durations, largest first, without repeats.

    Blank text means no reminders (an operator's choice); anything else that is not a positive
    whole number of m/h/d is refused at start-up, because a typo silently dropping the 2-hour
    reminder would only be noticed by patients who miss their appointment.
    """
    if not text.strip():
        return []
    offsets = set()
    for item in text.split(","):
        match = _OFFSET.fullmatch(item.strip().lower())
        if not match:
            raise ValueError(f"reminder offset {item.strip()!r} is not like 48h, 30m or 1d")
        amount = int(match.group(1))
        if amount == 0:
            raise ValueError(f"reminder offset {item.strip()!r} would remind at the start")
        try:
            offsets.add(amount * _UNITS[match.group(2)])
        except OverflowError:
            raise ValueError(f"reminder offset {item.strip()!r} is too large") from None
    return sorted(offsets, reverse=True)


def _clock_time(text: str) -> time:
    match = _CLOCK.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text.strip()!r} is not a time like 21:00")
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class QuietHours:
    """Clinic-local wall-clock hours in which no scheduled message reaches a patient.

    The window is [start, end) and may wrap midnight (21:00-08:00). It is wall-clock time, not
    a duration: on the night the clocks change the window is an hour longer or shorter, and
    08:00 is still 08:00. Strings "HH:MM" are accepted for convenience in tests and config.
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, _clock_time(value))
            elif value.tzinfo is not None:
                raise ValueError("quiet hours are clinic wall-clock times, without a zone")
        if self.start == self.end:
            # Either nothing is quiet or everything is: neither is what anyone means.
            raise ValueError("quiet hours start and end at the same time")

    @property
    def wraps_midnight(self) -> bool:
        return self.end < self.start

    def contains(self, local: datetime) -> bool:
        """Whether the clinic's wall clock, reading `local`, is inside the window."""
        wall = local.time().replace(tzinfo=None)
        if self.wraps_midnight:
            return wall >= self.start or wall < self.end
        return self.start <= wall < self.end

    def window_around(self, local: datetime) -> tuple[date, date]:
        """The clinic dates on which the window holding `local` starts and ends."""
        day = local.date()
        if not self.wraps_midnight:
            return day, day
        if local.time() >= self.start:
            return day, day + timedelta(days=1)
        return day - timedelta(days=1), day


def parse_quiet_hours(text: str) -> QuietHours | None:
    """QUIET_HOURS ("21:00-08:00") as a window; empty text disables quiet hours (contract)."""
    if not text.strip():
        return None
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"quiet hours {text!r} are not like 21:00-08:00")
    return QuietHours(_clock_time(start), _clock_time(end))


def _first_instant_showing(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The later UTC reading of a wall time: right for "the quiet window has ended".

    On the autumn night a wall time happens twice; the window is not over until its second
    occurrence. On the spring night a wall time may not exist; the later reading (an hour on)
    is past the jump, so the clock is certainly outside the window then.
    """
    readings = (datetime.combine(day, wall, tzinfo=tz).replace(fold=f) for f in (0, 1))
    return max(r.astimezone(UTC) for r in readings)


def _last_instant_before(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The earlier UTC reading of a wall time: right for "the quiet window has not begun"."""
    readings = (datetime.combine(day, wall, tzinfo=tz).replace(fold=f) for f in (0, 1))
    return min(r.astimezone(UTC) for r in readings)


def place_outside_quiet_hours(
    due: datetime, quiet: QuietHours | None, tz: ZoneInfo, not_after: datetime
) -> datetime:
    """`due`, or if the clinic's clock then reads inside quiet hours, a time outside them.

    The contract moves the message to the end of the window (08:00 clinic time on that date,
    whatever the UTC offset), so a 2-hour reminder for a 09:00 appointment arrives at 08:00.
    When the window ends at or after `not_after` (the appointment itself: a reminder at 08:00
    for an 08:00 appointment is useless) we go the other way, to the last minute before the
    window began (20:59 the evening before). Earlier rather than dropped: a reminder the
    evening before still prevents a missed appointment; the caller drops it if that is past.

    Windows that leave under ~1 hour 1 minute of non-quiet time are not supported: on the
    clock-change nights the chosen reading can then land in the next window.
    """
    due = as_utc(due)
    if quiet is None:
        return due
    local = due.astimezone(tz)
    if not quiet.contains(local):
        return due
    start_day, end_day = quiet.window_around(local)
    window_end = _first_instant_showing(end_day, quiet.end, tz)
    if window_end < as_utc(not_after):
        return window_end
    return _last_instant_before(start_day, quiet.start, tz) - ONE_MINUTE


def reminder_times(
    starts_at: datetime,
    offsets: list[timedelta],
    quiet: QuietHours | None,
    tz: ZoneInfo,
    now: datetime,
) -> list[datetime]:
    """When to remind a patient of an appointment, in UTC, earliest first.

    One per offset, moved out of quiet hours. A time already past (at or before `now`) is
    skipped, never sent late: a 48-hour reminder arriving 3 hours before is noise, and the
    2-hour one still comes. A time at or after the start is dropped. Two offsets that land on
    the same minute after moving (both pushed to 08:00) give one reminder, not two texts.
    """
    starts_at, now = as_utc(starts_at), as_utc(now)
    times = {
        place_outside_quiet_hours(starts_at - offset, quiet, tz, not_after=starts_at)
        for offset in offsets
    }
    return sorted(t for t in times if now < t < starts_at)


# Kinds that wait for their time and so keep quiet hours; the rest answer something the patient
# or the clinic has just done (a booking, a change, a call) and go at once.
SCHEDULED_KINDS = frozenset({"reminder", "form_nudge", "checkin"})
_NEVER = datetime.max.replace(tzinfo=UTC)
CHECKIN_LATEST = timedelta(days=7)
# A message answering something just done (a booking, a change, a call) goes at once, even at
# night: the patient is awake and waiting for it. Found due longer ago than this (a worker
# outage, retries), it no longer answers anything: it keeps quiet hours, and one about a
# coming appointment is dropped once the appointment has begun.
AT_ONCE_GRACE = timedelta(minutes=10)
ABOUT_THE_COMING_VISIT = frozenset({"confirmation", "rescheduled", "form_link"})
# "Sorry we missed your call, we will ring you back": hours late it is a false promise.
MISSED_CALL_LATEST = timedelta(hours=1)


def when_to_send(kind: str, context: dict, due_at: datetime, now: datetime,
                 quiet: QuietHours | None, tz: ZoneInfo) -> datetime | None:
    """When a message found due at `now` should go: `now`, later, or None to drop it.

    Planning kept scheduled messages out of quiet hours, but one sent late (after an outage, or
    retried) may now fall inside them, or after the appointment it is about. It is moved out of
    the window again, and a reminder or nudge that could only arrive after the start, or in the
    night before it, is dropped: too late to be of use.
    """
    now = as_utc(now)
    if kind == SMS_FALLBACK:
        # The email of an SMS that did not arrive keeps the rules of what it stands for: a
        # report of "undelivered" can come hours after the send, and a check-in or reminder
        # must not then go out in the night (a confirmation's still goes at once).
        kind = context.get("of", kind)
    if kind not in SCHEDULED_KINDS:
        return _at_once(kind, context, as_utc(due_at), now, quiet, tz)
    if kind == "checkin":
        latest = as_utc(due_at) + CHECKIN_LATEST
        if now >= latest:
            return None
        return place_outside_quiet_hours(now, quiet, tz, not_after=latest)
    if "starts_at" not in context:
        # A reminder's or nudge's fallback whose SMS named no start (none should): kept out
        # of the night rather than failing the round; nothing tells when it is too late.
        return place_outside_quiet_hours(now, quiet, tz, not_after=_NEVER)
    starts_at = as_utc(context["starts_at"])
    if now >= starts_at:
        return None
    at = place_outside_quiet_hours(now, quiet, tz, not_after=starts_at)
    return at if at >= now else None


def _at_once(kind: str, context: dict, due_at: datetime, now: datetime,
             quiet: QuietHours | None, tz: ZoneInfo) -> datetime | None:
    """An at-once message: now while it still answers what the patient did (AT_ONCE_GRACE);
    sent late, the rules of a scheduled message (`when_to_send`). Late is counted from what
    it answers (`asked_at`, the event's time: an event that waited out an outage is planned,
    so due, only when handled), else from when it was due."""
    asked_at = as_utc(context["asked_at"]) if "asked_at" in context else due_at
    late = now - min(asked_at, due_at)
    if late <= AT_ONCE_GRACE:
        return now
    if kind == "missed_call":
        return now if late <= MISSED_CALL_LATEST else None
    if kind in ABOUT_THE_COMING_VISIT and "starts_at" in context:
        starts_at = as_utc(context["starts_at"])
        if now >= starts_at:
            return None                 # "Reply YES to confirm" after the start: useless
        return max(now, place_outside_quiet_hours(now, quiet, tz, not_after=starts_at))
    return place_outside_quiet_hours(now, quiet, tz, not_after=_NEVER)
