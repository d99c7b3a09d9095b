"""Which messages each event plans, on which channels, when, and with what for the template."""
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notify.model import (
    QuietHours,
    channels_for,
    plan_booked,
    plan_cancelled,
    plan_followup,
    plan_form_sent,
    plan_missed_call,
    plan_rescheduled,
)
from shared.clock import FixedClock

LONDON = ZoneInfo("Europe/London")
NIGHT = QuietHours(time(21), time(8))
OFFSETS = [timedelta(hours=48), timedelta(hours=2)]
APPOINTMENT = "6f1c1d8e-3f0a-4b59-9a51-5c8e2f9b7a10"
PATIENT = "0b7e4f5a-8c2d-4e1f-9a3b-6d5c4b3a2918"
PHONE, EMAIL = "+447400123456", "p@example.org"
EVERY_CHANNEL = {"phone": PHONE, "email": EMAIL, "sms": True, "email_ok": True}


def utc(text: str) -> datetime:
    return FixedClock(text).now()


def appointment(**changes) -> dict:
    """booking.appointment.* data as docs/architecture.md shows it."""
    return {
        "appointment_id": APPOINTMENT,
        "patient_id": PATIENT,
        "clinician_id": "c0ffee00-0000-4000-8000-000000000001",
        "clinician_name": "Dr Amira Shah",
        "treatment": {"code": "TPI", "name": "Ultrasound-guided trigger point injection",
                      "requires_consent": True},
        "starts_at": "2026-11-30T10:00:00Z",
        "ends_at": "2026-11-30T10:30:00Z",
        "status": "booked",
        "first_appointment": True,
        "contact": dict(EVERY_CHANNEL),
        **changes,
    }


def summary(messages) -> list[tuple[str, str, str]]:
    return [(m.kind, m.channel, m.due_at.isoformat()) for m in messages]


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        (EVERY_CHANNEL, [("sms", PHONE), ("email", EMAIL)]),
        ({**EVERY_CHANNEL, "sms": False}, [("email", EMAIL)]),
        ({**EVERY_CHANNEL, "email_ok": False}, [("sms", PHONE)]),
        ({**EVERY_CHANNEL, "phone": None}, [("email", EMAIL)]),
        ({**EVERY_CHANNEL, "email": ""}, [("sms", PHONE)]),
        ({"phone": PHONE, "email": EMAIL, "sms": False, "email_ok": False}, []),
        ({}, []),
    ],
)
def test_messages_go_only_where_the_patient_agreed_and_can_be_reached(contact, expected):
    assert channels_for(contact) == expected


def test_booked_plans_a_confirmation_now_and_reminders_on_each_channel():
    clock = FixedClock("2026-11-20T12:00:00Z")
    planned = plan_booked(appointment(), clock.now(), OFFSETS, NIGHT, LONDON)
    assert summary(planned) == [
        ("confirmation", "sms", "2026-11-20T12:00:00+00:00"),
        ("confirmation", "email", "2026-11-20T12:00:00+00:00"),
        ("reminder", "sms", "2026-11-28T10:00:00+00:00"),
        ("reminder", "email", "2026-11-28T10:00:00+00:00"),
        ("reminder", "sms", "2026-11-30T08:00:00+00:00"),
        ("reminder", "email", "2026-11-30T08:00:00+00:00"),
    ]
    assert {m.to for m in planned if m.channel == "sms"} == {PHONE}
    assert {m.to for m in planned if m.channel == "email"} == {EMAIL}
    assert {(m.appointment_id, m.patient_id) for m in planned} == {(APPOINTMENT, PATIENT)}


def test_the_context_holds_what_the_texts_need_and_no_patient_details():
    clock = FixedClock("2026-11-20T12:00:00Z")
    confirmation = plan_booked(appointment(), clock.now(), OFFSETS, NIGHT, LONDON)[0]
    assert confirmation.context == {
        "treatment_name": "Ultrasound-guided trigger point injection",
        "clinician_name": "Dr Amira Shah",
        "starts_at": utc("2026-11-30T10:00:00Z"),
    }


def test_planning_the_same_booking_twice_gives_the_same_keys():
    clock = FixedClock("2026-11-20T12:00:30Z")
    first = plan_booked(appointment(), clock.now(), OFFSETS, NIGHT, LONDON)
    clock.advance(timedelta(seconds=20))
    again = plan_booked(appointment(), clock.now(), OFFSETS, NIGHT, LONDON)
    assert [m.dedupe_key for m in first] == [m.dedupe_key for m in again]
    assert len({m.dedupe_key for m in first}) == len(first)
    assert first[0].dedupe_key == f"{APPOINTMENT}:confirmation:sms:20261120T1200"


