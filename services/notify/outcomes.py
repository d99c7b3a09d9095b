"""What follows from a message's outcome, wherever it is learnt (the scheduler's own send, or
Twilio's status callback): the `notify.message.*` event, the email fallback, and a delivery
report applied once, never backwards."""
from __future__ import annotations

import json
import uuid

from services.notify.db import DELIVERED, FAILED, SENT
from services.notify.model import STATUS_RANK, advance_status
from services.notify.model.delivery import SMS_FALLBACK
from services.notify.model.policy import PlannedMessage
from shared.events import new_event

SOURCE = "/notify"


def message_event_data(message_id, kind: str, channel: str, appointment_id: str | None,
                       patient_id: str | None, **extra) -> dict:
    """What `notify.message.*` carries: ids and status, never the text or the address."""
    return {"message_id": str(message_id), "kind": kind, "channel": channel,
            "appointment_id": appointment_id, "patient_id": patient_id, **extra}


def schedule_email_fallback(uow, message_id: uuid.UUID, texts) -> bool:
    """An SMS that will not arrive goes by email, if the patient agreed to email and is not
    getting this message by email already. Reception sees it in the log (`fallback_of`)."""
    row = uow.messages.get(message_id)
    if row is None or row.channel != "sms" or row.kind == SMS_FALLBACK:
        return False
    sibling = row.dedupe_key.replace(":sms:", ":email:")
    if uow.messages.exists(sibling):
        return False
    contact = uow.contacts.get(row.patient_id) if row.patient_id else None
    if contact is None or not contact.email_ok or not contact.email:
        return False
    original = json.loads(row.context)
    # What it stands for and the appointment's start: the email keeps the SMS's quiet-hours
    # and too-late rules (`model.schedule.when_to_send`).
    context = {"sms_text": texts.sms(row.kind, original), "of": row.kind}
    if "starts_at" in original:
        context["starts_at"] = original["starts_at"]
    return uow.messages.schedule(PlannedMessage(
        kind=SMS_FALLBACK, channel="email", to=contact.email, due_at=uow.clock.now(),
        appointment_id=row.appointment_id, patient_id=row.patient_id,
        context=context, dedupe_key=f"{row.id}:sms_fallback"), fallback_of=row.id)


def apply_delivery_report(uow, texts, row, reported: str, error_code: str | None) -> str:
    """Move the message on by Twilio's report, never back: a report that ends it publishes
    `notify.message.delivered` or `.failed`, and a failed SMS falls back to email.

    Reports come late, twice and out of order: `advance_status` keeps `delivered` when a late
    `sent` arrives.
    """
    # What we recorded at send time may be no Twilio status at all ("unknown" from a reply
    # without one): take it as "sent" rather than refuse every report that follows.
    before = row.provider_status if row.provider_status in STATUS_RANK else "sent"
    after = advance_status(before, reported)
    if after == before:
        return after
    values: dict = {"provider_status": after}
    event_type = None
    if after == "delivered" and row.status == SENT:
        values.update(status=DELIVERED, delivered_at=uow.clock.now())
        event_type = "notify.message.delivered"
    elif after in ("undelivered", "failed") and row.status in (SENT, DELIVERED):
        values.update(status=FAILED, error_code=error_code, error=f"Twilio: {after}")
        event_type = "notify.message.failed"
    uow.messages.update(row.id, **values)
    if event_type:
        uow.outbox.add(new_event(SOURCE, event_type, row.appointment_id or row.patient_id
                                 or str(row.id), message_event_data(
                                     row.id, row.kind, row.channel, row.appointment_id,
                                     row.patient_id, provider_id=row.provider_id,
                                     status=values["status"], error_code=error_code),
                                 uow.clock))
    if values.get("status") == FAILED:
        schedule_email_fallback(uow, row.id, texts)
        uow.wake_scheduler()
    return after


def apply_early_reports(uow, texts, message_id: uuid.UUID, provider_id: str) -> None:
    """Reports Twilio sent before we had recorded the message's sid (a fast callback racing
    our own commit), applied now that we have."""
    for report in uow.early_reports.take(provider_id):
        # Locked, as the webhook locks it: a later report applied meanwhile must not be
        # overwritten from a stale read.
        apply_delivery_report(uow, texts, uow.messages.get(message_id, for_update=True),
                              report.status, report.error_code)
