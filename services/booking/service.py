"""Booking's use cases: each runs in one unit of work and adds its event to the outbox there,
so the change and its announcement commit together or not at all."""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from services.booking import model
from services.booking.db import BookingUnitOfWork, local_day_bounds
from services.booking.model import Appointment, Clinician, Slot
from services.booking.model.records import Patient, PatientContact
from shared.db import request_fingerprint
from shared.errors import Conflict, Invalid, NotFound
from shared.events import Event, new_event
from shared.logging import get_logger

SOURCE = "/booking"
log = get_logger("booking.service")


def _replayed_id(uow: BookingUnitOfWork, scope: str, key: str | None, request: Any):
    if not key:
        return None
    replay = uow.idempotency.claim(scope, key, request_fingerprint(request))
    return uuid.UUID(replay.body["id"]) if replay else None


def _remember(uow: BookingUnitOfWork, scope: str, key: str | None, created_id) -> None:
    if key:
        uow.idempotency.record(scope, key, 201, {"id": str(created_id)})


def register_patient(uow: BookingUnitOfWork, fields: dict, tz: ZoneInfo,
                     key: str | None = None) -> Patient:
    try:
        model.check_date_of_birth(fields["date_of_birth"], uow.clock.now().astimezone(tz).date())
    except ValueError as error:
        raise Invalid("Invalid date of birth", {"date_of_birth": [str(error)]}) from error
    with uow:
        existing = _replayed_id(uow, "patients", key, fields)
        if existing:
            return uow.patients.get(existing)
        patient = Patient.from_fields(uuid.uuid4(), fields)
        uow.patients.add(patient)
        _remember(uow, "patients", key, patient.id)
        uow.commit()
    return patient


def add_clinician(uow: BookingUnitOfWork, name: str, working_hours: list[dict],
                  key: str | None = None) -> Clinician:
    request = {"name": name, "working_hours": working_hours}
    with uow:
        existing = _replayed_id(uow, "clinicians", key, request)
        if existing:
            return uow.clinicians.get(existing)
        clinician = Clinician(uuid.uuid4(), name, model.parse_working_hours(working_hours))
        uow.clinicians.add(clinician)
        _remember(uow, "clinicians", key, clinician.id)
        uow.commit()
    return clinician


def free_slots(uow: BookingUnitOfWork, clinician_id: uuid.UUID, treatment_code: str,
               day: date, tz: ZoneInfo) -> list[Slot]:
    with uow:
        clinician = _clinician(uow, clinician_id)
        treatment = _treatment(uow, treatment_code)
        start, end = local_day_bounds(day, tz)
        taken = uow.appointments.taken(clinician_id, start, end)
    return model.free_slots(clinician, treatment, day, tz, taken, uow.clock.now())


def book_appointment(uow: BookingUnitOfWork, patient_id: uuid.UUID, clinician_id: uuid.UUID,
                     treatment_code: str, starts_at: datetime, tz: ZoneInfo,
                     key: str | None = None) -> Mapping[str, Any]:
    """The appointment as reception sees it (AppointmentOut), built from what was written:
    answering needs no second transaction to read it back.

    On PostgreSQL a booking without an Idempotency-Key first tries a read and then one
    statement that writes the appointment and its event (`book_at_once`): two round trips
    where a transaction takes five. That statement checks for an overlap in the snapshot it
    started with, before it waits for the clinician's diary, so it only decides the
    uncontended case: a time it finds taken, or loses to a booking made while it waited, is
    decided again by the transaction, which holds the diary before it looks (a slot being
    freed by a reschedule is then booked, not refused). With a key, the key is claimed first,
    in one transaction with the booking, so that a retry arriving meanwhile waits for the
    answer; SQLite always takes the transaction (one writer).
    """
    if key is None and uow.engine.dialect.name == "postgresql":
        written = _book_at_once(uow, patient_id, clinician_id, treatment_code, starts_at, tz)
        if written is not None:
            return written
    # The instant, not how it was written: a retry giving 09:00Z for 10:00+01:00 is the
    # same request, and gets the same answer.
    request = {"patient_id": patient_id, "clinician_id": clinician_id,
               "treatment_code": treatment_code,
               "starts_at": model.clinic_time.as_utc(starts_at).isoformat()}
    with uow:
        existing = _replayed_id(uow, "appointments", key, request)
        if existing:
            return uow.appointments.view(existing)
        parties = uow.appointments.booking_parties(patient_id, clinician_id, treatment_code,
                                                   hold_diary=True)
        booking = _new_booking(uow, parties, patient_id, starts_at, tz)
        # Taken before the outbox row, so one appointment's events follow commit order.
        written = _insert(uow, booking.appointment, booking.intake_form_status)
        uow.outbox.add(booking.event)
        _remember(uow, "appointments", key, booking.appointment.id)
        uow.commit()
    return written


