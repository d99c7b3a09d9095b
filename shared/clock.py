"""Time as a dependency: scheduling code takes a clock so tests can stand at any instant."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware datetime in UTC."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that stands still until moved; accepts ISO 8601 with an offset."""

    def __init__(self, at: str | datetime):
        instant = datetime.fromisoformat(at) if isinstance(at, str) else at
        if instant.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = instant.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, at: str | datetime) -> None:
        self._now = FixedClock(at).now()
