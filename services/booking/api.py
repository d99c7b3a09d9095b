"""Booking's HTTP API: parse with schemas, call a use case, answer JSON. No SQL here."""
from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import Blueprint, current_app, g, jsonify, request
from flask.views import MethodView
from marshmallow import RAISE

from services.booking import service
from services.booking.schemas import (
    AppointmentDetailOut,
    AppointmentIn,
    AppointmentOut,
    AppointmentsQuery,
    AvailabilityOut,
    AvailabilityQuery,
    CancelIn,
    ClinicianIn,
    ClinicianOut,
    PatientIn,
    PatientOut,
    PatientQuery,
    PhoneCallIn,
    RescheduleIn,
    TreatmentOut,
)
from shared.errors import Invalid, NotFound
from shared.web import (
    ApiBlueprint,
    ErrorResponse,
    json_error,
    load_json_body,
    only_for,
    protect,
    signed_by_twilio,
)

api = ApiBlueprint("booking", __name__, url_prefix="/api/v1",
                   description="Patients, clinicians, treatments, availability, appointments")
protect(api)

IDEMPOTENCY_KEY_MAX = 200  # the width of idempotency_keys.key
IDEMPOTENCY_HEADER = {"in": "header", "name": "Idempotency-Key", "required": False,
                      "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
                      "description": "Same key, same answer: a retried create makes no second row"}
SECURED = {"security": [{"bearerAuth": []}]}
# webargs ignores unknown query parameters unless told otherwise; refused, so that a misspelt
# `?clinican_id=` is an error rather than every clinician's day listed as if it were one.
QUERY = {"location": "query", "unknown": RAISE}
# Argument schemas are given as instances: given a class, webargs builds a new schema on every
# request. An instance holds no state between loads, so threads may share it.


def _context():
    return current_app.extensions["clinic"]


def _idempotency_key() -> str | None:
    """The caller's key, kept apart from every other caller's: two systems that both number
    their requests 1, 2, 3 must not be answered with each other's patient or appointment. So
    the stored key is the SHA-256 of who asked (the token's or user's name) and the key.
    Refused when too long rather than cut short: two keys sharing their first 200 characters
    would otherwise be taken for one, and one request answered with another's."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise Invalid("Idempotency-Key is too long", {
            "Idempotency-Key": [f"at most {IDEMPOTENCY_KEY_MAX} characters"]})
    if not key:
        return None
    staff = g.staff
    return hashlib.sha256(f"{staff.kind}\0{staff.name}\0{key}".encode()).hexdigest()


@api.route("/patients")
class Patients(MethodView):
    @api.doc(parameters=[IDEMPOTENCY_HEADER], **SECURED)
    @api.arguments(PatientIn())
    @api.response(201, PatientOut)
    def post(self, fields):
        """Register a patient (reception records name, date of birth, address and GP)."""
        ctx = _context()
        return service.register_patient(ctx.uow(), fields, ctx.tz, _idempotency_key())

    @api.doc(**SECURED)
    @api.arguments(PatientQuery(), **QUERY)
    @api.response(200, PatientOut(many=True))
    def get(self, query):
        """Find patients by phone number (as the phone system or reception knows it)."""
        uow = _context().uow()
        with uow:
            return uow.patients.with_phone(query["phone"])


@api.route("/patients/<uuid:patient_id>")
class PatientById(MethodView):
    @api.doc(**SECURED)
    @api.response(200, PatientOut)
    def get(self, patient_id: uuid.UUID):
        uow = _context().uow()
        with uow:
            patient = uow.patients.get(patient_id)
        if patient is None:
            raise NotFound("No such patient")
        return patient


@api.route("/clinicians")
class Clinicians(MethodView):
    @api.doc(**SECURED)
    @api.response(200, ClinicianOut(many=True))
    def get(self):
        uow = _context().uow()
        with uow:
            return uow.clinicians.list()

    @api.doc(parameters=[IDEMPOTENCY_HEADER], **SECURED)
    @only_for("admin")
    @api.arguments(ClinicianIn())
    @api.response(201, ClinicianOut)
    @api.alt_response(403, schema=ErrorResponse, description="Staff other than admin")
    def post(self, fields):
        """Add a clinician with weekly working hours in clinic time (admin only)."""
        return service.add_clinician(_context().uow(), fields["name"], fields["working_hours"],
                                     _idempotency_key())


@api.route("/treatments")
class Treatments(MethodView):
    @api.doc(**SECURED)
    @api.response(200, TreatmentOut(many=True))
    def get(self):
        uow = _context().uow()
        with uow:
            return uow.treatments.list()


@api.route("/availability")
class Availability(MethodView):
    @api.doc(**SECURED)
    @api.arguments(AvailabilityQuery(), **QUERY)
    @api.response(200, AvailabilityOut)
    def get(self, query):
        """Free slots for a clinician and treatment on a clinic-local date."""
        ctx = _context()
        slots = service.free_slots(ctx.uow(), query["clinician_id"], query["treatment_code"],
                                   query["date"], ctx.tz)
        return {**query, "timezone": ctx.tz.key, "slots": slots}


@api.route("/appointments")
class Appointments(MethodView):
    @api.doc(parameters=[IDEMPOTENCY_HEADER], **SECURED)
    @api.arguments(AppointmentIn())
    @api.response(201, AppointmentOut)
    @api.alt_response(409, schema=ErrorResponse, description="The slot is taken")
    def post(self, fields):
        ctx = _context()
        return service.book_appointment(
            ctx.uow(), fields["patient_id"], fields["clinician_id"], fields["treatment_code"],
            fields["starts_at"], ctx.tz, _idempotency_key())

    @api.doc(**SECURED)
    @api.arguments(AppointmentsQuery(), **QUERY)
    @api.response(200, AppointmentOut(many=True))
    def get(self, query):
        """The day's appointments in clinic time, optionally for one clinician."""
        ctx = _context()
        return service.day_list(ctx.uow(), query["date"], ctx.tz, query["clinician_id"])


