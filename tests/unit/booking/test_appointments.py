"""An appointment's transitions, and the ones the clinic forbids."""
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.booking.model import (
    APPOINTMENT_STATUSES,
    Appointment,
    Slot,
    next_appointment_for_reply,
)
from shared.errors import Conflict, Invalid

STARTS = datetime(2026, 6, 2, 9, 0, tzinfo=UTC)  # 10:00 BST, Tuesday


def booked(starts_at: datetime = STARTS, **changes) -> Appointment:
    return Appointment(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "TPI", starts_at,
                       starts_at + timedelta(minutes=30), **changes)


def test_a_new_appointment_is_booked_unconfirmed_and_holds_its_slot():
    appointment = booked()
    assert (appointment.status, appointment.confirmed, appointment.is_active) == (
        "booked", False, True)


def test_reschedule_moves_it_and_asks_for_confirmation_again():
    appointment = booked(confirmed=True)
    slot = Slot(STARTS + timedelta(days=1), STARTS + timedelta(days=1, minutes=30))
    clinician = appointment.clinician_id
    appointment.reschedule(slot)
    assert (appointment.starts_at, appointment.ends_at) == (slot.starts_at, slot.ends_at)
    assert appointment.clinician_id == clinician and appointment.confirmed is False
    other = uuid.uuid4()
    appointment.reschedule(slot, clinician_id=other)
    assert appointment.clinician_id == other and appointment.status == "booked"


def test_a_reschedule_to_where_it_is_changes_nothing():
    appointment = booked(confirmed=True)
    same = Slot(appointment.starts_at, appointment.ends_at)
    assert appointment.reschedule(same) is False
    assert appointment.reschedule(same, clinician_id=appointment.clinician_id) is False
    assert appointment.confirmed is True
    assert appointment.reschedule(same, clinician_id=uuid.uuid4()) is True
    assert appointment.confirmed is False


@pytest.mark.parametrize("by", ["reception", "patient"])
def test_cancel_frees_the_slot_and_keeps_why_and_who(by):
    appointment = booked()
    appointment.cancel("  Patient unwell ", by)
    assert appointment.status == "cancelled" and not appointment.is_active
    assert (appointment.cancel_reason, appointment.cancelled_by) == ("Patient unwell", by)


def test_cancel_needs_a_reason_and_a_known_canceller():
    with pytest.raises(Invalid) as refused:
        booked().cancel("  ", "reception")
    assert "reason" in refused.value.fields
    with pytest.raises(ValueError):
        booked().cancel("Unwell", "clinician")


def test_confirm_once_then_again_changes_nothing():
    appointment = booked()
    assert appointment.confirm() is True and appointment.confirmed is True
    assert appointment.confirm() is False and appointment.confirmed is True
    assert appointment.status == "booked"


@pytest.mark.parametrize("now", [
    STARTS + timedelta(minutes=5),                           # arrived on time
    STARTS - timedelta(hours=2),                             # seen early the same day
    datetime(2026, 6, 1, 23, 30, tzinfo=UTC),               # 00:30 BST: already the day
    STARTS + timedelta(days=3),                              # recorded late
])
def test_mark_attended_from_the_start_of_the_clinic_day(london, now):
    appointment = booked()
    appointment.mark_attended(now, london)
    assert appointment.status == "attended" and not appointment.is_active


def test_mark_attended_refuses_a_future_day(london):
    with pytest.raises(Conflict):
        booked().mark_attended(datetime(2026, 6, 1, 22, 59, tzinfo=UTC), london)


def test_mark_attended_without_a_zone_uses_the_utc_day():
    with pytest.raises(Conflict):
        booked().mark_attended(datetime(2026, 6, 1, 23, 30, tzinfo=UTC))
    appointment = booked()
    appointment.mark_attended(datetime(2026, 6, 2, 0, 0, tzinfo=UTC))
    assert appointment.status == "attended"


def test_mark_no_show_once_the_appointment_has_started():
    appointment = booked()
    appointment.mark_no_show(STARTS)
    assert appointment.status == "no_show" and not appointment.is_active


def test_mark_no_show_before_the_start_is_refused():
    appointment = booked()
    with pytest.raises(Conflict):
        appointment.mark_no_show(STARTS - timedelta(seconds=1))
    assert appointment.status == "booked"


def test_naive_now_is_refused():
    with pytest.raises(ValueError):
        booked().mark_no_show(datetime(2026, 6, 2, 10))


CHANGES = {
    "reschedule": lambda a: a.reschedule(Slot(STARTS + timedelta(days=1),
                                              STARTS + timedelta(days=1, minutes=30))),
    "cancel": lambda a: a.cancel("Unwell", "patient"),
    "confirm": lambda a: a.confirm(),
    "mark_attended": lambda a: a.mark_attended(STARTS),
    "mark_no_show": lambda a: a.mark_no_show(STARTS + timedelta(hours=1)),
}


@pytest.mark.parametrize("status", [s for s in APPOINTMENT_STATUSES if s != "booked"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_nothing_changes_an_appointment_that_has_left_booked(status, change):
    appointment = booked(status=status)
    before = (appointment.starts_at, appointment.status, appointment.confirmed)
    with pytest.raises(Conflict) as refused:
        CHANGES[change](appointment)
    assert status.replace("_", "-") in refused.value.message
    assert refused.value.status == 409
    assert (appointment.starts_at, appointment.status, appointment.confirmed) == before


@pytest.mark.parametrize("fields", [
    {"status": "postponed"},
    {"cancelled_by": "robot"},
])
def test_an_appointment_in_an_unknown_state_is_refused(fields):
    with pytest.raises(ValueError):
        booked(**fields)


def test_appointment_times_must_be_aware_and_in_order():
    with pytest.raises(ValueError):
        booked(starts_at=datetime(2026, 6, 2, 9))
    with pytest.raises(ValueError):
        Appointment(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "TPI", STARTS, STARTS)


def test_a_reply_applies_to_the_next_booked_appointment():
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    past = booked(now - timedelta(days=1))
    cancelled = booked(now + timedelta(hours=1), status="cancelled")
    later = booked(now + timedelta(days=7))
    sooner = booked(now + timedelta(days=2))
    starting_now = booked(now)
    assert next_appointment_for_reply([past, later, cancelled, sooner, starting_now],
                                      now) is sooner


def test_no_upcoming_appointment_means_nothing_to_reply_to():
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert next_appointment_for_reply([], now) is None
    assert next_appointment_for_reply([booked(now - timedelta(hours=1)),
                                       booked(now + timedelta(hours=1), status="attended")],
                                      now) is None
