"""A patient's SMS YES or NO (`notify.reply.received`) changes the appointment the text they
answered was about, and never another: not a later one when they text after the start, not a
relative's on a shared phone."""
from __future__ import annotations

from datetime import timedelta

import pytest

from services.booking import service
from services.booking.db import BookingUnitOfWork
from shared.events import Event

from .conftest import PATIENT

WEDNESDAY = "2026-10-21T10:00:00+01:00"   # 09:00Z
THURSDAY = "2026-10-22T10:00:00+01:00"


def reply(site, intent: str, **data) -> None:
    event = Event(type="notify.reply.received", source="/notify", subject="SM1",
                  data={"patient_id": None, "appointment_id": None, "phone": "+447400123456",
                        "intent": intent, "score": None, "message_sid": "SM1", **data})
    service.apply_patient_reply(BookingUnitOfWork(site.engine, site.clock), event)


def book(site, starts_at: str, patient_id: str | None = None) -> str:
    response = site.post("/appointments", {
        "patient_id": patient_id or site.patient_id, "clinician_id": str(site.shah),
        "treatment_code": "TPI", "starts_at": starts_at})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def state(site, appointment_id: str) -> tuple[str, bool]:
    appointment = site.get(f"/appointments/{appointment_id}").get_json()
    return appointment["status"], appointment["confirmed"]


def test_a_no_cancels_the_appointment_its_text_was_about_not_the_next_one(booking):
    wednesday, thursday = book(booking, WEDNESDAY), book(booking, THURSDAY)
    reply(booking, "cancel", appointment_id=thursday, patient_id=booking.patient_id)
    assert state(booking, thursday) == ("cancelled", False)
    assert state(booking, wednesday) == ("booked", False)
    assert booking.events()[-1]["type"] == "booking.appointment.cancelled"
    assert booking.events()[-1]["subject"] == thursday


def test_a_no_texted_after_the_start_cancels_nothing(booking):
    """Running late, the patient answers the morning's reminder at 10:05: neither that
    appointment (begun) nor the next one is cancelled."""
    wednesday, thursday = book(booking, WEDNESDAY), book(booking, THURSDAY)
    events = len(booking.events())
    booking.clock.set("2026-10-21T09:05:00+00:00")
    reply(booking, "cancel", appointment_id=wednesday, patient_id=booking.patient_id)
    assert state(booking, wednesday) == ("booked", False)
    assert state(booking, thursday) == ("booked", False)
    assert len(booking.events()) == events


def test_on_a_shared_phone_a_reply_naming_no_appointment_changes_nothing(booking):
    """Mother and son share a phone and notify could not say which text was answered: a NO
    is not guessed onto the sooner appointment, whoever's it is."""
    son = booking.post("/patients", {**PATIENT, "given_name": "Oliver",
                                     "date_of_birth": "2012-05-02"}).get_json()["id"]
    mothers, sons = book(booking, THURSDAY), book(booking, WEDNESDAY, patient_id=son)
    reply(booking, "cancel")
    assert state(booking, sons) == ("booked", False)
    assert state(booking, mothers) == ("booked", False)


def test_a_reply_naming_another_patients_appointment_changes_nothing(booking):
    son = booking.post("/patients", {**PATIENT, "given_name": "Oliver",
                                     "date_of_birth": "2012-05-02"}).get_json()["id"]
    sons = book(booking, WEDNESDAY, patient_id=son)
    reply(booking, "cancel", appointment_id=sons, patient_id=booking.patient_id)
    with pytest.raises(ValueError):       # retried, then parked with its reason
        reply(booking, "cancel", appointment_id="not-an-id", patient_id=booking.patient_id)
    assert state(booking, sons) == ("booked", False)


def test_without_a_named_appointment_one_patients_yes_confirms_their_next(booking):
    later, sooner = book(booking, THURSDAY), book(booking, WEDNESDAY)
    booking.clock.advance(timedelta(hours=1))
    reply(booking, "confirm", patient_id=booking.patient_id)
    assert state(booking, sooner) == ("booked", True)
    assert state(booking, later) == ("booked", False)


@pytest.mark.parametrize("since", ["cancel", "no-show"])
def test_a_reply_about_an_appointment_cancelled_or_missed_since_changes_nothing(booking,
                                                                                 since):
    """The patient phoned to cancel Wednesday (or missed it) and then texts NO to its
    reminder: Thursday is not cancelled in its place."""
    wednesday, thursday = book(booking, WEDNESDAY), book(booking, THURSDAY)
    if since == "cancel":
        assert booking.post(f"/appointments/{wednesday}/cancel",
                            {"reason": "phoned"}).status_code == 200
    else:
        booking.clock.set("2026-10-21T09:15:00+00:00")
        assert booking.post(f"/appointments/{wednesday}/no-show", {}).status_code == 200
    events = len(booking.events())
    reply(booking, "cancel", appointment_id=wednesday, patient_id=booking.patient_id)
    assert state(booking, thursday) == ("booked", False)
    assert len(booking.events()) == events


def test_a_score_texted_back_to_a_check_in_is_kept_with_its_follow_up(booking):
    """The injection was attended, so its check-in was planned; the patient's "8" (notify
    names the follow-up) is shown with the appointment for reception. A "No" to the check-in
    names the attended injection, which it leaves as it is; a score naming another
    patient's follow-up, or none, is kept nowhere."""
    injection = book(booking, WEDNESDAY)
    booking.clock.set("2026-10-21T10:40:00+01:00")
    assert booking.post(f"/appointments/{injection}/attended").status_code == 200
    [followup] = booking.get(f"/appointments/{injection}").get_json()["followups"]
    assert (followup["kind"], followup["pain_score"], followup["scored_at"]) == (
        "checkin", None, None)
    booking.clock.set("2026-11-04T10:05:00+00:00")

    someone_else = "5d3b9c4e-0000-4000-8000-000000000000"
    reply(booking, "score", score=9, followup_id=followup["id"], patient_id=someone_else,
          appointment_id=injection)
    reply(booking, "score", score=9, patient_id=booking.patient_id)
    assert booking.get(f"/appointments/{injection}").get_json()["followups"][0][
        "pain_score"] is None
    reply(booking, "score", score=8, followup_id=followup["id"], patient_id=booking.patient_id,
          appointment_id=injection)
    reply(booking, "cancel", followup_id=followup["id"], patient_id=booking.patient_id,
          appointment_id=injection)

    shown = booking.get(f"/appointments/{injection}").get_json()
    assert shown["status"] == "attended"
    [followup] = shown["followups"]
    assert (followup["pain_score"], followup["scored_at"]) == (8, "2026-11-04T10:05:00+00:00")
