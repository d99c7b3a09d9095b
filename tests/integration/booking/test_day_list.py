"""The day list on PostgreSQL: a day's appointments read between two bounds of `starts_at`,
which is right only because the database refuses an appointment longer than a day."""
from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from services.booking import service
from services.booking.db import (
    AppointmentRepository,
    BookingUnitOfWork,
    appointments,
    day_list_window,
)
from services.booking.model import Appointment, Treatment

from .conftest import generic_plan

LONDON = ZoneInfo("Europe/London")


def _stored(site, starts_at: datetime, ends_at: datetime) -> Appointment:
    """Written as a repository writes it, bypassing the booking rules (working hours)."""
    appointment = Appointment(uuid.uuid4(), uuid.UUID(site.patient_id), site.shah, "TPI",
                              starts_at, ends_at)
    with site.engine.begin() as connection:
        AppointmentRepository(connection, site.clock).add_if_free(appointment, "sent")
    return appointment


def test_an_appointment_longer_than_a_day_is_refused_by_the_database(pg_booking):
    start = datetime(2027, 1, 4, 9, tzinfo=UTC)
    _stored(pg_booking, start, start + timedelta(hours=24))   # a day exactly: allowed
    with pytest.raises(sa.exc.IntegrityError, match="appointment_within_a_day"):
        _stored(pg_booking, start + timedelta(days=2), start + timedelta(days=3, seconds=1))


def test_a_refusal_that_is_no_clash_is_not_answered_as_a_taken_slot(pg_booking):
    """Only the exclusion constraint means "that time is taken" (409); a check refusing the
    row is a fault of ours and must not reach the patient as a clash."""
    site = pg_booking
    start = datetime(2027, 1, 8, 9, tzinfo=UTC)
    too_long = Appointment(uuid.uuid4(), uuid.UUID(site.patient_id), site.shah, "TPI", start,
                           start + timedelta(hours=25))
    with BookingUnitOfWork(site.engine, site.clock) as uow, \
            pytest.raises(sa.exc.IntegrityError, match="appointment_within_a_day"):
        service._insert(uow, too_long, "sent")


def test_the_day_list_holds_an_appointment_that_began_the_day_before(pg_booking):
    """Overnight (23:00 to 09:00 the next morning, clinic time): in both days' lists, and in
    the list of the day after neither."""
    site = pg_booking
    evening = datetime(2027, 1, 5, 23, tzinfo=LONDON)
    overnight = _stored(site, evening, evening + timedelta(hours=10))

    def listed(day: date) -> list:
        return [row.id for row in service.day_list(BookingUnitOfWork(site.engine, site.clock),
                                                   day, LONDON)]
    assert overnight.id in listed(date(2027, 1, 5))
    assert overnight.id in listed(date(2027, 1, 6))
    assert overnight.id not in listed(date(2027, 1, 7))


def test_the_day_list_reads_the_starts_at_index_between_two_bounds(pg_booking):
    start = datetime(2027, 1, 6, tzinfo=UTC)
    statement = sa.select(appointments.c.id).where(
        day_list_window(start, start + timedelta(days=1), bounded=True))
    plan = generic_plan(pg_booking.engine, statement, {})
    conditions = [line for line in plan.splitlines() if "Index Cond" in line]
    assert conditions and ">=" in conditions[0] and "<" in conditions[0], plan


def test_a_treatment_longer_than_a_working_day_is_refused():
    with pytest.raises(ValueError, match="at most a working day"):
        Treatment("LONG", "Typo", 12 * 60 + 1, False, None)


def test_the_lower_bound_is_a_real_day_back_whatever_zone_the_day_is_given_in():
    """The day after the clocks went forward: 24 hours of wall clock back is only 23 real
    hours, and an appointment of 23.5 hours (allowed) would be missed."""
    start = datetime(2027, 3, 29, tzinfo=LONDON)
    lower = day_list_window(start, start + timedelta(days=1), bounded=True).clauses[0].right
    assert start.astimezone(UTC) - lower.value.astimezone(UTC) == timedelta(hours=24)