# What ends the one-statement attempt without an answer: a booking committed while it
# waited for the diary (the exclusion constraint refuses the overlap), or a deadlock with
# a write that does not take the diary (marking a neighbouring appointment attended).
_CONTENDED = frozenset({"23P01", "40P01"})   # exclusion_violation, deadlock_detected


def _book_at_once(uow: BookingUnitOfWork, patient_id: uuid.UUID, clinician_id: uuid.UUID,
                  treatment_code: str, starts_at: datetime, tz: ZoneInfo
                  ) -> Mapping[str, Any] | None:
    """The booking written in one statement; None, with nothing written, when the time looked
    taken or the statement lost a race: the transactional path then decides."""
    with uow.one_statement_at_a_time() as appointments:
        parties = appointments.booking_parties(patient_id, clinician_id, treatment_code)
        booking = _new_booking(uow, parties, patient_id, starts_at, tz)
        try:
            return appointments.book_at_once(booking.appointment, booking.intake_form_status,
                                             uow.outbox_parameters(booking.event))
        except sa.exc.DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) in _CONTENDED:
                return None
            raise


@dataclass(frozen=True)
class _NewBooking:
    appointment: Appointment
    intake_form_status: str
    event: Event


def _new_booking(uow: BookingUnitOfWork, parties, patient_id: uuid.UUID, starts_at: datetime,
                 tz: ZoneInfo) -> _NewBooking:
    """What booking these parties at `starts_at` writes: the appointment, its intake form's
    status and its event. Invalid when the request names what is not there, or a time that
    cannot be booked."""
    patient, clinician, treatment = parties.patient, parties.clinician, parties.treatment
    errors = {}
    if patient is None:
        errors["patient_id"] = ["no such patient"]
    if clinician is None:
        errors["clinician_id"] = ["no such clinician"]
    if treatment is None:
        errors["treatment_code"] = ["no such treatment"]
    if errors:
        raise Invalid("Unknown patient, clinician or treatment", errors)
    slot = model.check_bookable(clinician, treatment, starts_at, tz, uow.clock.now())
    first = not parties.booked_before
    appointment = Appointment(uuid.uuid4(), patient_id, clinician.id, treatment.code,
                              slot.starts_at, slot.ends_at)
    needs_form = first or treatment.requires_consent
    event = _appointment_event(uow, "booking.appointment.booked", appointment, patient,
                               clinician, treatment, first_appointment=first)
    return _NewBooking(appointment, "sent" if needs_form else "not_required", event)


def _ensure_free(uow: BookingUnitOfWork, clinician_id, slot: Slot, excluding=None) -> None:
    if uow.appointments.taken(clinician_id, slot.starts_at, slot.ends_at, excluding):
        raise _slot_taken()


def _slot_taken() -> Conflict:
    return Conflict("That time is already booked for this clinician",
                    {"starts_at": ["slot is taken"]})


def _is_clash(error: sa.exc.IntegrityError) -> bool:
    """The exclusion constraint refusing an overlap (409). Any other refusal (a check, a
    foreign key) is no clash of the patient's and is not reported as one."""
    return getattr(error.orig, "sqlstate", None) == "23P01"   # exclusion_violation


