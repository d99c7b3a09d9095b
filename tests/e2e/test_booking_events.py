"""Booking as deployed: gunicorn and `clinic worker booking` as processes, events seen by pika."""
from __future__ import annotations

import uuid

from tests.e2e.stack import personal_details, slots, utc_rfc3339

APPOINTMENT_EVENTS = ("booking.appointment.booked", "booking.appointment.rescheduled",
                      "booking.appointment.cancelled")


def test_reception_books_reschedules_and_cancels_and_each_change_is_announced(booking, watcher):
    booking.clinic.worker()
    patient = booking.api.register_patient()
    first, later = slots(2)
    appointment = booking.api.book(patient["id"], booking.clinician_id, first)
    assert appointment["status"] == "booked"
    booking.api.reschedule(appointment["id"], later)
    cancelled = booking.api.cancel(appointment["id"], "Patient unwell")
    assert cancelled["status"] == "cancelled"

    received = watcher.wait_for(
        lambda got: len([r for r in got if r.json().get("subject") == appointment["id"]]) >= 3,
        timeout=20, what="three events about the appointment")
    ours = [r for r in received if r.json().get("subject") == appointment["id"]]
    assert [r.routing_key for r in ours] == list(APPOINTMENT_EVENTS)

    for message in ours:
        assert message.content_type == "application/cloudevents+json"
        event = message.json()
        assert event["specversion"] == "1.0"
        assert str(uuid.UUID(event["id"])) == event["id"]
        assert message.message_id == event["id"]
        assert event["source"] == "/booking"
        assert event["type"] == message.routing_key
        utc_rfc3339(event["time"])
        assert event["subject"] == appointment["id"]
        assert event["datacontenttype"] == "application/json"
        data = event["data"]
        assert data["appointment_id"] == appointment["id"]
        assert data["patient_id"] == patient["id"]
        assert data["clinician_id"] == booking.clinician_id
        assert data["treatment"]["code"] == "TPI"
        utc_rfc3339(data["starts_at"])
        body = message.body.decode()
        for personal in ("Eleanor", "Whitcombe", "1961-03-14", "Lamplighters", "BS8 1QU",
                         "Bristol", "date_of_birth", "given_name", "family_name", "address"):
            assert personal not in body, f"{personal!r} leaked into {event['type']}"

    booked, rescheduled, cancelled_event = (r.json()["data"] for r in ours)
    assert utc_rfc3339(booked["starts_at"]) == first
    assert utc_rfc3339(rescheduled["starts_at"]) == later
    assert utc_rfc3339(rescheduled["previous_starts_at"]) == first
    assert cancelled_event["reason"] == "Patient unwell"
    assert cancelled_event["cancelled_by"] == "reception"
    assert len({r.event_id for r in ours}) == 3

    # Logs carry ids, never the patient's details (issue 3): every process's whole log,
    # read once they have stopped, so nothing is still to be written.
    booking.clinic.stop_all()
    assert booking.clinic.logs_containing(personal_details(patient)) == []
