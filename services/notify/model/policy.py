"""Which messages each clinic event plans: what kind, on which channel, to whom, and when.

The handlers store these as scheduled rows; nothing here sends, reads a database or knows
about Twilio. Event data follows docs/architecture.md and carries no patient names, so
neither can the messages planned from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.notify.model.delivery import missed_call_text_allowed
from services.notify.model.schedule import (
    CHECKIN_LATEST,
    QuietHours,
    as_utc,
    place_outside_quiet_hours,
    reminder_times,
)

FORM_NUDGE_BEFORE = timedelta(hours=24)


@dataclass(frozen=True)
class PlannedMessage:
    """One message to one address at one time, with what its template needs.

    `dedupe_key` is built from the subject (appointment, form, follow-up or call), kind,
    channel and due minute, so planning the same thing twice gives one stored row.
    """

    kind: str
    channel: str
    to: str
    due_at: datetime
    appointment_id: str | None
    patient_id: str | None
    context: dict[str, Any] = field(hash=False)
    dedupe_key: str


def channels_for(contact: dict) -> list[tuple[str, str]]:
    """The (channel, address) pairs the patient agreed to and that we can reach, SMS first."""
    channels = []
    if contact.get("sms") and contact.get("phone"):
        channels.append(("sms", contact["phone"]))
    if contact.get("email_ok") and contact.get("email"):
        channels.append(("email", contact["email"]))
    return channels


def _plan(
    kind: str,
    subject: str,
    channels: list[tuple[str, str]],
    due_at: datetime,
    data: dict,
    context: dict[str, Any],
) -> list[PlannedMessage]:
    return [
        PlannedMessage(
            kind=kind,
            channel=channel,
            to=to,
            due_at=due_at,
            appointment_id=data.get("appointment_id"),
            patient_id=data.get("patient_id"),
            context=context,            # one dict for the messages of one plan, read-only
            dedupe_key=f"{subject}:{kind}:{channel}:{due_at:%Y%m%dT%H%M}",
        )
        for channel, to in channels
    ]


def _appointment_context(data: dict) -> dict[str, Any]:
    return {
        "treatment_name": data["treatment"]["name"],
        "clinician_name": data["clinician_name"],
        "starts_at": as_utc(data["starts_at"]),
    }


def _has_begun(context: dict[str, Any], now: datetime) -> bool:
    """Whether the appointment has started, so telling the patient about it is too late.

    An event handled after the start (a backlog after an outage) would ask the patient to
    confirm, or tell them of a change, when it no longer matters; staff deal with it in person.
    """
    return context["starts_at"] <= as_utc(now)


def _at_once(kind: str, data: dict, now: datetime, context: dict[str, Any],
             change: str = "") -> list[PlannedMessage]:
    """`change` tells apart notices of one kind for one appointment planned in one minute."""
    channels = channels_for(data["contact"])
    subject = f"{data['appointment_id']}{change}"
    return _plan(kind, subject, channels, as_utc(now), data, context)

def _reminders(
    data: dict,
    now: datetime,
    offsets: list[timedelta],
    quiet: QuietHours | None,
    tz: ZoneInfo,
    context: dict[str, Any],
) -> list[PlannedMessage]:
    channels = channels_for(data["contact"])
    return [
        message
        for due in reminder_times(context["starts_at"], offsets, quiet, tz, now)
        for message in _plan("reminder", data["appointment_id"], channels, due, data, context)
    ]


def plan_booked(
    data: dict,
    now: datetime,
    offsets: list[timedelta],
    quiet: QuietHours | None,
    tz: ZoneInfo,
) -> list[PlannedMessage]:
    """A confirmation at once (the patient just booked, so quiet hours do not hold it back)
    and the reminders, on every channel the patient agreed to."""
    context = _appointment_context(data)
    if _has_begun(context, now):
        return []
    confirmation = _at_once("confirmation", data, now, context)
    return confirmation + _reminders(data, now, offsets, quiet, tz, context)


def plan_rescheduled(
    data: dict,
    now: datetime,
    offsets: list[timedelta],
    quiet: QuietHours | None,
    tz: ZoneInfo,
) -> list[PlannedMessage]:
    """The new time at once, and reminders for it; the caller cancels the old pending ones.

    `previous_starts_at` is None when only the clinician changed: the text then says who the
    patient will see rather than announcing a move that did not happen.
    """
    previous = data.get("previous_starts_at")
    context = {
        **_appointment_context(data),
        "previous_starts_at": as_utc(previous) if previous else None,
    }
    if _has_begun(context, now):
        return []
    # Moved 15:00 -> 14:00, then 14:00 -> 16:00 within the minute: two notices, not one
    # (keyed by the minute alone, the second was taken for the first and never sent).
    moved_from = context["previous_starts_at"]
    notice = _at_once("rescheduled", data, now, context, change=(
        f"@{moved_from:%Y%m%dT%H%M}" if moved_from else "@"
    ) + f">{context['starts_at']:%Y%m%dT%H%M}/{data.get('clinician_id') or ''}")
    return notice + _reminders(data, now, offsets, quiet, tz, context)


def plan_cancelled(data: dict, now: datetime) -> list[PlannedMessage]:
    """Tell the patient at once; the caller cancels whatever was still pending.

    `reason` is kept for the message log but the templates do not print it: reception types
    it freely and it may say something clinical. `cancelled_by` picks the wording ("as you
    asked" after a NO reply, an apology when the clinic cancelled).
    """
    context = {
        **_appointment_context(data),
        "reason": data.get("reason"),
        "cancelled_by": data.get("cancelled_by") or "reception",
    }
    if _has_begun(context, now):
        return []
    return _at_once("cancelled", data, now, context)


def plan_form_sent(
    data: dict, now: datetime, quiet: QuietHours | None, tz: ZoneInfo
) -> list[PlannedMessage]:
    """The form link at once, and one nudge 24 hours before the appointment.

    The nudge is planned now and cancelled by the caller when the form is completed, so the
    scheduler needs no query of the forms service. It is moved out of quiet hours like a
    reminder and skipped if already past (a form sent on the day needs no nudge). The link
    itself goes even after the start: reception resends it to a patient at the desk.
    """
    now = as_utc(now)
    starts_at = as_utc(data["appointment_starts_at"])
    context = {"url": data["url"], "starts_at": starts_at}
    channels = channels_for(data["contact"])
    messages = _plan("form_link", data["form_id"], channels, now, data, context)
    nudge_at = form_nudge_at(starts_at, now, quiet, tz)
    if nudge_at is not None:
        messages += _plan("form_nudge", data["form_id"], channels, nudge_at, data, context)
    return messages


def form_nudge_at(starts_at: datetime, now: datetime, quiet: QuietHours | None,
                  tz: ZoneInfo) -> datetime | None:
    """When an incomplete form is nudged: 24 hours before the start, out of quiet hours; None
    when that is already past (a form sent, or an appointment moved, on the day)."""
    nudge_at = place_outside_quiet_hours(starts_at - FORM_NUDGE_BEFORE, quiet, tz,
                                         not_after=starts_at)
    return nudge_at if as_utc(now) < nudge_at < starts_at else None


def plan_followup(
    data: dict, now: datetime, quiet: QuietHours | None, tz: ZoneInfo
) -> list[PlannedMessage]:
    """The check-in ("how is your pain, 0-10?") at its time, by SMS, else by email.

    SMS first because only a text reply gives us the score; email for patients without SMS
    consent, so they are still asked (and for a number that texted STOP by the time it is due:
    `checkin_by_email_instead`). Unlike a reminder a check-in is still worth sending a little
    late (an event handled after an outage), up to a week after it was due.
    """
    now = as_utc(now)
    due_at = as_utc(data["due_at"])
    latest = due_at + CHECKIN_LATEST
    if now >= latest:
        return []
    send_at = place_outside_quiet_hours(max(due_at, now), quiet, tz, not_after=latest)
    channels = channels_for(data["contact"])[:1]
    # The follow-up's id: the score a reply gives is booking's to record against it.
    context = {"treatment_name": data["treatment"]["name"], "followup_id": data["followup_id"]}
    return _plan("checkin", data["followup_id"], channels, send_at, data, context)


def checkin_by_email_instead(due_at: datetime, appointment_id: str | None,
                             patient_id: str | None, context: dict[str, Any], dedupe_key: str,
                             contact: dict) -> PlannedMessage | None:
    """A check-in due by SMS to a number that texted STOP, by email instead, to a patient who
    agreed to email. It is the one message that goes by one channel only: the follow-up
    after an injection must not be lost to a STOP meant for the reminders. Decided when it
    falls due, so a START before then still has it go by text, and a STOP at any moment
    before, even while the follow-up was being planned, is seen."""
    if not contact.get("email_ok") or not contact.get("email"):
        return None
    return PlannedMessage(kind="checkin", channel="email", to=contact["email"], due_at=due_at,
                          appointment_id=appointment_id, patient_id=patient_id,
                          context=context, dedupe_key=dedupe_key.replace(":sms:", ":email:"))


def plan_missed_call(
    data: dict, now: datetime, last_sent_to_patient: datetime | None
) -> list[PlannedMessage]:
    """A "sorry we missed your call" SMS at once, to a known patient, at most once an hour.

    Unknown callers get nothing: we would be texting a number we hold no consent for; nor do
    patients who declined SMS. The text goes to the patient's number as booking holds it (the
    event's `contact`), not to whatever number the call came from.
    """
    contact = data.get("contact") or {}
    if data.get("patient_id") is None or not contact.get("sms") or not contact.get("phone"):
        return []
    now = as_utc(now)
    last = as_utc(last_sent_to_patient) if last_sent_to_patient else None
    if not missed_call_text_allowed(now, last):
        return []
    return _plan("missed_call", data["call_id"], [("sms", contact["phone"])], now, data, {})
