"""Fixtures for booking's rules: the clinic's zone and clinicians built for a test."""
from __future__ import annotations

import uuid
from datetime import time
from zoneinfo import ZoneInfo

import pytest

from services.booking.model import Clinician, FollowUpPlan, Treatment, WorkingHours


@pytest.fixture
def london() -> ZoneInfo:
    return ZoneInfo("Europe/London")


@pytest.fixture
def injection() -> Treatment:
    return Treatment("TPI", "Ultrasound-guided trigger point injection", 30, True,
                     FollowUpPlan("checkin", 14))


@pytest.fixture
def weekday_clinician() -> Clinician:
    """Monday to Friday, 09:00-13:00 and 14:00-17:00."""
    hours = [WorkingHours(day, start, end) for day in range(5)
             for start, end in ((time(9), time(13)), (time(14), time(17)))]
    return Clinician(uuid.uuid4(), "Dr Amira Shah", hours)


@pytest.fixture
def every_day():
    """A clinician working the same hours on all seven days, to test any date."""
    def build(start: time, end: time) -> Clinician:
        return Clinician(uuid.uuid4(), "Grace Okafor",
                         [WorkingHours(day, start, end) for day in range(7)])
    return build