def _insert(uow: BookingUnitOfWork, appointment: Appointment, form_status: str) -> dict:
    """No savepoint: a refused insert ends the whole booking, whose transaction is then
    rolled back (the Idempotency-Key claim with it, so a retry is judged afresh)."""
    try:
        written = uow.appointments.add_if_free(appointment, form_status)
    except sa.exc.IntegrityError as error:  # PostgreSQL's exclusion constraint, under a race
        if _is_clash(error):
            raise _slot_taken() from error
        raise
    if written is None:
        raise _slot_taken()
    return written


def reschedule_appointment(uow: BookingUnitOfWork, appointment_id: uuid.UUID,
                           starts_at: datetime, tz: ZoneInfo,
                           clinician_id: uuid.UUID | None = None) -> Appointment:
    with uow:
        appointment = _appointment(uow, appointment_id)
        clinician = _clinician(uow, clinician_id or appointment.clinician_id)
        treatment = _treatment(uow, appointment.treatment_code)
        slot = model.check_bookable(clinician, treatment, starts_at, tz, uow.clock.now())
        uow.appointments.hold_diary(clinician.id)
        _ensure_free(uow, clinician.id, slot, excluding=appointment.id)
        previous = appointment.starts_at
        if not appointment.reschedule(slot, clinician.id):
            return appointment      # already there: nothing written, nothing announced
        try:
            with uow.connection.begin_nested():
                uow.appointments.update(appointment)
        except sa.exc.IntegrityError as error:
            if _is_clash(error):
                raise _slot_taken() from error
            raise
        patient = uow.patients.get(appointment.patient_id)
        uow.outbox.add(_appointment_event(
            uow, "booking.appointment.rescheduled", appointment, patient, clinician, treatment,
            previous_starts_at=_iso(previous)))
        uow.commit()
    return appointment


def _transition(uow: BookingUnitOfWork, appointment_id: uuid.UUID, event_type: str,
                change, followup_tz: ZoneInfo | None = None, **extra) -> Appointment:
    with uow:
        appointment = _appointment(uow, appointment_id)
        if change(appointment) is False:
            return appointment  # nothing changed, so nothing to announce
        uow.appointments.update(appointment)
        uow.outbox.add(_appointment_event(
            uow, event_type, appointment, uow.patients.get(appointment.patient_id),
            uow.clinicians.get(appointment.clinician_id),
            uow.treatments.get(appointment.treatment_code), **extra))
        if followup_tz is not None:
            _plan_followup(uow, appointment, followup_tz)
        uow.commit()
    return appointment


def cancel_appointment(uow, appointment_id, reason: str, by: str = "reception") -> Appointment:
    return _transition(uow, appointment_id, "booking.appointment.cancelled",
                       lambda a: a.cancel(reason, by), reason=reason, cancelled_by=by)


def confirm_appointment(uow, appointment_id) -> Appointment:
    return _transition(uow, appointment_id, "booking.appointment.confirmed",
                       lambda a: a.confirm())


def mark_attended(uow, appointment_id, tz: ZoneInfo) -> Appointment:
    now = uow.clock.now()
    return _transition(uow, appointment_id, "booking.appointment.attended",
                       lambda a: a.mark_attended(now, tz), followup_tz=tz)


def mark_no_show(uow, appointment_id) -> Appointment:
    now = uow.clock.now()
    return _transition(uow, appointment_id, "booking.appointment.no_show",
                       lambda a: a.mark_no_show(now))


def _plan_followup(uow: BookingUnitOfWork, appointment: Appointment, tz: ZoneInfo) -> None:
    """One injection first, more only if it helped: the check-in asks how the pain is."""
    treatment = uow.treatments.get(appointment.treatment_code)
    due = model.followup_due(treatment, appointment.starts_at, tz)
    if due is None:
        return
    followup_id = uow.followups.add(appointment.id, appointment.patient_id,
                                    treatment.followup.kind, due)
    if followup_id is None:
        return
    patient = uow.patients.get(appointment.patient_id)
    uow.outbox.add(new_event(SOURCE, "booking.followup.scheduled", appointment.id, {
        "followup_id": str(followup_id), "appointment_id": str(appointment.id),
        "patient_id": str(appointment.patient_id), "kind": treatment.followup.kind,
        "due_at": _iso(due), "treatment": _treatment_json(treatment),
        "contact": _contact(patient),
    }, uow.clock))


