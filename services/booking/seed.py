"""`clinic seed-demo`: the demo clinic's clinicians, menu, a few patients and appointments.

Safe to run on every `make run`: clinicians and treatments are upserted by fixed ids, and
patients and appointments go through the same use cases as reception, with Idempotency-Keys.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta

from services.booking import service
from services.booking.model import DEMO_CLINICIANS, DEMO_TREATMENTS
from shared.errors import ClinicError

DEMO_PATIENTS = [
    {"given_name": "Alice", "family_name": "Demo", "date_of_birth": date(1968, 4, 12),
     "phone": "+447400123456", "email": "alice.demo@example.org",
     "address": {"line1": "1 Harbour Road", "line2": None, "city": "Bristol",
                 "postcode": "BS1 5TR"},
     "gp": {"name": "Dr Patel", "practice": "Harbourside Surgery",
            "address": "3 Quay Street, Bristol BS1 4DB", "phone": "+441179000001"},
     "consent": {"sms": True, "email": True}},
    {"given_name": "Bob", "family_name": "Demo", "date_of_birth": date(1981, 9, 30),
     "phone": "+447400654321", "email": None,
     "address": {"line1": "22 Park Row", "line2": "Flat 3", "city": "Bristol",
                 "postcode": "BS1 5LJ"},
     "gp": None, "consent": {"sms": True, "email": False}},
]


def seed_demo_clinic(context) -> str:
    uow = context.uow()
    with uow:
        for treatment in DEMO_TREATMENTS:
            uow.treatments.save(treatment)
        for clinician in DEMO_CLINICIANS:
            uow.clinicians.save(clinician)
        uow.commit()
    patients = [service.register_patient(context.uow(), fields, context.tz, f"demo-patient-{n}")
                for n, fields in enumerate(DEMO_PATIENTS)]
    booked = 0
    day = _next_weekday(context.clock.now().astimezone(context.tz).date() + timedelta(days=1))
    plan = [(patients[0], DEMO_CLINICIANS[0], DEMO_TREATMENTS[0].code, time(10, 0)),
            (patients[1], DEMO_CLINICIANS[1], "POD-ASSESS", time(11, 0))]
    for patient, clinician, code, at in plan:
        starts_at = datetime.combine(day, at, context.tz)
        try:
            service.book_appointment(context.uow(), patient.id, clinician.id, code, starts_at,
                                     context.tz, f"demo-appointment-{patient.id}-{day}")
            booked += 1
        except ClinicError:
            pass  # the slot is taken or the clinic is closed then: a demo can live with that
    return (f"demo clinic: {len(DEMO_TREATMENTS)} treatments, {len(DEMO_CLINICIANS)} "
            f"clinicians, {len(patients)} patients, {booked} appointments on {day}")


def _next_weekday(day: date) -> date:
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day