def test_booked_without_consent_plans_nothing():
    clock = FixedClock("2026-11-20T12:00:00Z")
    data = appointment(contact={"phone": PHONE, "email": EMAIL, "sms": False, "email_ok": False})
    assert plan_booked(data, clock.now(), OFFSETS, NIGHT, LONDON) == []


def test_booked_the_same_day_skips_the_reminder_already_past():
    clock = FixedClock("2026-11-30T07:00:00Z")
    data = appointment(contact={"phone": PHONE, "sms": True})
    assert summary(plan_booked(data, clock.now(), OFFSETS, NIGHT, LONDON)) == [
        ("confirmation", "sms", "2026-11-30T07:00:00+00:00"),
        ("reminder", "sms", "2026-11-30T08:00:00+00:00"),
    ]


def test_an_event_handled_after_the_start_plans_nothing():
    clock = FixedClock("2026-11-30T10:00:00Z")
    assert plan_booked(appointment(), clock.now(), OFFSETS, NIGHT, LONDON) == []
    assert plan_rescheduled(appointment(), clock.now(), OFFSETS, NIGHT, LONDON) == []
    assert plan_cancelled(appointment(), clock.now()) == []


def test_rescheduled_tells_the_patient_now_and_plans_reminders_for_the_new_time():
    clock = FixedClock("2026-11-20T12:00:00Z")
    data = appointment(
        starts_at="2026-12-02T14:00:00Z",
        previous_starts_at="2026-11-30T10:00:00Z",
        contact={"phone": PHONE, "sms": True},
    )
    planned = plan_rescheduled(data, clock.now(), OFFSETS, NIGHT, LONDON)
    assert summary(planned) == [
        ("rescheduled", "sms", "2026-11-20T12:00:00+00:00"),
        ("reminder", "sms", "2026-11-30T14:00:00+00:00"),
        ("reminder", "sms", "2026-12-02T12:00:00+00:00"),
    ]
    assert planned[0].context["previous_starts_at"] == utc("2026-11-30T10:00:00Z")
    assert planned[0].context["starts_at"] == utc("2026-12-02T14:00:00Z")


def test_a_new_clinician_at_the_same_time_has_no_previous_time():
    clock = FixedClock("2026-11-20T12:00:00Z")
    planned = plan_rescheduled(appointment(), clock.now(), OFFSETS, NIGHT, LONDON)
    assert planned[0].context["previous_starts_at"] is None


def test_cancelled_tells_the_patient_on_each_channel_and_keeps_who_cancelled():
    clock = FixedClock("2026-11-20T12:00:00Z")
    data = appointment(status="cancelled", reason="Clinician unwell", cancelled_by="patient")
    planned = plan_cancelled(data, clock.now())
    assert summary(planned) == [
        ("cancelled", "sms", "2026-11-20T12:00:00+00:00"),
        ("cancelled", "email", "2026-11-20T12:00:00+00:00"),
    ]
    assert planned[0].context["cancelled_by"] == "patient"
    assert planned[0].context["reason"] == "Clinician unwell"


def test_cancelled_without_saying_who_reads_as_the_clinic():
    clock = FixedClock("2026-11-20T12:00:00Z")
    assert plan_cancelled(appointment(), clock.now())[0].context["cancelled_by"] == "reception"


def form_sent(**changes) -> dict:
    return {
        "form_id": "f0f0f0f0-1111-4222-8333-444455556666",
        "appointment_id": APPOINTMENT,
        "patient_id": PATIENT,
        "url": "https://forms.example.org/f/abc",
        "appointment_starts_at": "2026-11-30T10:00:00Z",
        "contact": dict(EVERY_CHANNEL),
        **changes,
    }


def test_a_form_link_goes_now_by_sms_and_email_with_a_nudge_a_day_before():
    clock = FixedClock("2026-11-20T12:00:00Z")
    planned = plan_form_sent(form_sent(), clock.now(), NIGHT, LONDON)
    assert summary(planned) == [
        ("form_link", "sms", "2026-11-20T12:00:00+00:00"),
        ("form_link", "email", "2026-11-20T12:00:00+00:00"),
        ("form_nudge", "sms", "2026-11-29T10:00:00+00:00"),
        ("form_nudge", "email", "2026-11-29T10:00:00+00:00"),
    ]
    assert planned[0].context == {
        "url": "https://forms.example.org/f/abc",
        "starts_at": utc("2026-11-30T10:00:00Z"),
    }
    assert planned[0].dedupe_key.startswith("f0f0f0f0-1111-4222-8333-444455556666:form_link:")


def test_the_form_nudge_moves_out_of_quiet_hours():
    clock = FixedClock("2026-11-20T12:00:00Z")
    data = form_sent(appointment_starts_at="2026-11-30T07:30:00Z")
    nudges = [m for m in plan_form_sent(data, clock.now(), NIGHT, LONDON) if m.kind == "form_nudge"]
    assert {m.due_at for m in nudges} == {utc("2026-11-29T08:00:00Z")}