def _appointment_event(uow, event_type, appointment, patient, clinician, treatment, **extra):
    data = {
        "appointment_id": str(appointment.id), "patient_id": str(appointment.patient_id),
        "clinician_id": str(appointment.clinician_id), "clinician_name": clinician.name,
        "treatment": _treatment_json(treatment),
        "starts_at": _iso(appointment.starts_at), "ends_at": _iso(appointment.ends_at),
        "status": appointment.status, "contact": _contact(patient), **extra,
    }
    return new_event(SOURCE, event_type, appointment.id, data, uow.clock)


def _treatment_json(treatment) -> dict:
    return {"code": treatment.code, "name": treatment.name,
            "requires_consent": treatment.requires_consent}


def _contact(patient: Patient | PatientContact) -> dict:
    """The contact channel only: what notify needs to reach the patient, nothing more."""
    return {"phone": patient.phone, "email": patient.email, "sms": patient.consent_sms,
            "email_ok": patient.consent_email and bool(patient.email)}


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def apply_patient_reply(uow: BookingUnitOfWork, event) -> None:
    """A patient's YES or NO applies to the appointment the text they answered was about
    (notify names it), if that is still booked and has not begun, and otherwise to nothing;
    other intents are notify's. Without that name,
    to the next appointment of the one patient with that number, and to nothing when several
    share it: cancelling a child's appointment on the parent's NO is worse than a NO missed,
    which reception hears about anyway."""
    intent = event.data.get("intent")
    with uow:
        if not uow.processed.add("booking.patient_reply", event.id):
            return
        if intent == "score":
            _record_pain_score(uow, event.data)
        if intent not in ("confirm", "cancel"):
            uow.commit()
            return
        target = _answered_appointment(uow, event.data)
        if target is not None:
            appointment = uow.appointments.get(target.id, for_update=True)
            if model.still_answerable(appointment, uow.clock.now()):
                event_type = "booking.appointment.confirmed"
                extra = {}
                if intent == "confirm":
                    changed = appointment.confirm()
                else:
                    appointment.cancel("Cancelled by patient reply", "patient")
                    changed, event_type = True, "booking.appointment.cancelled"
                    extra = {"reason": "Cancelled by patient reply", "cancelled_by": "patient"}
                if changed:
                    uow.appointments.update(appointment)
                    uow.outbox.add(_appointment_event(
                        uow, event_type, appointment, uow.patients.get(appointment.patient_id),
                        uow.clinicians.get(appointment.clinician_id),
                        uow.treatments.get(appointment.treatment_code), **extra))
        uow.commit()


def _record_pain_score(uow: BookingUnitOfWork, data: dict) -> None:
    """A number texted back after a check-in (notify names its follow-up): kept with the
    follow-up for reception. A score that answers no check-in is kept nowhere."""
    followup_id, score = _uuid_or_none(data.get("followup_id")), data.get("score")
    if followup_id is None or type(score) is not int or not 0 <= score <= 10:
        return
    if uow.followups.record_score(followup_id, _uuid_or_none(data.get("patient_id")), score,
                                  uow.clock.now()):
        log.info("followup.scored", followup_id=str(followup_id))