@api.route("/appointments/<uuid:appointment_id>")
class AppointmentById(MethodView):
    @api.doc(**SECURED)
    @api.response(200, AppointmentDetailOut)
    def get(self, appointment_id: uuid.UUID):
        return service.appointment_view(_context().uow(), appointment_id)


def _changed(appointment_id: uuid.UUID):
    return service.appointment_view(_context().uow(), appointment_id)


@api.route("/appointments/<uuid:appointment_id>/reschedule", methods=["POST"])
@api.doc(**SECURED)
@api.arguments(RescheduleIn())
@api.response(200, AppointmentOut)
def reschedule(fields, appointment_id: uuid.UUID):
    ctx = _context()
    service.reschedule_appointment(ctx.uow(), appointment_id, fields["starts_at"], ctx.tz,
                                   fields["clinician_id"])
    return _changed(appointment_id)


@api.route("/appointments/<uuid:appointment_id>/cancel", methods=["POST"])
@api.doc(**SECURED)
@api.arguments(CancelIn(), required=False)   # no body: cancelled by reception
@api.response(200, AppointmentOut)
def cancel(fields, appointment_id: uuid.UUID):
    by = fields["cancelled_by"]
    reason = fields["reason"] or ("Cancelled at the patient's request" if by == "patient"
                                  else "Cancelled by reception")
    service.cancel_appointment(_context().uow(), appointment_id, reason, by)
    return _changed(appointment_id)


@api.route("/appointments/<uuid:appointment_id>/attended", methods=["POST"])
@api.doc(**SECURED)
@api.response(200, AppointmentOut)
def attended(appointment_id: uuid.UUID):
    ctx = _context()
    service.mark_attended(ctx.uow(), appointment_id, ctx.tz)
    return _changed(appointment_id)


@api.route("/appointments/<uuid:appointment_id>/no-show", methods=["POST"])
@api.doc(**SECURED)
@api.response(200, AppointmentOut)
def no_show(appointment_id: uuid.UUID):
    service.mark_no_show(_context().uow(), appointment_id)
    return _changed(appointment_id)


# --- Webhooks: public URLs, authenticated by signature instead of a staff token -------------

webhooks = Blueprint("booking_webhooks", __name__)
SIGNATURE_TOLERANCE = 300


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    reason: str = ""


def check_phone_signature(header: str, body: bytes, secret: str, now: float) -> SignatureCheck:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, refused when older than 5 minutes so
    a captured request cannot be replayed later."""
    parts = {key.strip(): value.strip()
             for key, value in (p.split("=", 1) for p in header.split(",") if "=" in p)}
    if "t" not in parts or "v1" not in parts:
        return SignatureCheck(False, "missing signature")
    try:
        stamp = int(parts["t"])
    except ValueError:
        return SignatureCheck(False, "bad timestamp")
    if abs(now - stamp) > SIGNATURE_TOLERANCE:
        return SignatureCheck(False, "signature expired")
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    # As bytes: compare_digest refuses a str with non-ASCII characters (a 500, not a 403).
    if not hmac.compare_digest(expected.encode(), parts["v1"].encode("utf-8", "replace")):
        return SignatureCheck(False, "signature mismatch")
    return SignatureCheck(True)


@webhooks.post("/webhooks/phone")
def phone_webhook():
    ctx = _context()
    header = request.headers.get("X-Clinic-Signature", "")
    if not header:
        return json_error(401, "unauthorized", "X-Clinic-Signature required")
    check = check_phone_signature(header, request.get_data(), ctx.config.phone_webhook_secret,
                                  time.time())
    if not check.ok:
        return json_error(403, "forbidden", check.reason)
    # The signed bytes themselves, whatever Content-Type the phone system sent with them.
    try:
        body = load_json_body(request.get_data())
    except ValueError:
        return json_error(400, "bad_request", "The body is not JSON")
    if not isinstance(body, dict):
        return json_error(422, "invalid", "The body must be a JSON object")
    call = PhoneCallIn().load(body)
    call["from"] = call.pop("from_")
    new = service.record_phone_call(ctx.uow(), call)
    return jsonify({"status": "recorded" if new else "duplicate"}), 200


@webhooks.post("/webhooks/twilio/voice")
def twilio_voice_webhook():
    """Twilio Voice status callbacks: an inbound call nobody answered is a missed call."""
    ctx = _context()
    if not signed_by_twilio(ctx.config.public_base_url_booking, ctx.config.twilio_auth_token):
        return json_error(403, "forbidden", "invalid Twilio signature")
    status = request.form.get("CallStatus", "")
    if status in ("no-answer", "busy", "failed") and request.form.get("CallSid"):
        service.record_phone_call(ctx.uow(), {
            "event": "call.missed", "call_id": request.form["CallSid"],
            "from": request.form.get("From", ""), "to": request.form.get("To", ""),
            "at": datetime.now(UTC),
        })
    return ("<Response/>", 200, {"Content-Type": "text/xml"})
