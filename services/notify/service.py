"""Notify's use cases behind its HTTP side: patients' SMS replies, Twilio's delivery reports
and the message log. Views parse and answer; the rules are here and in model/."""
from __future__ import annotations

from services.notify.db import DELIVERED, FAILED, SENT
from services.notify.model import advance_status, parse_reply
from services.notify.scheduler import message_event_data, schedule_email_fallback
from shared.events import new_event

SOURCE = "/notify"


def receive_sms(uow, sender: str, body: str, message_sid: str) -> str | None:
    """A patient's text: its intent goes to booking as `notify.reply.received`; STOP and START
    change what notify may send. A webhook Twilio retries is applied once. The text itself is
    not kept or published: it may say something clinical."""
    intent, score = parse_reply(body)
    with uow:
        if not uow.receipts.first_time(f"sms:{message_sid}"):
            return None
        if intent in ("opt_out", "opt_in"):
            uow.opt_outs.set(sender, intent == "opt_out")
        contact = uow.contacts.with_phone(sender)
        patient_id = contact.patient_id if contact else None
        uow.outbox.add(new_event(SOURCE, "notify.reply.received", patient_id or message_sid, {
            "patient_id": patient_id, "phone": sender, "intent": intent, "score": score,
            "message_sid": message_sid,
        }, uow.clock))
        uow.commit()
    return intent


def record_delivery_report(uow, texts, message_sid: str, reported: str,
                           error_code: str | None) -> str | None:
    """Twilio's status callback: move the message on, never back; a report that ends it
    publishes `notify.message.delivered` or `.failed`, and a failed SMS falls back to email.

    Reports come late, twice and out of order: `advance_status` keeps `delivered` when a late
    `sent` arrives, and the receipt makes a retried callback count once.
    """
    with uow:
        if not uow.receipts.first_time(f"status:{message_sid}:{reported.lower()}"):
            return None
        row = uow.messages.by_provider_id(message_sid, for_update=True)
        if row is None:
            uow.commit()
            return None
        before = row.provider_status or "sent"
        after = advance_status(before, reported)
        if after == before:
            uow.commit()
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
                                         row.patient_id, provider_id=message_sid,
                                         status=values["status"], error_code=error_code),
                                     uow.clock))
        if values.get("status") == FAILED:
            schedule_email_fallback(uow, row.id, texts)
            uow.wake_scheduler()
        uow.commit()
    return after


def message_log(uow, appointment_id: str) -> list:
    with uow:
        return uow.messages.for_appointment(appointment_id)
