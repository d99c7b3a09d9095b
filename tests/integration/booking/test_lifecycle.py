"""An appointment's life through the API, each change committed with its event in the outbox
in the contract's CloudEvents envelope; a change the rules refuse writes no event."""
from __future__ import annotations

import dataclasses
import json
import re
import uuid
from datetime import time

import pytest

from services.booking.db import BookingUnitOfWork

from .conftest import INJECTION, PATIENT, every_day

SLOT = "2026-10-21T10:00:00+01:00"  # Wednesday 10:00 BST = 09:00Z
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
# What reception knows of the patient and the outbox must never carry.
PERSONAL = ["Margaret", "Hollingsworth", "1958-03-14", "1958", "Cathedral", "Wells", "BA5",
            "Okonjo", "672137"]


def assert_envelope(event: dict, event_type: str, subject: str) -> dict:
    """The contract's envelope; returns `data` after checking it carries no personal record."""
    assert set(event) == {"specversion", "id", "source", "type", "time", "subject",
                          "datacontenttype", "data"}
    assert event["specversion"] == "1.0"
    assert uuid.UUID(event["id"])
    assert event["source"] == "/booking"
    assert event["type"] == event_type
    assert event["subject"] == subject
    assert RFC3339_UTC.match(event["time"]), event["time"]
    assert event["datacontenttype"] == "application/json"
    data = event["data"]
    text = json.dumps(data)
    leaked = [value for value in PERSONAL if value in text]
    assert not leaked, f"{event_type} carries personal data: {leaked}"
    assert not {"given_name", "family_name", "date_of_birth", "address", "gp"} & set(data)
    return data


def _new_events(site, since: int) -> list[dict]:
    return site.events()[since:]


def test_book_reschedule_cancel(booking):
    booked = booking.book(SLOT)
    assert booked.status_code == 201
    appointment = booked.get_json()
    assert (appointment["status"], appointment["starts_at"], appointment["ends_at"]) == (
        "booked", SLOT, "2026-10-21T10:30:00+01:00")
    [event] = booking.events()
    data = assert_envelope(event, "booking.appointment.booked", appointment["id"])
    assert data["appointment_id"] == appointment["id"]
    assert data["patient_id"] == booking.patient_id
    assert data["clinician_id"] == str(booking.shah)
    assert data["starts_at"] == "2026-10-21T09:00:00Z"
    assert data["ends_at"] == "2026-10-21T09:30:00Z"
    assert data["first_appointment"] is True
    assert data["treatment"] == {"code": "TPI", "name": "Ultrasound-guided trigger point "
                                 "injection", "requires_consent": True}
    assert data["contact"] == {"phone": "+447400123456", "email": "margaret@example.org",
                               "sms": True, "email_ok": True}

    moved = booking.post(f"/appointments/{appointment['id']}/reschedule",
                         {"starts_at": "2026-10-22T14:30:00+01:00",
                          "clinician_id": str(booking.whitfield)})
    assert moved.status_code == 200
    assert moved.get_json()["starts_at"] == "2026-10-22T14:30:00+01:00"
    assert moved.get_json()["clinician_id"] == str(booking.whitfield)
    [event] = _new_events(booking, 1)
    data = assert_envelope(event, "booking.appointment.rescheduled", appointment["id"])
    assert data["previous_starts_at"] == "2026-10-21T09:00:00Z"
    assert data["starts_at"] == "2026-10-22T13:30:00Z"
    assert data["clinician_id"] == str(booking.whitfield)
    assert data["clinician_name"] == "Tom Whitfield"

    cancelled = booking.post(f"/appointments/{appointment['id']}/cancel",
                             {"reason": "Patient away that week"})
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["cancel_reason"] == "Patient away that week"
    [event] = _new_events(booking, 2)
    data = assert_envelope(event, "booking.appointment.cancelled", appointment["id"])
    assert (data["status"], data["reason"], data["cancelled_by"]) == (
        "cancelled", "Patient away that week", "reception")

    ids = [e["id"] for e in booking.events()]
    assert len(set(ids)) == 3
    shown = booking.get(f"/appointments/{appointment['id']}").get_json()
    assert (shown["status"], shown["starts_at"]) == ("cancelled", "2026-10-22T14:30:00+01:00")


def test_a_reschedule_to_where_it_already_is_keeps_the_confirmation_and_tells_no_one(
        booking):
    """A double click or a retried request: no move, so no "your appointment has moved"
    text and the patient's YES stands. The same instant in another offset is the same time."""
    from services.booking import service
    appointment = booking.book(SLOT).get_json()
    service.confirm_appointment(BookingUnitOfWork(booking.engine, booking.clock),
                                uuid.UUID(appointment["id"]))
    before = len(booking.events())

    for starts_at in (SLOT, "2026-10-21T09:00:00Z"):
        again = booking.post(f"/appointments/{appointment['id']}/reschedule",
                             {"starts_at": starts_at, "clinician_id": str(booking.shah)})
        assert again.status_code == 200
        assert (again.get_json()["starts_at"], again.get_json()["confirmed"]) == (SLOT, True)
    assert len(booking.events()) == before

    moved = booking.post(f"/appointments/{appointment['id']}/reschedule",
                         {"starts_at": SLOT, "clinician_id": str(booking.whitfield)})
    assert moved.get_json()["confirmed"] is False      # another clinician is a change
    [event] = _new_events(booking, before)
    assert event["type"] == "booking.appointment.rescheduled"