def test_a_form_sent_on_the_day_gets_no_nudge():
    clock = FixedClock("2026-11-30T08:00:00Z")
    planned = plan_form_sent(form_sent(), clock.now(), NIGHT, LONDON)
    assert {m.kind for m in planned} == {"form_link"}


def followup(**changes) -> dict:
    return {
        "followup_id": "a1a1a1a1-2222-4333-8444-555566667777",
        "appointment_id": APPOINTMENT,
        "patient_id": PATIENT,
        "kind": "checkin",
        "due_at": "2026-12-14T10:00:00Z",
        "treatment": {"code": "TPI", "name": "Ultrasound-guided trigger point injection"},
        "contact": dict(EVERY_CHANNEL),
        **changes,
    }


def test_the_checkin_goes_by_sms_at_its_time():
    clock = FixedClock("2026-11-30T11:00:00Z")
    planned = plan_followup(followup(), clock.now(), NIGHT, LONDON)
    assert summary(planned) == [("checkin", "sms", "2026-12-14T10:00:00+00:00")]
    assert planned[0].context == {"treatment_name": "Ultrasound-guided trigger point injection",
                                  "followup_id": followup()["followup_id"]}


def test_the_checkin_goes_by_email_to_a_patient_without_sms():
    clock = FixedClock("2026-11-30T11:00:00Z")
    data = followup(contact={**EVERY_CHANNEL, "sms": False})
    assert summary(plan_followup(data, clock.now(), NIGHT, LONDON)) == [
        ("checkin", "email", "2026-12-14T10:00:00+00:00")
    ]


def test_a_checkin_due_at_night_waits_for_the_morning():
    clock = FixedClock("2026-11-30T11:00:00Z")
    data = followup(due_at="2026-12-14T22:15:00Z")
    assert summary(plan_followup(data, clock.now(), NIGHT, LONDON)) == [
        ("checkin", "sms", "2026-12-15T08:00:00+00:00")
    ]


def test_a_checkin_handled_late_goes_now_within_a_week_and_not_after():
    clock = FixedClock("2026-12-16T12:00:00Z")
    assert summary(plan_followup(followup(), clock.now(), NIGHT, LONDON)) == [
        ("checkin", "sms", "2026-12-16T12:00:00+00:00")
    ]
    clock.set("2026-12-21T10:00:00Z")
    assert plan_followup(followup(), clock.now(), NIGHT, LONDON) == []


def missed_call(**changes) -> dict:
    """`booking.call.missed` as booking publishes it (no caller number: the contact's)."""
    return {"call_id": "call-42", "patient_id": PATIENT, "at": "2026-11-30T11:58:00Z",
            "contact": {"phone": PHONE, "email": None, "sms": True, "email_ok": False},
            **changes}


def test_a_missed_call_from_a_patient_gets_a_text_now():
    clock = FixedClock("2026-11-30T12:00:00Z")
    planned = plan_missed_call(missed_call(), clock.now(), last_sent_to_patient=None)
    assert summary(planned) == [("missed_call", "sms", "2026-11-30T12:00:00+00:00")]
    assert (planned[0].to, planned[0].patient_id, planned[0].appointment_id) == (
        PHONE, PATIENT, None
    )
    assert planned[0].dedupe_key == "call-42:missed_call:sms:20261130T1200"


def test_a_missed_call_from_a_patient_who_declined_sms_gets_nothing():
    clock = FixedClock("2026-11-30T12:00:00+00:00")
    declined = missed_call(contact={"phone": "+447400123456", "sms": False, "email_ok": True})
    assert plan_missed_call(declined, clock.now(), None) == []


def test_a_missed_call_from_an_unknown_number_gets_nothing():
    clock = FixedClock("2026-11-30T12:00:00Z")
    assert plan_missed_call(missed_call(patient_id=None, contact=None), clock.now(), None) == []


def test_a_missed_call_without_a_contact_is_no_consent_to_text():
    clock = FixedClock("2026-11-30T12:00:00Z")
    assert plan_missed_call(missed_call(contact=None), clock.now(), None) == []
    assert plan_missed_call({k: v for k, v in missed_call().items() if k != "contact"},
                            clock.now(), None) == []


@pytest.mark.parametrize(
    ("last_sent", "texts"),
    [("2026-11-30T11:30:00Z", 0), ("2026-11-30T11:00:01Z", 0), ("2026-11-30T11:00:00Z", 1),
     ("2026-11-29T12:00:00Z", 1)],
)
def test_at_most_one_missed_call_text_an_hour(last_sent, texts):
    clock = FixedClock("2026-11-30T12:00:00Z")
    assert len(plan_missed_call(missed_call(), clock.now(), utc(last_sent))) == texts
