"""Who works when: a clinician's week as blocks of clinic wall-clock time."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import time
from itertools import pairwise

from shared.errors import Invalid

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class WorkingHours:
    """One block of a weekday (Monday 0) in clinic time, start included, end excluded.

    Wall-clock, not UTC, because "09:00 on Mondays" means 09:00 in winter and summer alike.
    """

    weekday: int
    start: time
    end: time

    def __post_init__(self) -> None:
        if isinstance(self.weekday, bool) or not isinstance(self.weekday, int):
            raise ValueError(f"weekday must be 0 (Monday) to 6 (Sunday), not {self.weekday!r}")
        if not 0 <= self.weekday <= 6:
            raise ValueError(f"weekday must be 0 (Monday) to 6 (Sunday), not {self.weekday}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("working hours are clinic wall-clock times, without a zone")
        if self.start >= self.end:
            raise ValueError(f"start {self.start:%H:%M} is not before end {self.end:%H:%M}")

    def __str__(self) -> str:
        return f"{WEEKDAYS[self.weekday]} {self.start:%H:%M}-{self.end:%H:%M}"


def parse_working_hours(items: list[dict]) -> list[WorkingHours]:
    """Working hours as an admin sends them, every mistake reported at once.

    Overlapping blocks on one day are refused: they are a typo, and if kept, a treatment could
    be offered twice in the same stretch. Blocks that touch (09:00-12:00, 12:00-17:00) are
    fine and count as one stretch of work.
    """
    if not isinstance(items, list):
        raise Invalid("Working hours are not valid.",
                      {"working_hours": ["must be a list of {weekday, start, end}"]})
    problems: list[str] = []
    blocks: list[WorkingHours] = []
    for number, item in enumerate(items, start=1):
        try:
            blocks.append(_working_hours(item))
        except ValueError as error:
            problems.append(f"entry {number}: {error}")
    blocks.sort(key=lambda block: (block.weekday, block.start))
    for earlier, later in pairwise(blocks):
        if earlier.weekday == later.weekday and later.start < earlier.end:
            problems.append(f"{earlier} overlaps {later}")
    if problems:
        raise Invalid("Working hours are not valid.", {"working_hours": problems})
    return blocks


def _working_hours(item: object) -> WorkingHours:
    if not isinstance(item, dict):
        raise ValueError("must be an object with weekday, start and end")
    missing = [key for key in ("weekday", "start", "end") if key not in item]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return WorkingHours(item["weekday"], _clock_time(item["start"]), _clock_time(item["end"]))


def _clock_time(text: object) -> time:
    match = _CLOCK.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a time like 09:00")
    return time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Clinician:
    id: uuid.UUID
    name: str
    working_hours: tuple[WorkingHours, ...]

    def __post_init__(self) -> None:
        # Frozen all the way down: a clinician read once may be shared between requests.
        object.__setattr__(self, "working_hours", tuple(self.working_hours))

    def working_blocks(self, weekday: int) -> list[tuple[time, time]]:
        """That weekday's stretches of work, in order, touching blocks joined.

        Joined so that a 45-minute treatment may start at 11:45 when the hours were entered
        as 09:00-12:00 and 12:00-17:00: the clinician is there throughout.
        """
        stretches: list[tuple[time, time]] = []
        for block in sorted(
            (b for b in self.working_hours if b.weekday == weekday), key=lambda b: b.start
        ):
            if stretches and block.start <= stretches[-1][1]:
                stretches[-1] = (stretches[-1][0], max(stretches[-1][1], block.end))
            else:
                stretches.append((block.start, block.end))
        return stretches
