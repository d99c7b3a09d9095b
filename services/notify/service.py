"""Notify's use cases behind its HTTP side: patients' SMS replies, Twilio's delivery reports
and the message log. Views parse and answer; the rules are here and in model/."""
from __future__ import annotations

from services.notify.model import parse_reply
from services.notify.model.delivery import texts_a_reply_answers
from services.notify.outcomes import SOURCE, apply_delivery_report, apply_early_reports
from shared.events import new_event


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
        if intent == "opt_out":
            uow.messages.hold_for_opt_out(sender)
        # What the reply answers: the appointment of the last text sent to this number. Booking
        # applies a YES or NO to that one only (docs/architecture.md, Patient replies).
        answered = uow.messages.last_about_an_appointment(sender, texts_a_reply_answers(intent))
        followup_id = None
        if answered is not None:
            appointment_id, patient_id = answered.appointment_id, answered.patient_id
            followup_id = answered.followup_id   # a reply to a check-in: the score is its
        else:
            contact = uow.contacts.with_phone(sender)
            appointment_id, patient_id = None, contact.patient_id if contact else None
        uow.outbox.add(new_event(SOURCE, "notify.reply.received", patient_id or message_sid, {
            "patient_id": patient_id, "appointment_id": appointment_id, "phone": sender,
            "intent": intent, "score": score, "message_sid": message_sid,
            "followup_id": followup_id,
        }, uow.clock))
        uow.commit()
    return intent


def record_delivery_report(uow, texts, message_sid: str, reported: str,
                           error_code: str | None) -> str | None:
    """Twilio's status callback, applied once (a retried callback finds its receipt). A
    report for a sid we have not recorded yet is kept and applied when we do."""
    with uow:
        if not uow.receipts.first_time(f"status:{message_sid}:{reported.lower()}"):
            return None
        row = uow.messages.by_provider_id(message_sid, for_update=True)
        if row is None:
            uow.early_reports.keep(message_sid, reported.lower(), error_code)
            uow.commit()
        else:
            after = apply_delivery_report(uow, texts, row, reported, error_code)
            uow.commit()
            return after
    # Kept and committed first, then looked for again: if the sender committed the sid
    # meanwhile, whichever of us takes the kept report applies it (apply_early_reports).
    with uow:
        row = uow.messages.by_provider_id(message_sid)
        if row is not None:
            apply_early_reports(uow, texts, row.id, message_sid)
        uow.commit()
    return None


def message_log(uow, appointment_id: str) -> list:
    with uow:
        return uow.messages.for_appointment(appointment_id)
