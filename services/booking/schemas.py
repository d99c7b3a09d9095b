"""Request and response shapes of booking's API (marshmallow 4; unknown fields refused)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date

import idna
from flask import current_app
from marshmallow import Schema, ValidationError, fields, pre_load, validate

from services.booking.model import (
    APPOINTMENT_STATUSES,
    CANCELLED_BY,
    INTAKE_FORM_STATUSES,
    normalise_phone,
    normalise_postcode,
)

HHMM = validate.Regexp(r"^([01]\d|2[0-3]):[0-5]\d$", error="time must be HH:MM (24-hour)")


class Phone(fields.String):
    """A UK (or international) phone number, stored as E.164."""

    def _deserialize(self, value, attr, data, **kwargs):
        raw = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalise_phone(raw)
        except ValueError as error:
            raise ValidationError(str(error)) from error


class Text(fields.String):
    """Text with its surrounding spaces trimmed before it is judged, so a name of "   " is
    refused as empty instead of being stored as ""."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).strip()


class EmailAddress(fields.Email):
    """An address the clinic's mail can reach. A domain in another script is kept in its
    ASCII (IDNA) form; accented letters before the @ need SMTPUTF8, which the clinic's mail
    does not speak, so such an address is refused here rather than accepted and never written
    to (notify would fail every email to it)."""

    def _deserialize(self, value, attr, data, **kwargs):
        address = super()._deserialize(value, attr, data, **kwargs)
        local, _, domain = address.rpartition("@")
        if not local.isascii():
            raise ValidationError("letters with accents or in other scripts before the @ "
                                  "cannot be emailed; give another address")
        try:
            return f"{local}@{idna.encode(domain, uts46=True, transitional=False).decode()}"
        except idna.IDNAError as error:
            raise ValidationError("the domain after the @ is not a valid name") from error