def _answered_appointment(uow: BookingUnitOfWork, data: dict) -> Appointment | None:
    named = _uuid_or_none(data.get("appointment_id"))
    if named is not None:
        appointment = uow.appointments.get(named)
        patient_id = _uuid_or_none(data.get("patient_id"))
        if appointment is None or (patient_id and appointment.patient_id != patient_id):
            return None
        if appointment.is_active:
            return appointment          # answered, if it has not begun (still_answerable)
        # Cancelled, attended or missed since the text: not applied to another appointment
        # (a NO for a visit just missed would cancel the next one).
        log.info("reply.about_a_finished_appointment", appointment_id=str(appointment.id))
        return None
    patients = _patients_for_reply(uow, data)
    if len(patients) != 1:
        if patients:
            log.info("reply.ambiguous", patients=len(patients))
        return None
    return model.next_appointment_for_reply(uow.appointments.for_patient(patients[0].id),
                                            uow.clock.now())


def _uuid_or_none(value) -> uuid.UUID | None:
    """An id from the event, or None when it has none. A malformed one raises: the event is
    retried and then parked with its reason, for an engineer, rather than quietly dropped."""
    return uuid.UUID(value) if value else None


def _patients_for_reply(uow: BookingUnitOfWork, data: dict) -> list[Patient]:
    patient_id = _uuid_or_none(data.get("patient_id"))
    if patient_id:
        patient = uow.patients.get(patient_id)
        return [patient] if patient else []
    phone = data.get("phone")
    return uow.patients.with_phone(phone) if phone else []


def record_intake_form(uow: BookingUnitOfWork, event, status: str) -> None:
    """Reception's list shows each appointment's intake form state, learnt from forms."""
    with uow:
        if not uow.processed.add(f"booking.intake_form.{status}", event.id):
            return
        appointment_id = event.data.get("appointment_id")
        if appointment_id:
            uow.appointments.set_intake_form_status(uuid.UUID(appointment_id), status)
        uow.commit()


def _as_e164(number: str) -> str:
    """A caller's number as patients' numbers are stored, so "07400 123456" finds its
    patient; one that cannot be read is kept as given (it then matches no patient)."""
    try:
        return model.normalise_phone(number) if number else number
    except ValueError:
        return number


def record_phone_call(uow: BookingUnitOfWork, call: dict) -> bool:
    """A missed call from a known number becomes `booking.call.missed`; repeats of the same
    webhook (the phone system retries) are recorded once. True when newly recorded."""
    with uow:
        caller = _as_e164(call.get("from") or "")
        patients = uow.patients.with_phone(caller) if caller else []
        patient = patients[0] if patients else None
        if not uow.calls.record(call["call_id"], call["event"],
                                patient.id if patient else None, call["at"]):
            return False
        if call["event"] == "call.missed":
            uow.outbox.add(new_event(SOURCE, "booking.call.missed", call["call_id"], {
                "call_id": call["call_id"], "patient_id": str(patient.id) if patient else None,
                "at": _iso(call["at"]),
                "contact": _contact(patient) if patient else None,
            }, uow.clock))
        uow.commit()
    return True


def day_list(uow: BookingUnitOfWork, day: date, tz: ZoneInfo, clinician_id=None):
    with uow:
        start, end = local_day_bounds(day, tz)
        return uow.appointments.between(start, end, clinician_id)


def appointment_view(uow: BookingUnitOfWork, appointment_id: uuid.UUID) -> dict:
    """The appointment as reception sees it, with its follow-ups and any pain score."""
    with uow:
        row = uow.appointments.view(appointment_id)
        if row is None:
            raise NotFound("No such appointment")
        return {**row._mapping, "followups": uow.followups.of_appointment(appointment_id)}


def _appointment(uow, appointment_id) -> Appointment:
    appointment = uow.appointments.get(appointment_id, for_update=True)
    if appointment is None:
        raise NotFound("No such appointment")
    return appointment


def _clinician(uow, clinician_id) -> Clinician:
    clinician = uow.clinicians.get(clinician_id)
    if clinician is None:
        raise Invalid("Unknown clinician", {"clinician_id": ["no such clinician"]})
    return clinician


def _treatment(uow, code):
    treatment = uow.treatments.get(code)
    if treatment is None:
        raise Invalid("Unknown treatment", {"treatment_code": ["no such treatment"]})
    return treatment