def test_reception_records_a_cancellation_the_patient_asked_for_as_the_patients(booking):
    """A patient phones to cancel: the event says the patient asked (notify then writes "as
    you asked", not "sorry, we have had to cancel"); who asked is one of the two known."""
    appointment = booking.book(SLOT).get_json()
    refused = booking.post(f"/appointments/{appointment['id']}/cancel",
                           {"cancelled_by": "clinician"})
    assert refused.status_code == 422
    assert "cancelled_by" in refused.get_json()["error"]["fields"]

    cancelled = booking.post(f"/appointments/{appointment['id']}/cancel",
                             {"cancelled_by": "patient"})

    assert cancelled.status_code == 200
    assert (cancelled.get_json()["cancelled_by"], cancelled.get_json()["cancel_reason"]) == (
        "patient", "Cancelled at the patient's request")
    data = assert_envelope(booking.events()[-1], "booking.appointment.cancelled",
                           appointment["id"])
    assert data["cancelled_by"] == "patient"


def test_attended_injection_schedules_its_check_in_two_weeks_later(booking):
    appointment = booking.book(SLOT).get_json()
    booking.clock.set("2026-10-21T09:40:00+01:00")

    attended = booking.post(f"/appointments/{appointment['id']}/attended")

    assert attended.status_code == 200
    assert attended.get_json()["status"] == "attended"
    booked, seen, followup = booking.events()
    assert_envelope(seen, "booking.appointment.attended", appointment["id"])
    data = assert_envelope(followup, "booking.followup.scheduled", appointment["id"])
    assert uuid.UUID(data["followup_id"])
    assert data["appointment_id"] == appointment["id"]
    assert data["patient_id"] == booking.patient_id
    assert data["kind"] == "checkin"
    # Fourteen clinic days later at 10:00 clinic time; the clocks went back in between, so
    # 10:00 is now 10:00 UTC, not the 09:00 UTC a plain 14 x 24 hours would give.
    assert data["due_at"] == "2026-11-04T10:00:00Z"
    assert data["treatment"]["code"] == "TPI"
    assert data["contact"]["phone"] == "+447400123456"
    assert booking.counts()["followups"] == 1


def test_attended_treatment_without_a_plan_schedules_nothing(booking):
    appointment = booking.book(SLOT, treatment="POD-ASSESS").get_json()
    booking.clock.set("2026-10-21T11:00:00+01:00")
    assert booking.post(f"/appointments/{appointment['id']}/attended").status_code == 200
    assert [e["type"] for e in booking.events()] == [
        "booking.appointment.booked", "booking.appointment.attended"]
    assert booking.counts()["followups"] == 0


def test_attended_counts_the_clinic_day_not_the_utc_day(booking):
    """At 00:30 on the appointment's day in summer time it is still yesterday in UTC; the
    clinic's day has begun, so reception may mark the patient seen."""
    appointment = booking.book(SLOT).get_json()
    booking.clock.set("2026-10-21T00:30:00+01:00")
    response = booking.post(f"/appointments/{appointment['id']}/attended")
    assert response.status_code == 200, response.get_json()


def test_attended_is_refused_on_an_earlier_day(booking):
    appointment = booking.book(SLOT).get_json()
    booking.clock.set("2026-10-20T23:59:00+01:00")
    response = booking.post(f"/appointments/{appointment['id']}/attended")
    assert response.status_code == 409
    assert len(booking.events()) == 1


def test_no_show(booking):
    appointment = booking.book(SLOT).get_json()
    early = booking.post(f"/appointments/{appointment['id']}/no-show")
    assert early.status_code == 409
    assert len(booking.events()) == 1

    booking.clock.set("2026-10-21T10:20:00+01:00")
    response = booking.post(f"/appointments/{appointment['id']}/no-show")

    assert response.status_code == 200
    assert response.get_json()["status"] == "no_show"
    [event] = _new_events(booking, 1)
    data = assert_envelope(event, "booking.appointment.no_show", appointment["id"])
    assert data["status"] == "no_show"
    assert booking.counts()["followups"] == 0  # no treatment given, so no check-in owed


def _attended(site, appointment_id):
    site.clock.set("2026-10-21T10:05:00+01:00")
    assert site.post(f"/appointments/{appointment_id}/attended").status_code == 200