class JsonBoolean(fields.Boolean):
    """JSON true or false only. A consent sent as 1 or "yes" is a client bug, and marshmallow's
    truthy sets cannot refuse 1 and 0 (they equal True and False in a set)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Postcode(fields.String):
    def _deserialize(self, value, attr, data, **kwargs):
        raw = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalise_postcode(raw)
        except ValueError as error:
            raise ValidationError(str(error)) from error


class ClinicTime(fields.DateTime):
    """Instants are stored in UTC and shown in clinic time, with the offset, so a reader never
    has to know which side of a clock change a date falls."""

    def __init__(self, **kwargs):
        super().__init__(format="iso", **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        tz = current_app.extensions["clinic"].tz
        return value.astimezone(tz).isoformat()


# NUL, which PostgreSQL's text cannot hold, and UTF-16 surrogates left unpaired by a JSON
# "\ud800" escape, which no UTF-8 database can encode: either would fail at the INSERT.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


class Requesting(Schema):
    """Input schemas: strings trimmed of nothing, unknown fields refused (marshmallow's RAISE),
    and text no database can store refused here, naming its field, instead of failing as a
    500 in the middle of a transaction."""

    @pre_load
    def _refuse_unstorable_text(self, data, **kwargs):
        if isinstance(data, Mapping):
            unstorable = {name: ["contains a NUL or an unpaired surrogate character"]
                          for name, value in data.items()
                          if isinstance(value, str) and _UNSTORABLE.search(value)}
            if unstorable:
                raise ValidationError(unstorable)
        return data


class AddressIn(Requesting):
    line1 = Text(required=True, validate=validate.Length(1, 200))
    line2 = fields.String(load_default=None, allow_none=True, validate=validate.Length(0, 200))
    city = Text(required=True, validate=validate.Length(1, 100))
    postcode = Postcode(required=True)


class GeneralPractitionerIn(Requesting):
    name = Text(required=True, validate=validate.Length(1, 200))
    practice = Text(required=True, validate=validate.Length(1, 200))
    address = Text(required=True, validate=validate.Length(1, 300))
    phone = Phone(required=True)


class ConsentIn(Requesting):
    sms = JsonBoolean(required=True)
    email = JsonBoolean(required=True)


class PatientIn(Requesting):
    given_name = Text(required=True, validate=validate.Length(1, 100))
    family_name = Text(required=True, validate=validate.Length(1, 100))
    date_of_birth = fields.Date(required=True)
    phone = Phone(required=True)
    email = EmailAddress(load_default=None, allow_none=True, validate=validate.Length(0, 254))
    address = fields.Nested(AddressIn, required=True)
    gp = fields.Nested(GeneralPractitionerIn, load_default=None, allow_none=True)
    consent = fields.Nested(ConsentIn, required=True)


class AddressOut(Schema):
    line1 = fields.String()
    line2 = fields.String(allow_none=True)
    city = fields.String()
    postcode = fields.String()


class GeneralPractitionerOut(Schema):
    name = fields.String()
    practice = fields.String()
    address = fields.String()
    phone = fields.String()


class ConsentOut(Schema):
    sms = fields.Boolean(attribute="consent_sms")
    email = fields.Boolean(attribute="consent_email")


class PatientConsent(fields.Nested):
    """The patient's two consents as one object (`ConsentOut`), read from the patient itself:
    documented in /openapi.json as the object it is."""

    def get_value(self, obj, attr, accessor=None, default=None):
        return obj


class PatientOut(Schema):
    id = fields.UUID()
    given_name = fields.String()
    family_name = fields.String()
    date_of_birth = fields.Date()
    phone = fields.String()
    email = fields.String(allow_none=True)
    address = fields.Nested(AddressOut)
    gp = fields.Nested(GeneralPractitionerOut, allow_none=True)
    consent = PatientConsent(ConsentOut)


class PatientQuery(Requesting):
    phone = Phone(required=True)


class WorkingHoursIn(Requesting):
    weekday = fields.Integer(required=True, strict=True, validate=validate.Range(0, 6))
    start = fields.String(required=True, validate=HHMM)
    end = fields.String(required=True, validate=HHMM)


class ClinicianIn(Requesting):
    name = Text(required=True, validate=validate.Length(1, 200))
    working_hours = fields.List(fields.Nested(WorkingHoursIn), required=True,
                                validate=validate.Length(1, 50))


class WorkingHoursOut(Schema):
    weekday = fields.Integer()
    start = fields.Time(format="%H:%M")
    end = fields.Time(format="%H:%M")


class ClinicianOut(Schema):
    id = fields.UUID()
    name = fields.String()
    working_hours = fields.List(fields.Nested(WorkingHoursOut))


class FollowUpPlanOut(Schema):
    kind = fields.String()
    days_after = fields.Integer()


class TreatmentOut(Schema):
    code = fields.String()
    name = fields.String()
    duration_minutes = fields.Integer()
    requires_consent = fields.Boolean()
    followup = fields.Nested(FollowUpPlanOut, allow_none=True)


# The years a clinic's diary can hold. Far beyond any booking, and far enough from the
# calendar's ends (year 1, 9999) that a day's bounds or a treatment's end never overflow.
FIRST_YEAR, LAST_YEAR = 1900, 9000
_DIARY_DATES = validate.Range(min=date(FIRST_YEAR, 1, 1), max=date(LAST_YEAR, 12, 31),
                              error=f"must be a date from {FIRST_YEAR} to {LAST_YEAR}")


def _in_the_diary(instant) -> bool:
    """An instant in the years the diary holds: "9999-12-31T23:50Z" plus a treatment's length,
    or "0001-01-01T00:00+05:00" in UTC, is not a date at all (a 500, before this check)."""
    if not FIRST_YEAR <= instant.year <= LAST_YEAR:
        raise ValidationError(f"must be a time from {FIRST_YEAR} to {LAST_YEAR}")
    return True


class AvailabilityQuery(Requesting):
    clinician_id = fields.UUID(required=True)
    treatment_code = fields.String(required=True, validate=validate.Length(1, 40))
    date = fields.Date(required=True, validate=_DIARY_DATES)


class SlotOut(Schema):
    starts_at = ClinicTime()
    ends_at = ClinicTime()


class AvailabilityOut(Schema):
    clinician_id = fields.UUID()
    treatment_code = fields.String()
    date = fields.Date()
    timezone = fields.String()
    slots = fields.List(fields.Nested(SlotOut))


class AppointmentIn(Requesting):
    patient_id = fields.UUID(required=True)
    clinician_id = fields.UUID(required=True)
    treatment_code = fields.String(required=True, validate=validate.Length(1, 40))
    starts_at = fields.AwareDateTime(required=True, format="iso", validate=_in_the_diary)


class RescheduleIn(Requesting):
    starts_at = fields.AwareDateTime(required=True, format="iso", validate=_in_the_diary)
    clinician_id = fields.UUID(load_default=None, allow_none=True)


class CancelIn(Requesting):
    # Who asked: "patient" when the patient phoned or came to the desk to cancel (their text
    # then says "as you asked"), "reception" when the clinic had to (it apologises).
    cancelled_by = fields.String(load_default="reception",
                                 validate=validate.OneOf(CANCELLED_BY))
    reason = Text(load_default=None, validate=validate.Length(1, 500), metadata={
        "description": "defaults to 'Cancelled by reception' or 'Cancelled at the patient's "
                       "request', as cancelled_by says"})


class AppointmentOut(Schema):
    id = fields.UUID()
    patient_id = fields.UUID()
    clinician_id = fields.UUID()
    treatment_code = fields.String()
    starts_at = ClinicTime()
    ends_at = ClinicTime()
    status = fields.String(metadata={"enum": list(APPOINTMENT_STATUSES)})
    confirmed = fields.Boolean()
    intake_form_status = fields.String(metadata={"enum": list(INTAKE_FORM_STATUSES)})
    cancel_reason = fields.String(allow_none=True)
    cancelled_by = fields.String(allow_none=True, metadata={"enum": [*CANCELLED_BY, None]})


class FollowUpOut(Schema):
    id = fields.UUID()
    kind = fields.String(metadata={"description": "checkin: how is the pain, 0-10"})
    due_at = ClinicTime()
    pain_score = fields.Integer(allow_none=True, metadata={
        "description": "the 0-10 the patient texted back to the check-in, latest answer"})
    scored_at = ClinicTime(allow_none=True)


class AppointmentDetailOut(AppointmentOut):
    """One appointment, with its follow-ups: a check-in and its answer, for reception to
    offer a review when the pain is not improving."""

    followups = fields.List(fields.Nested(FollowUpOut))


class AppointmentsQuery(Requesting):
    date = fields.Date(required=True, validate=_DIARY_DATES)
    clinician_id = fields.UUID(load_default=None)


class PhoneCallIn(Requesting):
    event = fields.String(required=True,
                          validate=validate.OneOf(["call.missed", "call.started", "call.ended"]))
    call_id = fields.String(required=True, validate=validate.Length(1, 100))
    # `from` is a Python keyword: data_key keeps the wire name.
    from_ = fields.String(data_key="from", required=True, validate=validate.Length(1, 40))
    to = fields.String(required=True, validate=validate.Length(1, 40))
    at = fields.AwareDateTime(required=True, format="iso", default_timezone=UTC,
                              validate=_in_the_diary)