def _cancelled(site, appointment_id):
    assert site.post(f"/appointments/{appointment_id}/cancel",
                     {"reason": "Feeling better"}).status_code == 200


def _no_show(site, appointment_id):
    site.clock.set("2026-10-21T10:20:00+01:00")
    assert site.post(f"/appointments/{appointment_id}/no-show").status_code == 200


ENDED = {"attended": _attended, "cancelled": _cancelled, "no_show": _no_show}
CHANGES = {
    "cancel": ("cancel", {"reason": "Too late"}),
    "attended": ("attended", None),
    "no-show": ("no-show", None),
    "reschedule": ("reschedule", {"starts_at": "2026-10-28T10:00:00Z"}),
}


@pytest.mark.parametrize("ended", ENDED)
@pytest.mark.parametrize("change", CHANGES)
def test_an_ended_appointment_cannot_change(pg_booking, ended, change):
    site = pg_booking
    appointment = site.book(SLOT).get_json()
    ENDED[ended](site, appointment["id"])
    before_events, before = site.events(), site.counts()

    action, body = CHANGES[change]
    response = site.post(f"/appointments/{appointment['id']}/{action}", body)

    assert response.status_code == 409, response.get_json()
    assert response.get_json()["error"]["code"] == "conflict"
    assert site.events() == before_events
    assert site.counts() == before
    assert site.get(f"/appointments/{appointment['id']}").get_json()["status"] == ended


def test_a_missing_appointment_is_404_for_every_change(booking):
    missing = uuid.uuid4()
    for action, body in CHANGES.values():
        response = booking.post(f"/appointments/{missing}/{action}", body)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"
    assert booking.get(f"/appointments/{missing}").status_code == 404
    assert booking.get(f"/patients/{missing}").status_code == 404
    assert booking.counts()["outbox"] == 0


def test_the_second_appointment_is_not_a_first_appointment(booking):
    booking.book(SLOT)
    booking.book("2026-10-28T10:00:00Z")
    first, second = (e["data"]["first_appointment"] for e in booking.events())
    assert (first, second) == (True, False)


def test_a_new_patient_who_cancelled_and_rebooked_still_gets_the_intake_form(booking):
    """A cancelled booking was counted as "booked before": the rebooking needed no form,
    and the patient arrived without one."""
    first = booking.book(SLOT).get_json()
    assert booking.post(f"/appointments/{first['id']}/cancel",
                        {"reason": "wrong clinician"}).status_code == 200
    again = booking.book("2026-10-21T10:00:00+01:00", booking.whitfield).get_json()
    assert again["intake_form_status"] == "sent"
    booked = [e for e in booking.events() if e["type"] == "booking.appointment.booked"]
    assert [e["data"]["first_appointment"] for e in booked] == [True, True]


def test_the_day_list_and_patient_lookup(booking):
    booked = booking.book(SLOT).get_json()
    booking.book("2026-10-21T10:00:00+01:00", booking.whitfield)
    day = booking.get("/appointments", query_string={"date": "2026-10-21"}).get_json()
    assert len(day) == 2
    mine = booking.get("/appointments", query_string={
        "date": "2026-10-21", "clinician_id": str(booking.shah)}).get_json()
    assert [a["id"] for a in mine] == [booked["id"]]
    assert mine[0]["intake_form_status"] == "sent"
    found = booking.get("/patients", query_string={"phone": "+44 7400 123456"}).get_json()
    assert [p["id"] for p in found] == [booking.patient_id]
    assert found[0]["address"]["postcode"] == "BA5 2PA"
    assert found[0]["date_of_birth"] == PATIENT["date_of_birth"]


def test_a_booking_follows_changed_hours_and_treatments_at_once(booking):
    """Bookings build the clinician and treatment once per distinct row (a cache keyed by the
    row's content): a change of working hours or of a treatment applies to the very next
    booking, on both paths (with and without an Idempotency-Key)."""
    assert booking.book(SLOT).status_code == 201          # Dr Shah works at 10:00
    uow = BookingUnitOfWork(booking.engine, booking.clock)
    with uow:
        shah = uow.clinicians.get(booking.shah)
        uow.clinicians.save(dataclasses.replace(shah, working_hours=every_day(
            (time(14), time(17)))))
        uow.treatments.save(dataclasses.replace(INJECTION, name="Trigger point injection",
                                                duration_minutes=45))
        uow.commit()
    for headers in ({}, {"Idempotency-Key": str(uuid.uuid4())}):
        refused = booking.book("2026-10-22T10:00:00+01:00", headers=headers)
        assert refused.status_code == 422, refused.get_json()
        assert "starts_at" in refused.get_json()["error"]["fields"]
    booked = booking.book("2026-10-22T14:00:00+01:00")
    assert booked.status_code == 201
    assert booked.get_json()["ends_at"] == "2026-10-22T14:45:00+01:00"
    assert booking.events()[-1]["data"]["treatment"]["name"] == "Trigger point injection"
